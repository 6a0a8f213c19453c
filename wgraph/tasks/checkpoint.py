"""Training checkpoints: a dict of tensors, numbers, strings, lists and dicts written with
``torch.save`` to a temporary file and moved into place with ``os.replace`` (a crash never leaves a
half-written checkpoint), read back with ``torch.load(weights_only=True)`` (nothing is unpickled
beyond those types)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import WgraphError


class CheckpointError(WgraphError):
    """A checkpoint that cannot be read, or that belongs to another configuration."""


def save_checkpoint(path: str | Path, state: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupted, or holding objects weights_only refuses
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
