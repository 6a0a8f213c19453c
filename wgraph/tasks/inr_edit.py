r"""INR editing (``wgraph train --task inr-edit``): from the weights :math:`W` of an INR of image
:math:`I`, predict a weight delta :math:`\Delta` so that the edited INR :math:`f_{W + \Delta}`
represents :math:`\mathrm{edit}(I)` (the fourth task of Zhou et al., "Permutation Equivariant
Neural Functionals", 2023).

**Edits** (:data:`EDITS`, ``--edit``), on images with intensities in [0, 1]:

* ``dilate``: morphological grey dilation with a flat 3×3 structuring element,
  :math:`\mathrm{edit}(I)_{ij} = \max_{|a|, |b| \le 1} I_{i+a, j+b}` over the pixels inside the
  image (``scipy.ndimage.grey_dilation(I, size=(3, 3))``; NFN's MNIST dilation task);
* ``contrast``: :math:`\mathrm{edit}(I) = \mathrm{clamp}(1.5 (I - 0.5) + 0.5, 0, 1)`, contrast
  raised by 1.5 about mid-grey.

The target is computed from the zoo's *source* image (``image`` column, :func:`wgraph.zoo.data.images`),
not from the INR's reconstruction.

**Model** (:class:`EditModel`): a body maps the weights to one value per parameter,
:math:`u = \phi(W)`, and the delta of parameter tensor :math:`t` is :math:`\Delta_t = \sigma_t u_t`,
with :math:`\sigma_t` the standard deviation of tensor :math:`t` over the training zoo (a scalar per
tensor, so an equivariant :math:`\phi` gives an equivariant :math:`\Delta`). The body's output layer
starts scaled by :data:`INIT_SCALE`, so the first edited INR is almost the input INR. Bodies, from
the ``--model`` preset:

* ``type = "gnn"``: the graph NFN with its per-parameter head (``head = "parameters"`` is set);
* ``type = "np"`` / ``"hnp"`` (and ``monomial``, ``magep``): the NF-layer stack with one more layer
  to a single channel (:class:`~wgraph.nn.ParamSharingNFN` with ``head = "parameters"``), on
  weights standardized per tensor;
* ``type = "mlp"``: the non-equivariant baseline (:class:`~wgraph.nn.flat_mlp.FlatMLP` with
  ``head = "parameters"``), an MLP from the flattened standardized weights to the flattened delta.

**Forward** (:class:`INRRenderer`): the edited INRs run on their pixel grid with
:func:`torch.func.vmap` over :func:`torch.func.functional_call` of the zoo's own module (no loop
over networks); the model's output is the edited images ``(B, P)``, :math:`P` pixels.

**Loss and metrics** (:class:`~wgraph.tasks.spec.EditTask`): the loss of a network is the mean
squared error over its pixels,
:math:`\frac1P \lVert f_{W+\Delta}(X) - \mathrm{edit}(I) \rVert^2`; metrics ``mse`` (the mean of
it over networks, the primary metric, lower is better), ``psnr`` (mean of
:math:`10 \log_{10}(1 / \mathrm{mse})` per network) and the trivial reference ``identity_mse``: the
same error of the *unedited* INR :math:`f_W`. Targets are ``(N, 2, P)``: the edited source image and
the input INR's own image (for the reference).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TaskError
from ..graph import WeightGraph

#: Scale of the body's output layer at initialization (the first delta is this small, relative).
INIT_SCALE = 0.01


def dilate(images: torch.Tensor) -> torch.Tensor:
    """Grey dilation, flat 3×3 element, of ``(n, s, s)`` images (max over the window inside the image)."""
    return F.max_pool2d(images[:, None], 3, stride=1, padding=1)[:, 0]


def contrast(images: torch.Tensor) -> torch.Tensor:
    """``clamp(1.5 (I - 0.5) + 0.5, 0, 1)``."""
    return ((images - 0.5) * 1.5 + 0.5).clamp(0, 1)


#: The edits: name -> function of ``(n, s, s)`` images in [0, 1].
EDITS = {"dilate": dilate, "contrast": contrast}


def edit_images(images: torch.Tensor, edit: str) -> torch.Tensor:
    if edit not in EDITS:
        raise TaskError(f"unknown edit {edit!r}; known edits: {sorted(EDITS)}")
    return EDITS[edit](images)


# ----------------------------------------------------------------------------- running INRs
class INRRenderer(nn.Module):
    """The images ``(B, P)`` of B INRs of an INR zoo's architecture ``arch``, from their stacked
    parameters ``{name: (B, *shape)}``: ``vmap(functional_call(module, params, coords))`` on the
    ``P = side²`` pixel coordinates (:func:`wgraph.zoo.inr.pixel_coordinates`)."""

    def __init__(self, arch: dict):
        super().__init__()
        from ..zoo.dataset import build_arch
        from ..zoo.inr import pixel_coordinates

        pixels = arch["input_shape"][0]
        side = math.isqrt(pixels)
        if side * side != pixels or arch["input_shape"][1:] != [2]:
            raise TaskError(f"an INR zoo's input is (side², 2) pixel coordinates; this zoo's is {arch['input_shape']}")
        # Not a registered submodule: its parameters are replaced in every call and are not the model's.
        self.__dict__["template"] = build_arch(arch).eval()
        self.register_buffer("coords", pixel_coordinates(side), persistent=False)

    def forward(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        from torch.func import functional_call, vmap

        like = next(iter(params.values()))
        coords = self.coords.to(like)
        out = vmap(lambda p: functional_call(self.template, p, (coords,)))(params)  # (B, P, 1)
        return out.flatten(1)


def graph_params(graph: WeightGraph) -> dict[str, torch.Tensor]:
    """``{name: (B, *shape)}`` of every parameter of ``graph`` (differentiable views)."""
    return {p.name: graph.param(p.name) for p in graph.layout.params}


def parameter_values(out) -> dict[str, torch.Tensor]:
    """A per-parameter body's output (a WeightGraph, or already ``{name: tensor}``) as ``{name: (B, *shape)}``."""
    return graph_params(out) if isinstance(out, WeightGraph) else out


# ----------------------------------------------------------------------------- the model
class EditModel(nn.Module):
    """``body`` (weights -> one value per parameter: a WeightGraph or ``{name: tensor}``) turned
    into an INR editor: ``forward(graph)`` is the images ``(B, P)`` of the edited INRs
    :math:`W + \\sigma \\odot \\phi(W)` (see the module docstring)."""

    def __init__(self, body: nn.Module, layout, arch: dict):
        super().__init__()
        self.body = body
        self.render = INRRenderer(arch)
        self.names = [p.name for p in layout.params]
        self.register_buffer("scale", torch.ones(len(self.names)))  # sigma_t, fitted on the training zoo

    @torch.no_grad()
    def fit_normalization(self, graphs: WeightGraph) -> None:
        """The body's input statistics and the per-tensor standard deviations :math:`\\sigma_t`."""
        if hasattr(self.body, "fit_normalization") and getattr(self.body, "normalization", True) is not None:
            self.body.fit_normalization(graphs)
        for i, name in enumerate(self.names):
            std = graphs.param(name).double().std()
            self.scale[i] = std if std > 0 else 1.0

    def delta(self, graph: WeightGraph) -> dict[str, torch.Tensor]:
        """:math:`\\Delta_t = \\sigma_t \\phi(W)_t` per parameter, ``{name: (B, *shape)}``."""
        values = parameter_values(self.body(graph))
        return {n: values[n] * self.scale[i] for i, n in enumerate(self.names)}

    def edited(self, graph: WeightGraph) -> dict[str, torch.Tensor]:
        """The edited parameters :math:`W + \\Delta`, ``{name: (B, *shape)}``."""
        params = graph_params(graph)
        return {n: params[n] + d for n, d in self.delta(graph).items()}

    def forward(self, graph: WeightGraph) -> torch.Tensor:
        return self.render(self.edited(graph))


def _output_layers(body: nn.Module, kind: str) -> list[nn.Module]:
    """The modules that write a body's output (scaled by :data:`INIT_SCALE` at initialization)."""
    if kind == "gnn":
        return [body.head.edge_out, body.head.node_out]
    if kind == "mlp":
        return [body.model.mlp[-1]]
    return [body.model.out]


def build_edit_model(preset: str, layout, arch: dict) -> EditModel:
    """The :class:`EditModel` of ``preset`` (see the module docstring) for ``layout`` and the zoo's ``arch``."""
    from .models import parameter_body

    body, kind = parameter_body(preset, layout, "inr-edit")
    with torch.no_grad():
        for module in _output_layers(body, kind):
            for p in module.parameters():
                p.mul_(INIT_SCALE)
    return EditModel(body, layout, arch)
