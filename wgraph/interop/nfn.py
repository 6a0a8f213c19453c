"""Interoperation with ``nfn`` (Zhou et al., "Permutation Equivariant Neural Functionals").

* :func:`to_wsfeat` / :func:`from_wsfeat`: a WeightGraph or :class:`~wgraph.nn.weight_space.WeightSpace`
  to and from ``nfn.common.WeightSpaceFeatures`` (the same tensors: ``(B, C, out, in, *kernel)``
  weights and ``(B, C, out)`` biases).
* :func:`network_spec`: ``nfn``'s ``NetworkSpec`` for a layout.
* :func:`load_nfn` / :func:`from_nfn`: copy a trained ``nfn`` layer's parameters into the wgraph
  layer with the same math (``NPLinear``, ``HNPLinear``, ``NPPool``, ``HNPPool``,
  ``LearnedPosEmbedding``, ``IOSinusoidalEncoding``).

``nfn`` is imported only when one of these is called.
"""

from __future__ import annotations

import torch

from ..errors import WgraphError
from ..graph import Layout, WeightGraph
from ..nn import np_layers as npl
from ..nn.weight_space import ChainSpec, WeightSpace, as_weight_space


class InteropError(WgraphError):
    """A peer object that wgraph cannot translate (unknown layer type, mismatched shapes)."""


def _nfn():
    try:
        import nfn  # noqa: F401
        from nfn import common, layers
    except ImportError as e:  # pragma: no cover - nfn is a test dependency
        raise InteropError("wgraph.interop.nfn needs the `nfn` package (pip install nfn)") from e
    return common, layers


def to_wsfeat(x):
    """``nfn.common.WeightSpaceFeatures`` holding the same tensors as ``x`` (WeightGraph or WeightSpace).

    ``nfn`` handles 2-d convolution kernels only; a WeightGraph of a ``Conv1d``/``Conv3d`` network
    still converts, but ``nfn``'s layers will not accept it.
    """
    common, _ = _nfn()
    ws = as_weight_space(x)
    return common.WeightSpaceFeatures(list(ws.weights), list(ws.biases))


def from_wsfeat(wsfeat, layout: Layout | None = None):
    """A :class:`WeightSpace` from ``WeightSpaceFeatures``; with ``layout`` and one channel, a WeightGraph."""
    ws = WeightSpace(list(wsfeat.weights), list(wsfeat.biases), ChainSpec.from_layout(layout) if layout else None)
    if layout is None:
        return ws
    if ws.channels != 1:
        raise InteropError(f"a WeightGraph holds one channel; these features have {ws.channels} (pass layout=None)")
    return ws.to_graph(layout)


def network_spec(layout_or_graph):
    """``nfn.common.NetworkSpec`` of a chain layout (hidden sizes marked -1, as ``nfn`` does)."""
    common, _ = _nfn()
    s = ChainSpec.of(layout_or_graph)
    L = s.num_layers
    ws, bs = [], []
    for i in range(L):
        shape = [s.sizes[i + 1] if i == L - 1 else -1, s.sizes[i] if i == 0 else -1, *s.kernels[i]]
        ws.append(common.ArraySpec(tuple(shape)))
        bs.append(common.ArraySpec((s.sizes[i + 1],) if i == L - 1 else (-1,)))
    return common.NetworkSpec(ws, bs)


# ------------------------------------------------------------------ parameters
def _mat(m: torch.nn.Module) -> torch.Tensor:
    """Weight of a 1x1 conv or a Linear as a matrix ``(out, in)``."""
    w = m.weight.detach()
    return w.reshape(w.shape[0], w.shape[1])


def _set(terms: npl._Terms, mats: dict[str, torch.Tensor], biases: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for k, v in mats.items():
            if tuple(terms[k].shape) != tuple(v.shape):
                raise InteropError(f"parameter {k!r}: nfn has shape {tuple(v.shape)}, wgraph {tuple(terms[k].shape)}")
            terms[k].copy_(v)
        terms.const.copy_(sum(b.detach() for b in biases))


def _split(m: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return m[:, :n], m[:, n:]


def load_nfn(layer: torch.nn.Module, nfn_layer: torch.nn.Module) -> torch.nn.Module:
    """Copy ``nfn_layer``'s parameters into the wgraph ``layer`` (in place; returns ``layer``).

    Both must be built for the same network shape and channel counts; the outputs then agree to
    floating-point rounding (tests check 1e-5).
    """
    _, L_ = _nfn()
    kind = type(nfn_layer).__name__
    if isinstance(nfn_layer, L_.NPLinear) and isinstance(layer, npl.NPLinear):
        _load_np(layer, nfn_layer)
    elif isinstance(nfn_layer, L_.HNPLinear) and isinstance(layer, npl.HNPLinear):
        _load_hnp(layer, nfn_layer)
    elif isinstance(nfn_layer, L_.LearnedPosEmbedding) and isinstance(layer, npl.LearnedPosEmbedding):
        with torch.no_grad():
            layer.layer_w.copy_(nfn_layer.weight_emb.weight)
            layer.layer_b.copy_(nfn_layer.bias_emb.weight)
            layer.inp.copy_(nfn_layer.inp_emb.weight)
            layer.out.copy_(nfn_layer.out_emb.weight)
    elif isinstance(nfn_layer, L_.IOSinusoidalEncoding) and isinstance(layer, npl.IOSinusoidalEncoding):
        for name in ("max_freq", "num_bands", "enc_layers"):
            setattr(layer, name, getattr(nfn_layer, name))
    elif isinstance(nfn_layer, (L_.NPPool, L_.HNPPool)) and type(layer).__name__ == kind:
        pass  # no parameters
    else:
        raise InteropError(f"cannot load nfn's {kind} into wgraph's {type(layer).__name__}")
    return layer


def from_nfn(nfn_layer: torch.nn.Module, layout: Layout | WeightGraph) -> torch.nn.Module:
    """The wgraph layer equivalent to ``nfn_layer`` for ``layout``, with its parameters loaded."""
    _, L_ = _nfn()
    if isinstance(nfn_layer, L_.NPLinear):
        layer = npl.NPLinear(layout, nfn_layer.c_in, nfn_layer.c_out, io_embed=nfn_layer.io_embed)
    elif isinstance(nfn_layer, L_.HNPLinear):
        layer = npl.HNPLinear(layout, nfn_layer.c_in, nfn_layer.c_out)
    elif isinstance(nfn_layer, L_.NPPool):
        layer = npl.NPPool(layout)
    elif isinstance(nfn_layer, L_.HNPPool):
        layer = npl.HNPPool(layout)
    elif isinstance(nfn_layer, L_.LearnedPosEmbedding):
        layer = npl.LearnedPosEmbedding(layout, nfn_layer.channels)
    elif isinstance(nfn_layer, L_.IOSinusoidalEncoding):
        layer = npl.IOSinusoidalEncoding(layout)
    else:
        raise InteropError(f"no wgraph equivalent of nfn's {type(nfn_layer).__name__}")
    return load_nfn(layer, nfn_layer)


def _load_np(layer: npl.NPLinear, src) -> None:
    if (layer.c_in, layer.c_out, layer.io_embed) != (src.c_in, src.c_out, src.io_embed):
        mine, theirs = (layer.c_in, layer.c_out, layer.io_embed), (src.c_in, src.c_out, src.io_embed)
        raise InteropError(f"channels/io_embed differ: wgraph {mine}, nfn {theirs}")
    for i in range(layer.spec.num_layers):
        m = {n: getattr(src, f"layer_{i}{s}") for n, s in (("self", ""), ("glob", "_rc"), ("row", "_r"), ("col", "_c"))}
        _set(layer.w[i], {k: _mat(v) for k, v in m.items()}, [v.bias for v in m.values()])
        bc, bg = getattr(src, f"bias_{i}"), getattr(src, f"bias_{i}_rc")
        _set(layer.b[i], {"col": _mat(bc), "glob": _mat(bg)}, [bc.bias, bg.bias])
    if layer.io_embed:
        with torch.no_grad():
            layer.in_embed.copy_(src.in_embed[0, :, 0, :])
            layer.out_embed.copy_(src.out_embed[0, :, :, 0])
            layer.out_bias_embed.copy_(src.out_bias_embed[0])


def _load_hnp(layer: npl.HNPLinear, src) -> None:
    if (layer.c_in, layer.c_out) != (src.c_in, src.c_out):
        raise InteropError(f"channels differ: wgraph {(layer.c_in, layer.c_out)}, nfn {(src.c_in, src.c_out)}")
    s, L = layer.spec, layer.spec.num_layers
    big = layer.c_in * s.kernel_numels[0] * s.n_in
    for i in range(L):
        T = layer.layers[i]["w"]
        if i == 0:
            rpt = torch.cat([_mat(src.w0_rpt), _mat(src.bias_0)], 0)
            glob = torch.cat([_mat(src.w0_rbdcst), _mat(src.bias_0_rc)], 0)
            bias = torch.cat([src.w0_rpt.bias + src.w0_rbdcst.bias, src.bias_0.bias + src.bias_0_rc.bias]).detach()
            b_big, b_small = _split(rpt, big)
            _set(T, {"big": b_big, "small": b_small, "glob": glob}, [bias])
        elif i == L - 1:
            cpt = _mat(src.wfin_cpt)
            n_small = T["small"].shape[1]
            mats = {"small": cpt[:, :n_small], "glob": _mat(src.wfin_cbdcst)}
            if L == 2:
                mats["big"] = cpt[:, n_small:]
            _set(T, mats, [src.wfin_cpt.bias, src.wfin_cbdcst.bias])
            _set(layer.layers[i]["b"], {"glob": _mat(src.bias_fin_rc)}, [src.bias_fin_rc.bias])
        else:
            lr = getattr(src, f"layer_{i}_r")
            row = _mat(lr)
            n_row = T["row"].shape[1]
            mats = {
                "self": _mat(getattr(src, f"layer_{i}")),
                "glob": _mat(getattr(src, f"layer_{i}_rc")),
                "row": row[:, :n_row],
                "col": _mat(getattr(src, f"layer_{i}_c")),
            }
            if i == 1:
                mats["big"] = row[:, n_row:]
            _set(T, mats, [getattr(src, f"layer_{i}{x}").bias for x in ("", "_rc", "_r", "_c")])
            bc, bg = getattr(src, f"bias_{i}"), getattr(src, f"bias_{i}_rc")
            _set(layer.layers[i]["b"], {"col": _mat(bc), "glob": _mat(bg)}, [bc.bias, bg.bias])
