"""The weight-space view of a :class:`~wgraph.graph.WeightGraph` for chain architectures.

Parameter-sharing neural functionals (NP / HNP of Zhou et al. 2023, Monomial-NFN, MAGEP-NFN) do not
see a graph: they see the list of a network's weights and biases, with a channel axis.
For a chain of ``L`` layers with neuron counts ``n_0 (input), n_1, ..., n_L (output)``:

    weights[i]: (B, C, n_{i+1}, n_i, *kernel_i)        biases[i]: (B, C, n_{i+1})

``kernel_i`` is ``()`` for a ``Linear`` and the kernel shape of a convolution. A WeightGraph of an
MLP, or of a CNN whose convolutions are followed by global pooling and linear layers, is exactly
such a chain: block ``i`` reads layer ``i`` and writes layer ``i + 1``; the bias of layer ``i + 1``
is its node feature ``"bias"``. :meth:`WeightSpace.from_graph` makes that view without copying
(``C = 1``); :meth:`WeightSpace.to_graph` writes one channel back.

Anything else (a residual addition, an attention block, normalization statistics, hidden neurons that
may not be permuted) raises :class:`WeightSpaceError` naming what breaks the chain.

Helpers of every parameter-sharing layer: :meth:`ChainSpec.of` (the chain of a layout, graph or
spec), :func:`check_input` (a layer's input fits its chain and channels) and :func:`mix_channels`
(the channel mixing :math:`z_{b,:,j,k} = M W_{b,:,j,k}`, with NP's broadcast terms, in one op).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import WgraphError
from ..graph import Layout, WeightGraph
from .layouts import model_layout


class WeightSpaceError(WgraphError):
    """A layout that is not a plain chain of layers, or a weight space that does not fit a layout."""


@dataclass(frozen=True)
class ChainSpec:
    """The shape of a chain architecture's weight space (one per :class:`~wgraph.graph.Layout`).

    ``sizes = (n_0, ..., n_L)``; ``kernels[i]`` the kernel shape of weight ``i``; ``has_bias[i]``
    whether layer ``i + 1`` has a bias parameter; ``scalings[i]`` the scaling group of layer ``i``
    (:data:`wgraph.graph.SCALING_GROUPS`; only hidden layers ``1 .. L-1`` matter).
    """

    sizes: tuple[int, ...]
    kernels: tuple[tuple[int, ...], ...]
    has_bias: tuple[bool, ...]
    scalings: tuple[str, ...]

    @property
    def num_layers(self) -> int:
        return len(self.kernels)

    @property
    def n_in(self) -> int:
        return self.sizes[0]

    @property
    def n_out(self) -> int:
        return self.sizes[-1]

    @property
    def kernel_numels(self) -> tuple[int, ...]:
        """``K_i = prod(kernel_i)`` (1 for a linear layer)."""
        return tuple(int(torch.Size(k).numel()) for k in self.kernels)

    def weight_shape(self, i: int) -> tuple[int, ...]:
        return (self.sizes[i + 1], self.sizes[i], *self.kernels[i])

    @property
    def hidden_scaling(self) -> str:
        """The smallest scaling group over the hidden layers (``"none"`` if they disagree)."""
        from ..graph import intersect_scaling

        s = "real"
        for x in self.scalings[1:-1]:
            s = intersect_scaling(s, x)
        return s

    @classmethod
    def from_layout(cls, layout: Layout) -> ChainSpec:
        """The chain of ``layout``, computed once per Layout object and kept in it (as the layout's
        own cached properties are), not in a module-level cache."""
        spec = layout.__dict__.get("_chain_spec")
        if spec is None:
            spec = layout.__dict__["_chain_spec"] = _chain_spec(layout)
        return spec

    @classmethod
    def of(cls, x) -> ChainSpec:
        """The chain of ``x``: a ChainSpec, or a Layout or WeightGraph (or a list of one) of a chain."""
        if isinstance(x, ChainSpec):
            return x
        return _chain_spec(model_layout(x, "a parameter-sharing layer", error=WeightSpaceError))


def _chain_spec(layout: Layout) -> ChainSpec:
    def fail(why: str):
        raise WeightSpaceError(
            f"this layout is not a chain of layers, so it has no NP/HNP weight space: {why}. "
            "Parameter-sharing layers cover MLPs and CNNs with global pooling; use the graph NFN "
            "(wgraph.nn) for residual, attention and normalized architectures."
        )

    layers, blocks = layout.layers, layout.blocks
    what = {
        "identity": "a residual (identity) connection",
        "copy": "a copy of neurons into a composite layer (a concatenation, or a flatten without global pooling)",
        "grouped": "a grouped convolution",
    }
    for blk in blocks:
        if blk.kind != "dense":
            fail(f"block {blk.name!r} is {what.get(blk.kind, repr(blk.kind) + ' block')} from layer "
                 f"{layers[blk.src].name!r} to layer {layers[blk.dst].name!r}")
    if len(blocks) < 1 or len(layers) != len(blocks) + 1:
        fail(f"{len(layers)} neuron layers and {len(blocks)} weight blocks (a chain has one block per layer step)")
    for i, blk in enumerate(blocks):
        if (blk.src, blk.dst) != (i, i + 1):
            fail(f"weight {blk.name!r} goes from layer {layers[blk.src].name!r} to layer "
                 f"{layers[blk.dst].name!r}, not from layer {i} to layer {i + 1}")
    kinds = [l.kind for l in layers]
    if kinds[0] != "input" or kinds[-1] != "output" or any(k != "hidden" for k in kinds[1:-1]):
        fail(f"layer kinds are {kinds}, expected input, hidden..., output")
    for l in layers[1:-1]:
        space = layout.spaces[l.space]
        if len(space.layers) != 1:
            names = [layers[j].name for j in space.layers]
            fail(f"layer {l.name!r} shares its neuron permutation with layers {names}")
        if not space.permutable:
            fail(f"hidden layer {l.name!r} may not be permuted" + (f" ({space.note})" if space.note else ""))
    bias_col = layout.node_features.index("bias") if "bias" in layout.node_features else -1
    has_bias = [False] * len(blocks)
    for p in layout.params:
        if p.where == "edges":
            continue
        if p.where == "nodes" and p.feature == bias_col and p.index >= 1 and not has_bias[p.index - 1]:
            has_bias[p.index - 1] = True
            continue
        what = layout.node_features[p.feature] if p.where == "nodes" else p.where
        fail(f"parameter {p.name!r} ({what}) is neither a weight nor a bias")
    return ChainSpec(
        sizes=tuple(l.size for l in layers),
        kernels=tuple(tuple(b.kernel) for b in blocks),
        has_bias=tuple(has_bias),
        scalings=tuple(l.scaling for l in layers),
    )


class WeightSpace:
    """Weights and biases of B chain networks with C channels (see the module docstring).

    ``weights[i]``: ``(B, C, n_{i+1}, n_i, *kernel_i)``; ``biases[i]``: ``(B, C, n_{i+1})``.
    Supports ``+``, ``*`` (by a scalar or another WeightSpace) and :meth:`map`, so an NF-layer stack
    reads like ``x = x + act(layer(x))``.
    """

    def __init__(self, weights, biases, spec: ChainSpec | None = None):
        weights, biases = tuple(weights), tuple(biases)
        if len(weights) != len(biases) or not weights:
            raise WeightSpaceError(f"{len(weights)} weights and {len(biases)} biases: need one of each per layer")
        B, C = weights[0].shape[:2]
        for i, (w, b) in enumerate(zip(weights, biases)):
            if w.dim() < 4 or b.dim() != 3 or w.shape[:3] != b.shape or w.shape[:2] != (B, C):
                raise WeightSpaceError(
                    f"layer {i}: weight {tuple(w.shape)} and bias {tuple(b.shape)} are not "
                    f"(B, C, out, in, *kernel) and (B, C, out) with B={B}, C={C}"
                )
            if i and w.shape[3] != weights[i - 1].shape[2]:
                raise WeightSpaceError(
                    f"layer {i} reads {w.shape[3]} neurons but layer {i - 1} writes {weights[i - 1].shape[2]}"
                )
        if spec is None:
            spec = ChainSpec(
                sizes=(weights[0].shape[3], *(w.shape[2] for w in weights)),
                kernels=tuple(tuple(w.shape[4:]) for w in weights),
                has_bias=(True,) * len(weights),
                scalings=("none",) * (len(weights) + 1),
            )
        elif tuple(tuple(w.shape[2:]) for w in weights) != tuple(spec.weight_shape(i) for i in range(spec.num_layers)):
            raise WeightSpaceError(
                f"weight shapes {[tuple(w.shape[2:]) for w in weights]} do not match the chain "
                f"{[spec.weight_shape(i) for i in range(spec.num_layers)]}"
            )
        self.weights, self.biases, self.spec = weights, biases, spec

    # ----------------------------------------------------------------- graph
    @classmethod
    def from_graph(cls, graph: WeightGraph) -> WeightSpace:
        """The ``C = 1`` weight space of ``graph`` (views, no copy)."""
        spec = ChainSpec.from_layout(graph.layout)
        lay = graph.layout
        col = lay.node_features.index("bias") if "bias" in lay.node_features else None
        weights = [graph.edges[i].unsqueeze(1) for i in range(spec.num_layers)]
        biases = []
        for i in range(spec.num_layers):
            layer = lay.layers[i + 1]
            if col is None:
                biases.append(graph.nodes.new_zeros(graph.batch_size, 1, layer.size))
            else:
                biases.append(graph.nodes[:, layer.start : layer.stop, col].unsqueeze(1))
        return cls(weights, biases, spec)

    def to_graph(self, layout: Layout, channel: int = 0) -> WeightGraph:
        """Channel ``channel`` as a WeightGraph of ``layout`` (biases of layers without one are dropped)."""
        spec = ChainSpec.from_layout(layout)
        if spec.sizes != self.spec.sizes or spec.kernels != self.spec.kernels:
            raise WeightSpaceError(f"weight space of chain {self.spec.sizes} does not fit layout chain {spec.sizes}")
        w0 = self.weights[0]
        nodes = w0.new_zeros(self.batch_size, layout.num_nodes, len(layout.node_features))
        col = layout.node_features.index("bias") if "bias" in layout.node_features else None
        for i, b in enumerate(self.biases):
            layer = layout.layers[i + 1]
            if col is not None and spec.has_bias[i]:
                nodes[:, layer.start : layer.stop, col] = b[:, channel]
        return WeightGraph(layout, nodes, [w[:, channel] for w in self.weights])

    def to_graphs(self, layout: Layout) -> list[WeightGraph]:
        """One WeightGraph per channel: the form :mod:`wgraph.testing` compares and permutes."""
        return [self.to_graph(layout, c) for c in range(self.channels)]

    # ------------------------------------------------------------ properties
    @property
    def num_layers(self) -> int:
        return len(self.weights)

    @property
    def batch_size(self) -> int:
        return self.weights[0].shape[0]

    @property
    def channels(self) -> int:
        return self.weights[0].shape[1]

    def __len__(self) -> int:
        return self.num_layers

    def __iter__(self):
        return iter(zip(self.weights, self.biases))

    def __repr__(self) -> str:
        s = self.spec
        return f"WeightSpace(B={self.batch_size}, C={self.channels}, sizes={s.sizes}, kernels={s.kernels})"

    # ------------------------------------------------------------ arithmetic
    def map(self, fn) -> WeightSpace:
        """Apply ``fn`` to every weight and bias tensor (e.g. an activation)."""
        return WeightSpace([fn(w) for w in self.weights], [fn(b) for b in self.biases], self.spec)

    def __add__(self, other: WeightSpace) -> WeightSpace:
        return WeightSpace(
            [a + b for a, b in zip(self.weights, other.weights)],
            [a + b for a, b in zip(self.biases, other.biases)],
            self.spec,
        )

    def __mul__(self, other) -> WeightSpace:
        if isinstance(other, WeightSpace):
            return WeightSpace(
                [a * b for a, b in zip(self.weights, other.weights)],
                [a * b for a, b in zip(self.biases, other.biases)],
                self.spec,
            )
        return self.map(lambda t: t * other)

    __rmul__ = __mul__

    def cat(self, other: WeightSpace) -> WeightSpace:
        """Concatenate along the channel axis."""
        return WeightSpace(
            [torch.cat([a, b], 1) for a, b in zip(self.weights, other.weights)],
            [torch.cat([a, b], 1) for a, b in zip(self.biases, other.biases)],
            self.spec,
        )


def check_input(x, spec: ChainSpec, channels: int, who: str) -> WeightSpace:
    """``x`` (a WeightGraph or WeightSpace) as the input of layer ``who``, built for chain ``spec``
    and ``channels`` input channels; a mismatch raises :class:`WeightSpaceError`."""
    x = as_weight_space(x)
    if x.spec.sizes != spec.sizes or x.spec.kernels != spec.kernels:
        raise WeightSpaceError(
            f"{who} was built for chain {spec.sizes} kernels {spec.kernels}, got {x.spec.sizes} {x.spec.kernels}"
        )
    if x.channels != channels:
        raise WeightSpaceError(f"{who} expects {channels} input channels, got {x.channels}")
    return x


def _channel_matmul(M: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``z[b, :, j, k] = M @ W[b, :, j, k]`` for ``W`` of shape ``(B, X, o, i)`` (no autograd graph
    of its own when called from :class:`ChannelMix`).

    Large ``o i``: one ``bmm`` with ``M`` broadcast over the batch (no copy of ``W``), written into
    a tensor of its own rather than returned as a view of a 3-d result: autograd adds a second
    gradient of ``W`` (from the row / column means) in place only into a tensor that owns its
    storage, and otherwise allocates one more ``W``-sized sum. Small ``o i`` (CNN channels, INRs): a
    batched product of many small matrices is slow, so ``W`` is transposed to ``(X, B o i)`` (a
    transient copy) for one large matrix product.
    """
    B, X, o, i = W.shape
    if o * i >= 4096:
        z = W.new_empty(B, M.shape[0], o, i)
        torch.bmm(M.expand(B, *M.shape), W.reshape(B, X, o * i), out=z.view(B, -1, o * i))
        return z
    Wt = W.transpose(0, 1).reshape(X, B * o * i)
    return (M @ Wt).view(M.shape[0], B, o, i).transpose(0, 1).contiguous()


class ChannelMix(torch.autograd.Function):
    """``z[b,:,j,k] = M W[b,:,j,k] + row[b,:,k] + col[b,:,j] + const[b,:]`` in one op.

    The NP weight update (``row``, ``col``, ``const`` may be ``None``). Forward: one matrix product
    and in-place broadcast adds; backward: one matrix product for ``dW`` and one for ``dM``, sums of
    ``dz`` for the broadcast terms. Keeps only ``M`` and ``W`` for backward (autograd's in-place
    adds on a view would clone ``dz`` per term; its matrix-product paths would keep a transposed
    copy of ``W``).
    """

    @staticmethod
    def forward(ctx, M, W, row, col, const):
        z = _channel_matmul(M, W)
        if row is not None:
            z += row[:, :, None, :]
        if col is not None:
            z += col[:, :, :, None]
        if const is not None:
            z += const[:, :, None, None]
        ctx.save_for_backward(M, W)
        ctx.has = (row is not None, col is not None, const is not None)
        return z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dz):
        M, W = ctx.saved_tensors
        B, X, o, i = W.shape
        dM = dW = None
        if o * i >= 4096:
            if ctx.needs_input_grad[0]:
                dM = torch.bmm(dz.reshape(B, -1, o * i), W.reshape(B, X, o * i).transpose(1, 2)).sum(0)
            if ctx.needs_input_grad[1]:
                dW = _channel_matmul(M.T, dz.contiguous())
        else:  # one (Y, B o i) copy of dz serves both products
            dzt = dz.transpose(0, 1).reshape(-1, B * o * i)
            if ctx.needs_input_grad[0]:
                dM = dzt @ W.transpose(0, 1).reshape(X, B * o * i).T
            if ctx.needs_input_grad[1]:
                dW = (M.T @ dzt).view(X, B, o, i).transpose(0, 1).contiguous()
        has = ctx.has
        dcol = dz.sum(-1) if has[1] or has[2] else None
        return (
            dM,
            dW,
            dz.sum(-2) if has[0] else None,
            dcol if has[1] else None,
            dcol.sum(-1) if has[2] else None,
        )


def mix_channels(M: torch.Tensor, W: torch.Tensor, row=None, col=None, const=None) -> torch.Tensor:
    """Channel mixing of a ``(B, X, o, i)`` tensor by ``M`` ``(Y, X)``: ``(B, Y, o, i)``, plus the
    broadcast terms ``row`` ``(B, Y, i)``, ``col`` ``(B, Y, o)`` and ``const`` ``(B, Y)`` that are
    given (:class:`ChannelMix`)."""
    return ChannelMix.apply(M, W, row, col, const)


def as_weight_space(x) -> WeightSpace:
    """A :class:`WeightSpace` from a WeightGraph (C = 1) or a WeightSpace (unchanged)."""
    if isinstance(x, WeightSpace):
        return x
    if isinstance(x, WeightGraph):
        return WeightSpace.from_graph(x)
    raise WeightSpaceError(f"expected a WeightGraph or a WeightSpace, got {type(x).__name__}")


def flatten_kernel(w: torch.Tensor) -> torch.Tensor:
    """``(B, C, o, i, *k) -> (B, C * K, o, i)``, channel-major (index ``c * K + kernel position``)."""
    if w.dim() == 4:
        return w
    B, C, o, i = w.shape[:4]
    return w.flatten(4).permute(0, 1, 4, 2, 3).reshape(B, -1, o, i)


def unflatten_kernel(w: torch.Tensor, kernel: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`flatten_kernel`."""
    if not kernel:
        return w
    B, CK, o, i = w.shape
    K = int(torch.Size(kernel).numel())
    return w.view(B, CK // K, *kernel, o, i).movedim((-2, -1), (2, 3))


def random_graph(
    layout: Layout, batch_size: int = 1, *, seed: int = 0, dtype=torch.float32, scale: float = 1.0
) -> WeightGraph:
    """A WeightGraph of ``layout`` with i.i.d. ``N(0, scale^2)`` weights and biases (for tests and
    benchmarks); nodes without a bias keep zero."""
    spec = ChainSpec.from_layout(layout)
    gen = torch.Generator().manual_seed(seed)
    shapes = [spec.weight_shape(i) for i in range(spec.num_layers)]
    ws = [torch.randn(batch_size, 1, *shape, generator=gen, dtype=dtype) * scale for shape in shapes]
    bs = [torch.randn(batch_size, 1, n, generator=gen, dtype=dtype) * scale for n in spec.sizes[1:]]
    return WeightSpace(ws, bs, spec).to_graph(layout)
