r"""What a method is, whether it can run a configuration, and how it builds the step that is measured.

A method belongs to one *family*, which decides how its layer and model are built:

* ``gnn``: ``gnn-<backend>``, the graph NFN (:class:`~wgraph.nn.GraphNFN`) with message passing
  through that :mod:`wgraph.kernels` backend;
* ``ps``: the parameter-sharing layers ``np``, ``hnp``, ``monomial``, ``magep`` (wgraph's MAGEP variant) and
  ``magep-paper`` (the published MAGEP-NFN layer, :class:`~wgraph.nn.magep.MAGEPPaper`, on the kernel-free
  chain; its model is the ``magep-paper`` preset) (:class:`~wgraph.nn.ParamSharingNFN` and its layers);
* ``nfn``: ``nfn``'s ``nfn-np`` / ``nfn-hnp`` layers, on the same weight space as ``np`` / ``hnp``.

Whether a method can read an architecture is its model class's answer (``supports(layout)``);
what is kept here is only what concerns the profiler: the method and scope names, the backend's
device and packages, ``nfn`` being installed and profiled at layer scope.
"""

from __future__ import annotations

import importlib.util

from .config import SCOPES, Config, ProfileError

GNN_BACKENDS = ("reference", "fused", "pyg", "scatter", "triton")
PS_METHODS = ("np", "hnp", "monomial", "magep", "magep-paper")
NFN_METHODS = ("nfn-np", "nfn-hnp")
METHODS = (*(f"gnn-{b}" for b in GNN_BACKENDS), *PS_METHODS, *NFN_METHODS)
NFN_INSTALLED = importlib.util.find_spec("nfn") is not None


def family(method: str) -> str:
    """``"gnn"``, ``"ps"`` or ``"nfn"`` (see the module docstring). ``gnn-<name>`` is any registered
    message-passing backend, one registered with :func:`wgraph.kernels.register_backend` included."""
    if method.startswith("gnn-") and method not in METHODS:
        from ..kernels import available_backends

        if method.removeprefix("gnn-") in available_backends():
            return "gnn"
    if method not in METHODS:
        raise ProfileError(f"unknown method {method!r}; expected one of {list(METHODS)}")
    return "gnn" if method.startswith("gnn-") else "nfn" if method.startswith("nfn-") else "ps"


def model_class(method: str) -> type:
    """The model class whose ``supports(layout)`` says whether ``method`` reads a layout (``nfn``'s
    layers read the parameter-sharing weight space)."""
    from ..nn import GraphNFN, ParamSharingNFN

    return GraphNFN if family(method) == "gnn" else ParamSharingNFN


def default_methods(device: str) -> list[str]:
    """Every method that can run here: graph-NFN backends for the device, the parameter-sharing layers,
    and nfn's when installed (the ones that cannot represent an architecture are listed as such)."""
    backends = ["reference", "fused", "pyg", "scatter"] + (["triton"] if device == "cuda" else [])
    return [f"gnn-{b}" for b in backends] + list(PS_METHODS) + (list(NFN_METHODS) if NFN_INSTALLED else [])


def unsupported_reason(cfg: Config, layout) -> str | None:
    """Why ``cfg.method`` cannot run this configuration, or ``None``."""
    kind = family(cfg.method)
    if cfg.scope not in SCOPES:
        raise ProfileError(f"unknown scope {cfg.scope!r}; expected one of {list(SCOPES)}")
    if kind == "gnn":
        backend = cfg.method[4:]
        if backend == "triton" and cfg.device != "cuda":
            return "the triton backend runs on CUDA devices"
        from ..kernels import missing_package

        needs = missing_package(backend)
        if needs:
            return f"the {backend} backend needs {needs}, which is not installed"
    elif kind == "nfn":
        if cfg.scope != "layer":
            return "nfn layers are profiled at layer scope only"
        if not NFN_INSTALLED:
            return "the nfn package is not installed (pip install nfn)"
    support = model_class(cfg.method).supports(layout)
    return None if support else support.reason


def estimate_gb(cfg: Config, layout) -> float:
    r"""A rough upper estimate of the configuration's peak memory, for the cap (not a measurement).

    With :math:`L` layers (1 at layer scope), batch :math:`B`, width :math:`C`, :math:`E` edges
    (a conv kernel is one edge), :math:`N` nodes, :math:`P` weights per network and :math:`A`
    aggregators, in 4-byte floats:

    * graph NFN: :math:`4 L (8 B E C A + 16 B N C)`, the first term only for the materializing
      backends (four message tensors per direction); fused backends keep only node states;
    * parameter-sharing layers: :math:`4 L (f \cdot \mathrm{params} + 6 B C P)`, the layer's
      parameters (the measured layer's count; for nfn's, the wgraph layer with the same math) with their
      gradients (:math:`f = 2`, or 3 for nfn's concatenations) plus six
      :math:`B \times C \times P` tensors per layer.
    """
    from ..nn.weight_space import ChainSpec
    from .arch import network_size

    B, C = cfg.batch, cfg.width
    L = 1 if cfg.scope == "layer" else cfg.layers
    if family(cfg.method) == "gnn":
        materializes = cfg.method in ("gnn-reference", "gnn-pyg", "gnn-scatter")
        per_layer = 8 * B * layout.num_edges * C * len(cfg.aggr) if materializes else 0
        nodes = 16 * B * layout.num_nodes * C
        return 4 * L * (per_layer + nodes) / 1e9
    import torch

    spec = ChainSpec.from_layout(layout)
    with torch.device("meta"):
        params = sum(p.numel() for p in _ps_layer(cfg.method.removeprefix("nfn-"), spec, C).parameters())
    factor = 3 if family(cfg.method) == "nfn" else 2
    return 4 * L * (factor * params + 6 * B * C * network_size(layout)) / 1e9


# ----------------------------------------------------------------------------- the measured step
def build(cfg: Config, graph):
    """``(step, params)``: a closure running one measured step of ``cfg`` on ``graph`` (``B`` networks,
    on the device), and the tensors whose gradients it sets."""
    if cfg.scope == "model":
        return _model_step(cfg, graph)
    if family(cfg.method) == "gnn":
        return _gnn_layer_step(cfg, graph)
    return _weight_space_layer_step(cfg, graph)


def _backward(outputs: list, grads: list) -> None:
    """Backward from ``outputs`` with fixed random gradients (drawn at the first call, the warm-up,
    and kept like the inputs): a layer's backward pass without a loss's own temporaries."""
    import torch

    if not grads:
        gen = torch.Generator(device=outputs[0].device).manual_seed(0)
        grads.extend(torch.randn(o.shape, generator=gen, device=o.device, dtype=o.dtype) for o in outputs)
    torch.autograd.backward(outputs, grads)


def _model_step(cfg: Config, graph):
    """One training step (forward, MSE loss, backward, Adam) of the method's preset model."""
    import torch

    from ..nn import from_preset

    dev, layout = torch.device(cfg.device), graph.layout
    if family(cfg.method) == "gnn":
        overrides = {"aggr": list(cfg.aggr), "backend": cfg.method[4:]}
        model = from_preset("gnn", layout, hidden=cfg.width, layers=cfg.layers, **overrides)
    else:
        model = from_preset(cfg.method, layout, hidden=cfg.width, layers=cfg.layers)
    model = model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    target = torch.zeros(cfg.batch, 1, device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(graph), target)
        loss.backward()
        opt.step()

    return step, list(model.parameters())


def _gnn_layer_step(cfg: Config, graph):
    """One graph-NFN layer, forward and backward, on encoded node states that require gradients."""
    import torch

    from ..nn import GraphNFN

    layout, grads = graph.layout, []
    backend = cfg.method[4:]
    model = GraphNFN(layout, hidden=cfg.width, layers=1, aggr=tuple(cfg.aggr), backend=backend).to(cfg.device)
    with torch.no_grad():
        h, inputs = model.encode(graph)
    h.requires_grad_()
    layer = model.layers[0]

    def step():
        out, _ = layer(layout, h, inputs)
        _backward([out], grads)

    return step, [h, *layer.parameters()]


def _weight_space_layer_step(cfg: Config, graph):
    """One parameter-sharing (or nfn) layer, forward and backward, on a random ``C``-channel weight
    space input that requires gradients."""
    import torch

    from ..nn.weight_space import ChainSpec, WeightSpace

    dev, B, C, grads = torch.device(cfg.device), cfg.batch, cfg.width, []
    spec = ChainSpec.from_layout(graph.layout)
    if cfg.method == "magep-paper":  # the published layer reads the kernel-free chain
        from ..nn.magep import kernel_free

        spec = kernel_free(spec)
    ws = [torch.randn(B, C, *spec.weight_shape(i), device=dev, requires_grad=True) for i in range(spec.num_layers)]
    bs = [torch.randn(B, C, n, device=dev, requires_grad=True) for n in spec.sizes[1:]]
    x = WeightSpace(ws, bs, spec)
    if family(cfg.method) == "nfn":
        import nfn.layers as nfn_layers

        from ..interop import nfn as wnfn

        cls = nfn_layers.NPLinear if cfg.method == "nfn-np" else nfn_layers.HNPLinear
        layer = cls(wnfn.network_spec(graph.layout), C, C).to(dev)
        x = wnfn.to_wsfeat(x)
    else:
        layer = _ps_layer(cfg.method, spec, C).to(dev)

    def step():
        out = layer(x)
        _backward([*out.weights, *out.biases], grads)

    return step, [*ws, *bs, *layer.parameters()]


def _ps_layer(method: str, spec, C: int):
    """The ``C -> C`` parameter-sharing layer that ``method`` measures, for chain ``spec``."""
    from ..nn import MAGEP, HNPLinear, MonomialLinear, NPLinear
    from ..nn.magep import MAGEPPaper

    cls = {"np": NPLinear, "hnp": HNPLinear, "monomial": MonomialLinear, "magep": MAGEP, "magep-paper": MAGEPPaper}
    return cls[method](spec, C, C)
