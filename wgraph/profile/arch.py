"""Architectures to profile: spec strings, their weight graphs, and random batches of them."""

from __future__ import annotations

from pathlib import Path

from ..errors import SpecError
from .config import ProfileError

ARCH_HELP = (
    "mlp:784,256,256,10 | siren:2,32,32,1 | cnn:CHANNELS (Small-CNN-Zoo CNN, 1x28x28) | torchvision:NAME | "
    "package.module:factory | a zoo directory"
)


def resolve_arch(spec: str, input_shape: tuple[int, ...] | None = None):
    """``(model, example_input)`` for an architecture spec (see :data:`ARCH_HELP`)."""
    import torch

    from ..zoo import mlp, small_cnn

    if spec.startswith(("mlp:", "siren:")):
        kind, _, sizes = spec.partition(":")
        try:
            widths = tuple(int(s) for s in sizes.split(","))
        except ValueError:
            raise ProfileError(f"{spec!r}: expected comma-separated layer sizes, e.g. mlp:784,256,256,10") from None
        # the activation does not change the weight space: tanh stands in for a SIREN's sine
        return mlp(widths, torch.nn.Tanh if kind == "siren" else torch.nn.ReLU), torch.randn(1, widths[0])
    if spec.startswith("cnn:"):
        return small_cnn(channels=int(spec[4:])), torch.randn(1, 1, 28, 28)
    if Path(spec).is_dir():
        from ..zoo import load_zoo

        zoo = load_zoo(spec)
        return zoo.model(), zoo.example_input()
    from ..convert.spec import resolve_spec

    try:
        model = resolve_spec(spec)
    except SpecError as e:
        raise ProfileError(f"architecture {spec!r} does not resolve ({e}); expected {ARCH_HELP}") from None
    if input_shape is None:
        if isinstance(getattr(model, "example_input", None), torch.Tensor):
            return model, model.example_input
        if not spec.startswith("torchvision:"):
            raise ProfileError(f"{spec}: pass an input shape (--input-shape 1,3,224,224)")
        input_shape = (1, 3, 224, 224)
    return model, torch.randn(input_shape)


def graph_of(spec: str, input_shape=None):
    """One network of the architecture as a :class:`~wgraph.graph.WeightGraph` (converted at each call:
    callers that need it several times keep it)."""
    from ..convert import to_graph

    model, x = resolve_arch(spec, input_shape)
    return to_graph(model.eval(), x)


def layout_of(spec: str, input_shape=None):
    """The architecture's :class:`~wgraph.graph.Layout`."""
    return graph_of(spec, input_shape).layout


def random_batch(arch, batch: int, input_shape=None, scale: float = 0.1):
    r"""``batch`` networks of the architecture with i.i.d. :math:`\mathcal{N}(0, \sigma^2)` weights and node
    values, :math:`\sigma` = ``scale``. ``arch``: a spec string, or a WeightGraph of one network of it."""
    import torch

    from ..graph import WeightGraph

    one = arch if isinstance(arch, WeightGraph) else graph_of(arch, input_shape)
    g = WeightGraph.cat([one] * batch)
    edges = [None if e is None else torch.randn_like(e) * scale for e in g.edges]
    return WeightGraph(g.layout, torch.randn_like(g.nodes) * scale, edges, g.extras)


def network_size(layout) -> int:
    """Parameters of one network (the elements its weight graph stores)."""
    return layout.num_params
