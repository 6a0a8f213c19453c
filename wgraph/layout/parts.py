"""The parts of a :class:`~wgraph.layout.Layout`: neuron layers, neuron spaces, edge blocks and
parameter slots (small immutable records), and the names they use."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NODE_KINDS = ("input", "hidden", "output")
#: Per-neuron scaling groups, from largest to smallest: ``real`` (any nonzero factor: only linear
#: ops touch the neurons), ``positive`` (positive factors: ReLU, LeakyReLU, max pooling, ...),
#: ``sign`` (factors +-1: odd activations such as tanh and sin), ``none``.
SCALING_GROUPS = ("real", "positive", "sign", "none")


def intersect_scaling(a: str, b: str) -> str:
    """The largest scaling group contained in both ``a`` and ``b``."""
    if a == b or b == "real":
        return a
    if a == "real":
        return b
    return "none"

#: How a node feature moves when its neuron is rescaled, ``h -> s h`` (see :mod:`wgraph.symmetry`):
#: the power of ``s`` it is multiplied by. A bias or a learned shift (``x + beta``) is added to the
#: neuron, so it scales with it (1); a PReLU slope (``prelu(s x) = s prelu(x)`` for ``s > 0``) and a
#: layer scale (``x * gamma``) are unchanged (0). A feature missing here has no scaling rule: the
#: spaces of its layers admit permutations only (:meth:`Layout.space_scaling`).
FEATURE_SCALING = {"bias": 1, "shift": 1, "prelu": 0, "scale": 0}
#: Node-feature columns that hold no parameter but describe a network: ``probe:k``, a neuron's
#: value on probe input ``k`` (its pre-activation, so it scales with the neuron, power 1), and
#: per-network settings such as ``activation=tanh`` (unchanged, power 0).
PROBE_PREFIX = "probe:"


def feature_power(name: str) -> int:
    """The power of a neuron's scaling factor that node feature ``name`` is multiplied by
    (:data:`FEATURE_SCALING`; 1 for probe values; 0 for any other column, which does not move)."""
    if name in FEATURE_SCALING:
        return FEATURE_SCALING[name]
    return 1 if name.startswith(PROBE_PREFIX) else 0

BLOCK_KINDS = ("dense", "grouped", "identity", "copy", "shared")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class NeuronLayer:
    """The neurons of one activation's feature axis: nodes ``start .. start + size - 1``.

    ``name`` is the module path (or fx node) that produced the activation, ``kind`` one of
    :data:`NODE_KINDS`, ``depth`` the number of parametric ops between the input and this layer,
    ``space`` the index of the :class:`NeuronSpace` it belongs to. ``scaling`` is the largest
    group of per-neuron scalings ``h_i -> s_i h_i`` that the ops applied to these neurons commute
    with (see :data:`SCALING_GROUPS`): scaling a hidden neuron's incoming weights and bias by ``s``
    and its outgoing weights by ``1/s`` then preserves the function.
    """

    name: str
    kind: str
    depth: int
    start: int
    size: int
    space: int
    scaling: str = "none"

    @property
    def stop(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class NeuronSpace:
    """Layers whose neurons share one permutation (tied by residual additions).

    A space is ``permutable`` only if every layer in it is hidden: input and output neurons are
    ordered by the data and the task, so permuting them changes the function. ``scaling``: the
    per-neuron scaling group the space admits besides permutations (:data:`SCALING_GROUPS`).
    ``note`` says why a space of hidden neurons is not permutable (an op that singles them out).
    ``segments`` lists where the space's neurons reappear in composite layers (concatenations,
    flattened feature maps): ``(layer, offset, inner)`` means node ``offset + c * inner + s`` of
    that layer moves with neuron ``c`` of the space, for every ``s < inner``.
    ``heads > 1``: attention dimensions in ``heads`` contiguous blocks. A permutation may only
    reorder dimensions within a head and move whole heads; spaces with the same ``head_group``
    (the query/key space and the value space of one attention) move their heads together, and
    ``head_group == -1`` means heads stay in place (a per-head parameter outside the graph, such
    as a relative position bias table, pins them).
    """

    name: str
    layers: tuple[int, ...]
    size: int
    permutable: bool
    scaling: str = "none"
    note: str = ""
    segments: tuple[tuple[int, int, int], ...] = ()
    heads: int = 1
    head_group: int = -1


@dataclass(frozen=True)
class EdgeBlock:
    """All edges from layer ``src`` to layer ``dst`` that come from one parameter (or a skip).

    ``kind == "dense"``: the weight ``param`` of shape ``(dst.size, src.size, *kernel)``; edge
    ``(o, i)`` has feature vector ``W[o, i].flatten()`` of length ``prod(kernel)``.
    ``kind == "grouped"``: a grouped convolution with ``groups`` groups, weight of native shape
    ``(out, in // groups, *kernel)``: destination ``o`` in group ``o // (out // groups)`` reads the
    ``in // groups`` sources of that group; edge ``(o, j)`` carries ``W[o, j]`` (block diagonal).
    ``kind == "shared"``: a second use of the weight of dense block ``index[0]`` (a shared module
    or tied weights), with the same edges as a dense block; no tensor of its own: its edge values
    are that block's weight, transposed if ``index[1] == 1`` (the weight used as ``W^T``).
    ``kind == "identity"``: a residual connection, edge ``i -> i`` with value 1, no parameter.
    ``kind == "copy"``: neurons that reappear in a composite layer (a concatenation, or a flatten
    that gives every channel one node per spatial position): edges with value 1 from source neuron
    ``src_offset + i`` to destination nodes ``dst_offset + i * inner + s`` for ``s < inner``,
    ``i < count``; no parameter. With ``index``, source neuron ``index[i]`` instead of
    ``src_offset + i`` (a fixed reordering such as a channel shuffle).
    """

    name: str
    kind: str
    src: int
    dst: int
    param: str | None = None
    kernel: tuple[int, ...] = ()
    src_offset: int = 0
    dst_offset: int = 0
    inner: int = 1
    count: int = 0
    groups: int = 1
    index: tuple[int, ...] = ()

    @property
    def kernel_numel(self) -> int:
        return math.prod(self.kernel)

    @property
    def has_tensor(self) -> bool:
        """Whether the block holds a parameter (dense) or only structure (identity, copy)."""
        return self.kind in ("dense", "grouped")


@dataclass(frozen=True)
class ParamSlot:
    """Where one state-dict entry lives in the graph.

    ``where == "edges"``: the whole tensor is the dense block ``index``.
    ``where == "nodes"``: a vector stored in node-feature column ``feature`` of layer ``index``.
    ``where == "extra"``: state that belongs to no neuron (e.g. BatchNorm's ``num_batches_tracked``),
    kept as is in :attr:`WeightGraph.extras` with its own ``dtype`` so the round trip stays exact.
    ``where == "alias"``: a second name of the tensor ``alias_of`` (tied weights appear under
    both names in a state dict); stored once, returned under both names.

    ``parts``: a parameter that feeds several blocks or layers (attention's packed ``in_proj``)
    is the concatenation along its first axis of the blocks (``edges``) or layers (``nodes``)
    listed, ``index`` being the first. ``transposed``: the block holds the parameter viewed as
    ``(in, out, *kernel)`` with its first two axes swapped (``x @ W``, positional embeddings
    ``(1, tokens, C)``, embedding tables ``(tokens, C)``, transposed convolutions).
    """

    name: str
    shape: tuple[int, ...]
    where: str
    index: int
    feature: int = -1
    dtype: str | None = None
    parts: tuple[int, ...] = ()
    transposed: bool = False
    alias_of: str | None = None

    @property
    def targets(self) -> tuple[int, ...]:
        """The blocks (``edges``) or layers (``nodes``) that hold the parameter."""
        return self.parts or (self.index,)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def accepts(self, dtype: torch.dtype) -> bool:
        """Whether an ``extra`` slot holds values of ``dtype``: its own dtype, or any floating
        dtype for a floating slot (a graph cast to another precision casts its float extras
        too; integer and boolean state such as ``num_batches_tracked`` keeps its dtype)."""
        own = getattr(torch, self.dtype) if self.dtype else None
        return own is None or dtype == own or (own.is_floating_point and dtype.is_floating_point)
