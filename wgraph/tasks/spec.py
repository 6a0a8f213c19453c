"""The training tasks: which zoo column is the target, which one groups networks for the split,
the output size, the loss and the metrics.

* ``generalization``: predict a CNN's test accuracy (``test_acc``, in [0, 1]) from its weights.
  One output, read as a logit: the loss is binary cross-entropy with the accuracy as a soft target
  (``sigmoid(output)`` is the prediction, always in [0, 1], and the loss is well scaled near 0 and 1).
  Metrics: Kendall tau (the ranking; the field's main number), R^2 and MSE of the prediction.
  Split by training run (``run``): the checkpoints of one run never land in two parts.
* ``inr-classify``: the digit class (``label``) of a SIREN fitted to one image, from its weights;
  10 outputs, cross-entropy, accuracy. Split by image (``image``).
* ``inr-edit``: the weight delta that makes a SIREN represent an edit of its image
  (:class:`EditTask`, :mod:`wgraph.tasks.inr_edit`); mean squared error of the edited INR's image
  (lower is better). Split by image.
* ``ticket-mask``: which weights an MLP initialization's lottery ticket keeps (:class:`TicketTask`,
  :mod:`wgraph.tasks.ticket_mask`); binary cross-entropy per weight, judged by the test accuracy
  of the networks retrained with the predicted mask. Split by run.

A task also says how the targets come from the zoo (:meth:`Task.zoo_targets`) and which validation
metric is better (:meth:`Task.better`); :class:`EditTask` and :class:`TicketTask` also build their
models (``build_model``), and :meth:`Task.bind` / :meth:`Task.rows` let a task read the zoo's settings and
choose its input rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import TaskError
from .metrics import classification_metrics, regression_metrics


def reduce(per: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-network losses ``(B,)`` reduced as ``F.*_loss(reduction=...)`` does: sum, mean or none."""
    return {"sum": per.sum, "mean": per.mean}.get(reduction, lambda: per)()


@dataclass(frozen=True)
class Task:
    name: str
    target: str  # zoo table column to predict
    group: str  # zoo table column whose values must not be split across train / val / test
    out_dim: int
    primary: str  # the metric that selects the best validation epoch
    higher_is_better: bool = True  # of the primary metric

    @property
    def classification(self) -> bool:
        return self.out_dim > 1

    def better(self, a: float, b: float) -> bool:
        """Whether primary-metric value ``a`` is better than ``b``."""
        return a > b if self.higher_is_better else a < b

    def configure(self, config) -> Task:
        """This task with the task options of a :class:`~wgraph.tasks.TrainConfig` applied."""
        return self

    def bind(self, data) -> Task:
        """This task for the networks of ``data`` (a :class:`~wgraph.tasks.data.TaskData`)."""
        return self

    def rows(self, table) -> np.ndarray:
        """Which networks of a zoo's ``table`` are inputs (boolean; default: all)."""
        return np.ones(len(table[self.group]), dtype=bool)

    def zoo_targets(self, zoo, rows: np.ndarray, graphs) -> torch.Tensor:
        """The targets of networks ``rows`` of ``zoo`` (their graphs: ``graphs``)."""
        return self.targets(np.asarray(zoo.table[self.target])[rows])

    def targets(self, column) -> torch.Tensor:
        t = torch.as_tensor(column)
        return t.long() if self.classification else t.double()

    def loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.classification:
            return F.cross_entropy(out, y, reduction=reduction)
        return F.binary_cross_entropy_with_logits(out[:, 0], y.to(out.dtype), reduction=reduction)

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        """What the metrics read: class logits, or the predicted accuracy ``sigmoid(out)``."""
        return out if self.classification else torch.sigmoid(out[:, 0])

    def metrics(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Loss and task metrics of outputs ``out`` for targets ``y`` (as :meth:`targets` makes them)."""
        out = out.detach()
        loss = float(self.loss(out, y.to(out.device)).item())
        pred, truth = self.predict(out).double().cpu().numpy(), y.cpu().numpy()
        m = classification_metrics(pred, truth) if self.classification else regression_metrics(pred, truth)
        return {"loss": loss, **m}


@dataclass(frozen=True)
class EditTask(Task):
    """``inr-edit`` (:mod:`wgraph.tasks.inr_edit`): the model outputs the edited INRs' images
    ``(B, P)``; targets ``(N, 2, P)`` hold the edited source image and the input INR's own image.
    ``edit``: a name in :data:`wgraph.tasks.inr_edit.EDITS`."""

    edit: str = "dilate"

    def with_edit(self, edit: str) -> EditTask:
        from .inr_edit import EDITS

        if edit not in EDITS:
            raise TaskError(f"unknown edit {edit!r}; known edits: {sorted(EDITS)}")
        return replace(self, edit=edit)

    def configure(self, config) -> EditTask:
        return self.with_edit(config.edit)

    def zoo_targets(self, zoo, rows: np.ndarray, graphs) -> torch.Tensor:
        """``(N, 2, P)``: ``edit`` of the source images of networks ``rows`` and their INRs' images."""
        from ..zoo.data import images
        from .inr_edit import INRRenderer, edit_images, graph_params

        if getattr(zoo, "kind", None) != "inr":
            raise TaskError(
                f"task 'inr-edit' needs an INR zoo (wgraph zoo inr), got a zoo of kind {getattr(zoo, 'kind', '?')!r}"
            )
        pixels, _ = images(zoo.config.get("dataset", "digits"))
        source = pixels[torch.as_tensor(np.asarray(zoo.table["image"])[rows], dtype=torch.long)]
        with torch.no_grad():
            own = INRRenderer(zoo.arch)(graph_params(graphs.to(torch.float64)))
        return torch.stack([edit_images(source, self.edit).flatten(1).double(), own], 1).float()

    def build_model(self, preset: str, layout, arch: dict | None = None):
        """The :class:`~wgraph.tasks.inr_edit.EditModel` of ``preset`` (the trainer calls a task's
        ``build_model`` where it has one, :func:`wgraph.tasks.models.build_model` otherwise)."""
        from .inr_edit import build_edit_model

        if arch is None:
            raise TaskError("inr-edit needs the zoo's architecture (TaskData.arch) to run the INRs")
        return build_edit_model(preset, layout, arch)

    def loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        per = ((out - y[:, 0].to(out.dtype)) ** 2).mean(1)
        return reduce(per, reduction)

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def metrics(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """``mse`` of the edited images, ``psnr`` (mean over networks of ``-10 log10 mse``) and
        ``identity_mse``, the error of the unedited INRs (the trivial reference)."""
        out, y = out.detach().double(), y.to(out.device).double()
        mse = ((out - y[:, 0]) ** 2).mean(1)
        identity = ((y[:, 1] - y[:, 0]) ** 2).mean(1)
        psnr = (-10 * torch.log10(mse.clamp_min(1e-12))).mean()
        return {"loss": float(mse.mean()), "mse": float(mse.mean()), "psnr": float(psnr),
                "identity_mse": float(identity.mean())}


@dataclass(frozen=True)
class TicketTask(Task):
    """``ticket-mask`` (:mod:`wgraph.tasks.ticket_mask`): the inputs are a ticket zoo's
    initializations (``role == "init"``), the model outputs a score per parameter ``(B, P)``;
    targets ``(N, 2, P)`` hold the ticket's mask and the initialization, flattened in the layout's
    parameter order. :meth:`bind` takes the zoo's ``keep`` and training recipe, which the metrics
    retrain with."""

    params: tuple = ()  # ((name, shape), ...) in the layout's order
    keep: float = 0.0
    recipe: dict | None = None

    def rows(self, table) -> np.ndarray:
        if "role" not in table:
            raise TaskError("task 'ticket-mask' needs a ticket zoo (wgraph zoo ticket): this zoo has no 'role' column")
        return np.asarray(table["role"]) == "init"

    def bind(self, data) -> TicketTask:
        from ..zoo.ticket import TicketZooConfig

        config = data.zoo_config or {}
        missing = [k for k in ("keep", *TicketZooConfig.recipe_keys) if k not in config]
        if missing:
            raise TaskError(f"task 'ticket-mask' needs a ticket zoo's settings; its manifest config lacks {missing}")
        recipe = {k: config[k] for k in TicketZooConfig.recipe_keys}
        params = tuple((p.name, tuple(p.shape)) for p in data.graphs.layout.params)
        return replace(self, params=params, keep=float(config["keep"]), recipe=recipe)

    def zoo_targets(self, zoo, rows: np.ndarray, graphs) -> torch.Tensor:
        from ..zoo.ticket import ticket_masks
        from .inr_edit import graph_params

        _, masks = ticket_masks(zoo, rows)
        init = graph_params(graphs)
        flat = lambda d: torch.cat([d[p.name].flatten(1).double() for p in graphs.layout.params], 1)  # noqa: E731
        return torch.stack([flat(masks), flat(init)], 1)

    def build_model(self, preset: str, layout, arch: dict | None = None):
        from .ticket_mask import build_score_model

        return build_score_model(preset, layout)

    def loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        from .ticket_mask import mask_loss

        per = mask_loss(out, y[:, 0], self.params)
        return reduce(per, reduction)

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def metrics(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        from .ticket_mask import ticket_metrics

        if self.recipe is None:
            raise TaskError("ticket-mask metrics need the zoo's recipe: call task.bind(task_data) first")
        return ticket_metrics(out, y, self.params, self.keep, self.recipe)


TASKS = {
    "generalization": Task("generalization", target="test_acc", group="run", out_dim=1, primary="kendall_tau"),
    "inr-classify": Task("inr-classify", target="label", group="image", out_dim=10, primary="accuracy"),
    "ticket-mask": TicketTask("ticket-mask", target="ticket_acc", group="run", out_dim=0, primary="accuracy"),
    "inr-edit": EditTask("inr-edit", target="image", group="image", out_dim=0, primary="mse", higher_is_better=False),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]
