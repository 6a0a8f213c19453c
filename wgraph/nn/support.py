"""Whether a model reads a layout: the answer of a model class's ``supports(layout)``.

Each model type answers for itself (:meth:`GraphNFN.supports <wgraph.nn.GraphNFN.supports>`,
:meth:`ParamSharingNFN.supports <wgraph.nn.ParamSharingNFN.supports>`,
:meth:`StatNN.supports <wgraph.nn.StatNN.supports>`); callers such as the profiler ask the model
instead of keeping that knowledge themselves.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Support:
    """``ok``: the model reads the layout; otherwise ``reason`` says why not (one sentence, no final
    period). Truthy exactly when ``ok``, so ``if Model.supports(layout):`` reads as it should."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok
