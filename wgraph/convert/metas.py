"""The metas a traced value carries while a model is interpreted: which neurons lie on which
axis (:class:`Feat`, :class:`SplitFeat`, :class:`Moved`), input-only data (:class:`Raw`),
statistics over neurons (:class:`Stat`), attention scores and channel-attention matrices
(:class:`Scores`, :class:`Gram`), and parameters read directly (:class:`Param`, :class:`Params`).
The rules of :mod:`wgraph.convert.rules` compute one for each op's result."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Feat:
    """Meta of a traced tensor whose axis ``axis`` enumerates the neurons of layer ``layer``."""

    layer: int
    axis: int


@dataclass(frozen=True)
class Raw:
    """Meta of a tensor computed from the model inputs only (no parameter has touched it yet).

    Input neurons are never permuted, so any data-independent op on raw inputs is allowed; the
    input layer is created when a parametric op first reads such a tensor (:meth:`input_layer`).
    """

    source: str


@dataclass(frozen=True)
class SplitFeat:
    """Meta of a tensor whose neuron axis is split in two (``view(B, g, C // g, ...)``): neuron
    ``c = major * sizes[1] + minor`` sits at index ``major`` of axis ``axes[0]`` and ``minor`` of
    axis ``axes[1]``. Only a reshape that merges the two again gives neurons back.

    A packed projection split in three (timm's ``qkv(x).reshape(B, N, 3, heads, head_dim)``) has
    three axes, neuron ``c = (part * sizes[1] + major) * sizes[2] + minor``; selecting a part
    (``unbind``, ``qkv[0]``) gives that part's layer (:meth:`LayoutBuilder.unpack`) split in two."""

    layer: int
    axes: tuple[int, ...]
    sizes: tuple[int, ...]


@dataclass(frozen=True)
class Stat:
    """Meta of a statistic over all neurons of ``layers`` (``x.pow(2).mean(-1, keepdim=True)`` in a
    hand-written RMSNorm): one value per position, a symmetric function of those neurons, so no
    permutation of them changes it and it may be broadcast back onto hidden neurons; their
    scalings do change it (the reduction restricts them)."""

    layers: tuple[int, ...]


@dataclass(frozen=True)
class Scores:
    """Meta of attention scores ``q @ k.transpose(-2, -1)`` (and what is computed from them without
    other hidden neurons: scaling, a bias, a mask, softmax): entry ``[h, i, j]`` is the product of
    head ``h`` of query ``i`` (layer ``query``) with head ``h`` of key ``j`` (layer ``key``).

    A permutation of the dimensions within each head, shared by query and key, leaves every score
    unchanged; moving whole heads moves the scores along the head axis ``axis``. ``axis`` is None
    once an op has pinned the heads in place: a per-head parameter (a relative position bias, a
    learned temperature) or an op that mixes heads (talking heads)."""

    query: int
    key: int
    heads: int
    axis: int | None


@dataclass(frozen=True, eq=False)
class Moved:
    """Meta of a tensor whose neurons (of ``layer``) were reshaped into other axes (MobileViT's
    unfolding: channels folded into the batch axis): ``labels`` has the tensor's shape and holds,
    for every element, the neuron it belongs to. Only reshapes and axis reorderings may follow; once
    one axis holds the neurons in order again the tensor is a :class:`Feat` again."""

    layer: int
    labels: torch.Tensor


@dataclass(frozen=True)
class Params:
    """Meta of a tensor made of several parameters (and constants) without hidden neurons:
    ``torch.cat((self.q_bias, self.k_bias, self.v_bias))`` (Swin V2's and EVA's q/k/v bias)."""

    parts: tuple[Param, ...]


@dataclass(frozen=True)
class Gram:
    """Meta of a product over tokens of two hidden tensors, ``a.transpose(-2, -1) @ c`` (channel
    attention: XCiT, EdgeNeXt, DaViT, CoaT's factorized attention): entry ``[h, i, j]`` sums
    ``a[h, n, i] * c[h, n, j]`` over the tokens ``n``, dimension ``i`` of layer ``rows`` (on axis
    ``row_axis``) against dimension ``j`` of layer ``cols`` (on ``col_axis``). Permutations of the
    two layers permute its rows and columns; ``axis`` is the head axis, None once pinned (see
    :class:`Scores`)."""

    rows: int
    cols: int
    heads: int
    axis: int | None
    row_axis: int
    col_axis: int


@dataclass(frozen=True)
class Param:
    """Meta of a parameter or buffer read directly (``self.weight`` in a custom forward).

    ``derived``: the value is an elementwise function of the parameter (``self.logit_scale.exp()``)
    or a transpose of it, which is not the parameter itself: it may still be a per-neuron value or
    state kept aside, never a weight read in its stored orientation."""

    name: str
    shape: tuple[int, ...] = ()
    dtype: torch.dtype = torch.float32
    derived: bool = False
    buffer: bool = False  # a registered buffer (constants such as a DCT matrix), not an nn.Parameter
