"""The training tasks: which zoo column is the target, which one groups networks for the split,
the output size, the loss and the metrics.

* ``generalization``: predict a CNN's test accuracy (``test_acc``, in [0, 1]) from its weights.
  One output, read as a logit: the loss is binary cross-entropy with the accuracy as a soft target
  (``sigmoid(output)`` is the prediction, always in [0, 1], and the loss is well scaled near 0 and 1).
  Metrics: Kendall tau (the ranking; the field's main number), R^2 and MSE of the prediction.
  Split by training run (``run``): the checkpoints of one run never land in two parts.
* ``inr-classify``: the digit class (``label``) of a SIREN fitted to one image, from its weights;
  10 outputs, cross-entropy, accuracy. Split by image (``image``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import WgraphError
from .metrics import classification_metrics, regression_metrics


class TaskError(WgraphError):
    """An unknown task, a zoo without the task's columns, or a split that cannot be made."""


@dataclass(frozen=True)
class Task:
    name: str
    target: str  # zoo table column to predict
    group: str  # zoo table column whose values must not be split across train / val / test
    out_dim: int
    primary: str  # the metric that selects the best validation epoch (higher is better)

    @property
    def classification(self) -> bool:
        return self.out_dim > 1

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


TASKS = {
    "generalization": Task("generalization", target="test_acc", group="run", out_dim=1, primary="kendall_tau"),
    "inr-classify": Task("inr-classify", target="label", group="image", out_dim=10, primary="accuracy"),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]
