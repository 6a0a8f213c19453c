"""A zoo as task data (graphs, targets, groups) and the split into train / val / test by group.

The split is by *group*: every network of one training run (generalization) or one image (INR
classification) lands in the same part, so no part sees another part's runs (no leakage between the
checkpoints of one run). Groups are shuffled with ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..graph import WeightGraph
from .spec import Task, TaskError

log = logging.getLogger("wgraph.train")


@dataclass
class TaskData:
    """``graphs``: a WeightGraph of N networks; ``targets``: ``(N,)``; ``groups``: ``(N,)`` split keys;
    ``dropped``: networks of the zoo left out because their target or a weight is not finite;
    ``arch``: the zoo's architecture (``Zoo.arch``; tasks that run the networks need it);
    ``zoo_config``: the settings the zoo was generated with (``Zoo.config``)."""

    graphs: WeightGraph
    targets: torch.Tensor
    groups: np.ndarray
    dropped: int = 0
    arch: dict | None = None
    zoo_config: dict | None = None

    def __post_init__(self):
        n = self.graphs.batch_size
        if len(self.targets) != n or len(self.groups) != n:
            raise TaskError(f"{n} networks but {len(self.targets)} targets and {len(self.groups)} groups")


def task_data(zoo, task: Task, where: str = "the zoo", strict: bool = False, probes: int = 0) -> TaskData:
    """The graphs, targets and groups of ``zoo`` (anything with ``table`` and ``graphs()``, e.g.
    :class:`wgraph.zoo.Zoo`) for ``task``; a missing column raises :class:`TaskError` naming it.

    Networks whose target is not finite are left out. So are networks with a NaN or infinite
    weight, which no model can learn from (and whose outputs would make the loss or a metric NaN):
    each is named, by its index in ``where`` and the parameters that hold the values, in a warning
    (``logging``, logger ``wgraph.train``); with ``strict=True`` they are an error instead.
    ``probes``: add probe features (``zoo.graphs(probes=...)``, :mod:`wgraph.zoo.probes`)."""
    table = zoo.table
    for col in (task.target, task.group):
        if col not in table:
            kind = getattr(zoo, "kind", "?")
            raise TaskError(
                f"task {task.name!r} needs the column {col!r}, but {where} (kind {kind!r}) has columns "
                f"{sorted(table)}; generalization needs a CNN zoo (wgraph zoo cnn), "
                "inr-classify and inr-edit an INR zoo (wgraph zoo inr), ticket-mask a ticket zoo (wgraph zoo ticket)"
            )
    column = np.asarray(table[task.target])
    inputs = task.rows(table)
    keep = np.isfinite(column.astype(np.float64)) & inputs
    if not keep.any():
        raise TaskError(f"column {task.target!r} of {where} has no finite value")
    rows = () if keep.all() else (np.flatnonzero(keep),)
    graphs = zoo.graphs(*rows, probes=probes) if probes else zoo.graphs(*rows)
    kept = np.flatnonzero(keep)
    bad: dict[int, list[str]] = {}
    for name, rows in graphs.has_nonfinite.items():
        for r in rows:
            bad.setdefault(int(kept[r]), []).append(name)
    if bad:
        listed = "; ".join(f"network {i}: {', '.join(names)}" for i, names in sorted(bad.items())[:20])
        more = f" (and {len(bad) - 20} more)" if len(bad) > 20 else ""
        msg = f"{where}: {len(bad)} network(s) with NaN or infinite weights: {listed}{more}"
        if strict:
            raise TaskError(f"{msg}; remove them, or train without --strict to skip them")
        log.warning("%s; skipped", msg)
        rows = np.flatnonzero(~np.isin(kept, list(bad)))
        graphs, kept = graphs[torch.as_tensor(rows)], kept[rows]
        keep = np.isin(np.arange(len(column)), kept)
    return TaskData(graphs, task.zoo_targets(zoo, kept, graphs), np.asarray(table[task.group])[keep],
                    int((inputs & ~keep).sum()), getattr(zoo, "arch", None), getattr(zoo, "config", None))


def split_groups(groups, seed: int = 0, val: float = 0.1, test: float = 0.1) -> dict[str, np.ndarray]:
    """Indices ``{"train", "val", "test"}`` (sorted) splitting the *groups* ``val`` / ``test`` /
    rest, at least one group in each part."""
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    n = len(uniq)
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise TaskError(f"val and test fractions must be in (0, 1) with a sum below 1, got {val} and {test}")
    if n < 3:
        raise TaskError(f"cannot split {n} group(s) into train, val and test: need at least 3")
    n_val, n_test = max(1, round(val * n)), max(1, round(test * n))
    if n_val + n_test >= n:
        raise TaskError(f"{n} groups are too few for val={val} and test={test} with a non-empty training part")
    order = np.random.default_rng(seed).permutation(n)
    cut = n_val + n_test
    parts = {"val": uniq[order[:n_val]], "test": uniq[order[n_val:cut]], "train": uniq[order[cut:]]}
    return {name: np.flatnonzero(np.isin(groups, keys)) for name, keys in parts.items()}
