"""Gather B checkpoints of one architecture into a :class:`~wgraph.graph.WeightGraph`.

Driven by the cached Layout's parameter map: one ``torch.stack`` per state-dict entry (or none, if
the checkpoints come already stacked), then slice assignment of per-neuron vectors into the node
feature tensor. No Python loop over networks touches tensor data; the per-checkpoint loop only
compares key sets, which is what lets an error name the offending checkpoint. Entries are stacked
on parallel threads: the gather is bound by memory bandwidth, not by one core.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from ..errors import IncompatibleBatchError, StateDictError
from ..graph import WeightGraph
from ..layout import Layout


def _key_error(layout: Layout, keys, where: str) -> StateDictError:
    expected = [p.name for p in layout.params]
    missing = [k for k in expected if k not in keys]
    extra = [k for k in keys if k not in layout.param_index]
    parts = []
    if missing:
        shapes = [layout.params[layout.param_index[k]].shape for k in missing]
        parts.append("missing " + ", ".join(f"{k!r} (expected shape {shape})" for k, shape in zip(missing, shapes)))
    if extra:
        parts.append("unexpected " + ", ".join(repr(k) for k in extra))
    return StateDictError(f"{where}: {'; '.join(parts)}")


def _stack_checkpoints(layout: Layout, state_dicts: Sequence) -> dict[str, torch.Tensor]:
    sds = [sd.state_dict() if isinstance(sd, nn.Module) else sd for sd in state_dicts]
    if not sds:
        raise StateDictError("no checkpoints given: expected at least one state dict")
    expected = layout.param_index.keys()
    for i, sd in enumerate(sds):
        if not isinstance(sd, Mapping):
            raise StateDictError(
                f"checkpoint {i}: expected a state dict (mapping of name -> tensor), got {type(sd).__name__}"
            )
        if sd.keys() != expected:
            raise _key_error(layout, list(sd.keys()), f"checkpoint {i}")
    # The gather is memory-bound: stacking different entries on parallel threads (torch releases
    # the GIL) uses the bandwidth of every core. Largest entries first, so the threads stay busy.
    slots = sorted(layout.params, key=lambda p: -p.numel)
    workers = max(1, min(torch.get_num_threads(), len(slots)))
    with ThreadPoolExecutor(workers) as ex:
        entries = ex.map(lambda p: _stack_entry(p, [sd[p.name] for sd in sds]), slots)
        stacked = dict(zip((p.name for p in slots), entries))
    return {p.name: stacked[p.name] for p in layout.params}


def _stack_entry(slot, tensors: list) -> torch.Tensor:
    """``torch.stack`` of one entry over all checkpoints; on failure, name the first offender."""
    name = slot.name
    try:
        stacked = torch.stack(tensors)
    except (RuntimeError, TypeError):
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor):
                raise StateDictError(f"checkpoint {i}: {name!r} is a {type(t).__name__}, not a tensor") from None
            if tuple(t.shape) != slot.shape:
                raise StateDictError(
                    f"checkpoint {i}: {name!r} has shape {tuple(t.shape)}, expected {slot.shape}"
                ) from None
        devices = sorted({str(t.device) for t in tensors})
        raise IncompatibleBatchError(f"{name!r}: checkpoints are on different devices {devices}") from None
    if tuple(stacked.shape[1:]) != slot.shape:
        raise StateDictError(f"checkpoint 0: {name!r} has shape {tuple(stacked.shape[1:])}, expected {slot.shape}")
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        first = tensors[0].dtype
        i = next(i for i, t in enumerate(tensors) if t.dtype != first)
        raise IncompatibleBatchError(
            f"{name!r}: checkpoint 0 is {first} but checkpoint {i} is {tensors[i].dtype}; "
            "cast all checkpoints to one dtype first"
        )
    return stacked


def _check_stacked(layout: Layout, stacked: Mapping) -> dict[str, torch.Tensor]:
    if stacked.keys() != layout.param_index.keys():
        raise _key_error(layout, list(stacked.keys()), "stacked state dict")
    B = None
    for slot in layout.params:
        t = stacked[slot.name]
        if not isinstance(t, torch.Tensor) or t.dim() == 0 or tuple(t.shape[1:]) != slot.shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise StateDictError(f"stacked state dict: {slot.name!r} has shape {got}, expected (B, *{slot.shape})")
        if B is not None and t.shape[0] != B:
            raise StateDictError(f"stacked state dict: {slot.name!r} holds {t.shape[0]} networks, others {B}")
        B = t.shape[0]
    return dict(stacked)


def gather(layout: Layout, state_dicts) -> WeightGraph:
    """Build the WeightGraph of ``state_dicts`` for ``layout``.

    ``state_dicts`` is a sequence of state dicts (or modules), or one mapping of stacked tensors
    ``{name: (B, *shape)}`` (as a zoo stores them; these are used without a copy).
    """
    if isinstance(state_dicts, Mapping):
        stacked = _check_stacked(layout, state_dicts)
    else:
        stacked = _stack_checkpoints(layout, state_dicts)
    extra = {p.name for p in layout.extra_params} | {p.name for p in layout.params if p.where == "alias"}
    kinds = {(t.dtype, t.device) for k, t in stacked.items() if k not in extra}
    if len(kinds) > 1:
        detail = ", ".join(f"{k!r}: {t.dtype} on {t.device}" for k, t in stacked.items() if k not in extra)
        raise IncompatibleBatchError(
            f"parameters mix dtypes or devices ({detail}); cast the checkpoints to one dtype and device"
        )
    dtype, device = next(iter(kinds))
    if not dtype.is_floating_point:
        raise IncompatibleBatchError(f"parameters are {dtype}; a weight graph needs floating-point weights")
    B = next(iter(stacked.values())).shape[0]
    nodes = torch.zeros(B, layout.num_nodes, len(layout.node_features), dtype=dtype, device=device)
    edges: list[torch.Tensor | None] = [None] * len(layout.blocks)
    extras = {}
    for slot in layout.params:
        t = stacked[slot.name]
        if slot.where == "alias":
            if not torch.equal(t, stacked[slot.alias_of]):
                raise StateDictError(
                    f"{slot.name!r} is tied to {slot.alias_of!r} in this architecture, but differs from it"
                )
            continue
        if slot.where == "extra":
            if not slot.accepts(t.dtype) or t.device != device:
                raise IncompatibleBatchError(
                    f"{slot.name!r} is {t.dtype} on {t.device}, expected {slot.dtype} on {device}"
                )
            extras[slot.name] = t
        elif slot.where == "edges":
            if slot.transposed:
                blk = layout.block_shape(slot.index)
                t = t.reshape(B, blk[1], blk[0], *blk[2:]).transpose(1, 2)
            elif len(slot.targets) == 1:  # a parameter stored in another shape, e.g. (1, C, H, W)
                t = t.reshape(B, *layout.block_shape(slot.index))
            sizes = [layout.block_shape(i)[0] for i in slot.targets]
            for i, piece in zip(slot.targets, t.split(sizes, dim=1)):
                edges[i] = piece if len(sizes) == 1 else piece.contiguous()
        else:
            layers = [layout.layers[i] for i in slot.targets]
            pieces = t.reshape(B, -1).split([l.size for l in layers], dim=1)
            for layer, piece in zip(layers, pieces):
                nodes[:, layer.start : layer.stop, slot.feature] = piece
    return WeightGraph(layout, nodes, edges, extras)
