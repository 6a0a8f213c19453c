"""The architectures a model is built for: the one reading of what every model and layer of
:mod:`wgraph.nn` accepts in their place (a Layout, a WeightGraph, or a list or tuple of them)."""

from __future__ import annotations

from ..errors import ConfigError
from ..graph import WeightGraph
from ..layout import Layout


def model_layouts(arg, *, error: type[Exception] = ConfigError) -> list[Layout]:
    """The distinct layouts of ``arg`` (a Layout, a WeightGraph, or a list or tuple of them), in
    order of first appearance; anything else, or nothing, raises ``error``."""
    items = arg if isinstance(arg, (list, tuple)) else [arg]
    out: list[Layout] = []
    for x in items:
        lay = x.layout if isinstance(x, WeightGraph) else x
        if not isinstance(lay, Layout):
            raise error(f"expected a Layout or WeightGraph (or a list of them), got {type(x).__name__}")
        if lay not in out:
            out.append(lay)
    if not out:
        raise error("a model needs at least one layout")
    return out


def model_layout(arg, who: str, *, error: type[Exception] = ConfigError) -> Layout:
    """The layout of ``arg`` (a Layout, a WeightGraph, or a list of one) for ``who``, which is built
    for one architecture."""
    if isinstance(arg, (list, tuple)) and len(arg) != 1:
        raise error(f"{who} is built for one architecture: pass one Layout or WeightGraph, got {len(arg)} of them")
    return model_layouts(arg, error=error)[0]
