"""``wgraph train``: train a preset on a zoo for a task (see :mod:`wgraph.tasks.trainer`).

The options are the fields of :class:`~wgraph.tasks.config.TrainConfig` (their defaults and help
texts are written there once). Heavy imports (the trainer, torch.distributed, the zoo loader)
happen inside :func:`_train`.
"""

from __future__ import annotations

from ..config import add_arguments, from_args
from .config import TrainConfig


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train an NFN preset on a zoo (generalization prediction, INR classification or editing, ticket masks)",
        description="Train a model preset on a zoo. Resume an interrupted run by repeating the command with --resume. "
        "Data-parallel: torchrun --nproc_per_node=N -m wgraph train ...",
    )
    add_arguments(p, TrainConfig, ("task", "model", "zoo", "out", "seed", "split_seed"), required=("zoo",))
    add_arguments(p.add_mutually_exclusive_group(), TrainConfig, ("epochs", "steps"))
    add_arguments(
        p, TrainConfig, exclude=("task", "model", "zoo", "out", "seed", "split_seed", "epochs", "steps", "progress")
    )
    # One spelling of "no progress bar" for every command (--no-progress, the field's own, still works).
    p.add_argument("-q", "--quiet", "--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(fn=_train)


def _train(args) -> int:
    import os

    from .trainer import train

    config = from_args(TrainConfig, args)
    results = train(config)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        test = results["metrics"]["test"]
        shown = ", ".join(f"{k} {v:.4f}" for k, v in test.items())
        took = f"{results['steps']} steps, {results['timings']['total_s']:.1f} s"
        print(f"{config.task} {config.model}: test {shown} ({took}); wrote {config.out}/results.json")
    return 0
