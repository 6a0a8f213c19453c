"""Reference architectures used by zoos, the demo, docs and benchmarks."""

from __future__ import annotations

import torch
from torch import nn


def mlp(sizes: list[int] | tuple[int, ...] = (784, 256, 256, 10), activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
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
