"""The settings of a training run: :class:`TrainConfig`, from which ``wgraph train``'s options are
derived (:func:`wgraph.config.add_arguments`), and the trainer's own error."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config, option
from ..errors import ConfigError
from .inr_edit import EDITS
from .spec import TASKS

#: Epochs of a run that gives neither ``epochs`` nor ``steps``.
DEFAULT_EPOCHS = 10
#: Settings that may differ between a run and its resumption (everything else must match).
RESUMABLE = ("zoo", "out", "epochs", "steps", "device", "resume", "progress", "checkpoint_every", "eval_batch_size")


class TrainError(ConfigError):
    """A training configuration that cannot run (a bad setting, an output directory holding another
    run, a batch that the processes cannot share)."""


@dataclass
class TrainConfig(Config):
    """Every setting of :func:`~wgraph.tasks.train`; ``wgraph train --name-with-dashes`` sets each."""

    error = TrainError

    task: str = option(help="what to predict from the weights", choices=TASKS)
    model: str = option(help="preset name in models/ (gnn, gnn-pna, np, hnp, statnn, ...) or a .toml path")
    zoo: str | None = option(None, "zoo directory (written by `wgraph zoo cnn` / `inr` / `ticket` / `transformer`)")
    out: str = option("runs/train", "output directory: results.json, checkpoint.pt, model.safetensors")
    seed: int = option(0, "seed of initialization and data order")
    split_seed: int = option(0, "seed of the train/val/test split by group")
    epochs: int | None = option(
        None, f"epochs (default {DEFAULT_EPOCHS} when --steps is not given either)", minimum=1
    )
    steps: int | None = option(None, "optimizer steps instead of epochs", minimum=1)
    batch_size: int = option(32, "networks per batch, over all processes", minimum=1)
    lr: float = option(1e-3, "AdamW learning rate", above=0)
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup: float = option(
        0.0, "fraction of the steps (rounded) over which the learning rate rises linearly to --lr", minimum=0, below=1
    )
    schedule: str = option(
        "constant", "the learning rate after the warm-up: constant, or a cosine decay towards 0 at the last step",
        choices=("constant", "cosine"),
    )
    clip_grad: float | None = option(
        None, "clip the global gradient norm to this value (default: no clipping)", above=0
    )
    val_fraction: float = option(0.1, "fraction of the groups held out for validation")
    test_fraction: float = option(0.1, "fraction of the groups held out for the test")
    select: str = option(
        "best-val", "test the epoch with the best validation metric (best-val) or the last",
        choices=("best-val", "last"),
    )
    checkpoint_every: int = option(100, "steps between checkpoints (also every epoch end)", minimum=1)
    eval_batch_size: int = option(256, "networks per evaluation batch", minimum=1)
    device: str = option("cpu", "cpu or cuda")
    resume: bool = option(False, "continue from OUT/checkpoint.pt if it exists")
    progress: bool = option(True, "the progress bar")
    probes: int = option(
        0, "add each neuron's values on this many fixed probe inputs as node features (wgraph.zoo.probes)", minimum=0
    )
    edit: str = option("dilate", "inr-edit: the edit of the images to learn (see wgraph.tasks.inr_edit)", choices=EDITS)
    strict: bool = option(
        False, "refuse a zoo with networks whose weights are NaN or infinite (default: skip them, with a warning)"
    )
