"""The architecture half of a weight graph: :class:`Layout` and its dataclasses.

A network becomes a graph whose **nodes are neurons** and whose **edges are weights**.

* Every activation that a parametric op reads or writes contributes one :class:`NeuronLayer`: a
  contiguous range of node indices, one node per feature (channel) of that activation.
* Every weight tensor is one dense :class:`EdgeBlock` from the layer it reads to the layer it writes.
  The block keeps the parameter's native shape: ``(out, in)`` for ``Linear`` and
  ``(out, in, *kernel)`` for a convolution, so edge ``(o, i)`` carries the kernel ``W[o, i]`` as its
  feature vector. No ``edge_index`` is stored; `Layout.edge_index` produces one on demand.
* Biases (and normalization statistics) are **node features**: column ``f`` of ``nodes[b, n, f]``.
* Residual additions add ``identity`` blocks (no parameters, edge value 1) and tie the two layers
  into one :class:`NeuronSpace`: a set of layers that must be permuted together.

The **parameter map** (:class:`ParamSlot`) puts every element of every state-dict entry in exactly
one place, so :meth:`wgraph.WeightGraph.to_state_dict` is a bit-exact inverse of the conversion.

Everything here depends only on the architecture, so a Layout is computed once and shared by every
checkpoint. The geometry that other rooms ask of it lives here too, as methods and cached
properties: the nodes a neuron space moves (`Layout.space_runs`, and from them
`Layout.node_permutation`, `Layout.node_scale`, `Layout.fixed_nodes`,
`Layout.node_spatial`), the nodes a block reads and writes (`Layout.block_selection`,
`Layout.block_nodes`), the nodes of each kind (`Layout.nodes_of_kind`) and a stable
`Layout.fingerprint`.
"""

from .check import check_layout
from .layout import Layout
from .parts import (
    BLOCK_KINDS,
    FEATURE_SCALING,
    FORMAT_VERSION,
    NODE_KINDS,
    PROBE_PREFIX,
    SCALING_GROUPS,
    EdgeBlock,
    NeuronLayer,
    NeuronSpace,
    ParamSlot,
    feature_power,
    intersect_scaling,
)

__all__ = [
    "Layout", "NeuronLayer", "NeuronSpace", "EdgeBlock", "ParamSlot", "check_layout",
    "NODE_KINDS", "SCALING_GROUPS", "FEATURE_SCALING", "PROBE_PREFIX", "feature_power", "BLOCK_KINDS",
    "FORMAT_VERSION", "intersect_scaling",
]
