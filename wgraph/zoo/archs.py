"""Reference architectures used by zoos, the demo, docs and benchmarks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def mlp(
    sizes: list[int] | tuple[int, ...] = (784, 256, 256, 10), activation: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    """A plain MLP ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between layers."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def small_cnn(in_channels: int = 1, channels: int = 16, classes: int = 10) -> nn.Sequential:
    """The Small-CNN-Zoo architecture (Unterthiner et al. 2020): 3 conv layers, global average
    pooling, one linear layer; with the defaults about 5k parameters."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, stride=2),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, stride=2),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, classes),
    )


class ResidualMLP(nn.Module):
    """An MLP with residual blocks ``h = h + f(h)``: all blocks share one neuron space."""

    def __init__(self, d_in: int = 64, width: int = 32, depth: int = 3, d_out: int = 10):
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(depth))
        self.head = nn.Linear(width, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x.flatten(1)))
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


def resnet_mlp(d_in: int = 64, width: int = 32, depth: int = 3, d_out: int = 10) -> ResidualMLP:
    return ResidualMLP(d_in, width, depth, d_out)


#: Activations a :func:`digits_cnn` may use, by the name zoo manifests store.
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}


def digits_cnn(channels: int = 16, classes: int = 10, activation: str = "relu") -> nn.Sequential:
    """The Small-CNN-Zoo shape for 8×8×1 inputs (scikit-learn ``digits``): three 3×3 convolutions
    with stride 2 and padding 1 (8×8 → 4×4 → 2×2 → 1×1), global average pooling, one linear layer.
    With the defaults 4,970 parameters. (:func:`small_cnn` has no padding and needs inputs of at
    least 15×15.)"""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r}: expected one of {sorted(ACTIVATIONS)}")
    act = ACTIVATIONS[activation]
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, stride=2, padding=1),
        act(),
        nn.Conv2d(channels, channels, 3, stride=2, padding=1),
        act(),
        nn.Conv2d(channels, channels, 3, stride=2, padding=1),
        act(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, classes),
    )


class Sine(nn.Module):
    """``sin(w0 · x)``, the SIREN activation (Sitzmann et al. 2020). ``w0`` is a constant, not a
    parameter: the state dict holds only the linear layers' weights."""

    def __init__(self, w0: float = 30.0):
        super().__init__()
        self.w0 = float(w0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"


def siren(sizes: list[int] | tuple[int, ...] = (2, 32, 32, 1), w0: float = 30.0) -> nn.Sequential:
    """A SIREN ``sizes[0] -> ... -> sizes[-1]``: ``Linear`` layers with :class:`Sine` (``w0``) between
    them, the last layer linear. The layers are created with the SIREN initialization: first layer
    ``U(-1/n, 1/n)``, later layers ``U(-√(6/n)/w0, √(6/n)/w0)`` (``n`` = fan-in), biases likewise."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b)
        bound = 1 / a if i == 0 else (6 / a) ** 0.5 / w0
        with torch.no_grad():
            lin.weight.uniform_(-bound, bound)
            lin.bias.uniform_(-bound, bound)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(Sine(w0))
    return nn.Sequential(*layers)


#: Builders a zoo manifest may name (``arch.name``), called with JSON keyword arguments. A manifest
#: is untrusted input: it can only pick from this table, never import code. Add your own with
#: :func:`register_arch`.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "digits_cnn": digits_cnn,
    "siren": siren,
    "small_cnn": small_cnn,
    "resnet_mlp": resnet_mlp,
}


def register_arch(name: str, builder: Callable[..., nn.Module]) -> None:
    """Make ``builder`` available to zoo manifests as ``arch.name == name``."""
    ARCHITECTURES[name] = builder
