"""What one measurement is: :class:`Config`, and the profiler's own error."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import WgraphError

SCOPES = ("layer", "model")


class ProfileError(WgraphError):
    """A bad profiling request (unknown method or scope, an architecture that does not resolve)."""


def _option(default, help: str):
    """A field that is also a ``wgraph profile`` option: its default and help text are written here once."""
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    """One measurement. ``arch`` is a spec string (see :func:`~wgraph.profile.resolve_arch`)."""

    arch: str
    batch: int
    width: int
    method: str
    scope: str = _option("layer", "one layer, or a training step of a whole model")
    layers: int = _option(4, "layers of a whole model (--scope model)")
    device: str = _option("cpu", "the device to measure on")
    threads: int = _option(1, "torch CPU threads per measurement")
    reps: int = 3
    input_shape: tuple[int, ...] | None = None
    aggr: tuple[str, ...] = ("mean",)  # graph NFN methods: the aggregators of its message passing
    extra: dict = field(default_factory=dict)  # free-form labels carried into the record
