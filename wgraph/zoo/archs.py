"""Reference architectures used by zoos, the demo, docs and benchmarks."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn


def mlp(
    sizes: list[int] | tuple[int, ...] = (784, 256, 256, 10), activation: type[nn.Module] | str = nn.ReLU
) -> nn.Sequential:
    """A plain MLP ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between layers (a module
    class, or a name in :data:`ACTIVATIONS`, as zoo manifests store it)."""
    if isinstance(activation, str):
        activation = activation_class(activation)
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


def activation_class(name: str) -> type[nn.Module]:
    """``ACTIVATIONS[name]``, or a ``ValueError`` listing the names."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r}: expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def digits_cnn(channels: int = 16, classes: int = 10, activation: str = "relu") -> nn.Sequential:
    """The Small-CNN-Zoo shape for 8×8×1 inputs (scikit-learn ``digits``): three 3×3 convolutions
    with stride 2 and padding 1 (8×8 → 4×4 → 2×2 → 1×1), global average pooling, one linear layer.
    With the defaults 4,970 parameters. (:func:`small_cnn` has no padding and needs inputs of at
    least 15×15.)"""
    act = activation_class(activation)
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


class StridedCrop(nn.Module):
    """``x[..., top::stride, left::stride]``. After a stride-1 convolution it gives the windows of a
    strided convolution whose padding is uneven (TensorFlow's ``"same"``), which ``nn.Conv2d``
    cannot pad."""

    def __init__(self, top: int, left: int, stride: int):
        super().__init__()
        self.top, self.left, self.stride = int(top), int(left), int(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.top :: self.stride, self.left :: self.stride]

    def extra_repr(self) -> str:
        return f"top={self.top}, left={self.left}, stride={self.stride}"


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``"same"`` padding (before, after) of one spatial axis of length :math:`n`: the
    output has :math:`m = \\lceil n / s \\rceil` positions, the padding is
    :math:`p = \\max((m - 1)s + k - n, 0)`, :math:`\\lfloor p / 2 \\rfloor` before and the rest after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def tf_cnn(channels: list[int] | tuple[int, ...] = (1, 16, 16, 16), kernel_size: int | list[int] = 3, stride: int = 2,
           padding: str = "valid", input_size: list[int] | tuple[int, int] = (28, 28), classes: int = 10,
           activation: str = "relu") -> nn.Sequential:
    """The CNN of the Small CNN Zoo (Unterthiner et al. 2020), computing what the TensorFlow original
    computes: convolutions ``channels[i] -> channels[i + 1]`` (``kernel_size``: one int, or one per
    layer; ``stride``), each followed by ``activation``; global average pooling; a linear layer to
    ``classes`` logits. ``padding`` is TensorFlow's: ``"valid"`` (none) or ``"same"`` for inputs of
    ``input_size`` (H, W) (see :func:`tf_same_padding`); where a layer's padding is uneven, the layer is
    a stride-1 convolution followed by a :class:`StridedCrop`, which reads the same windows. Keys:
    ``conv{i}.weight`` ``(out, in, kh, kw)``, ``conv{i}.bias``, ``dense.weight``, ``dense.bias``."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r}: expected one of {sorted(ACTIVATIONS)}")
    if padding not in ("same", "valid"):
        raise ValueError(f"padding {padding!r}: expected 'same' or 'valid'")
    n = len(channels) - 1
    kernels = [kernel_size] * n if isinstance(kernel_size, int) else list(kernel_size)
    if n < 1 or len(kernels) != n:
        raise ValueError(f"{n} convolutions (channels {list(channels)}) need {n} kernel sizes, got {kernel_size}")
    h, w = input_size
    layers: dict[str, nn.Module] = {}
    for i, (c_in, c_out, k) in enumerate(zip(channels[:-1], channels[1:], kernels)):
        if padding == "valid":
            layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, k, stride=stride)
            h, w = (h - k) // stride + 1, (w - k) // stride + 1
        else:
            (top, bottom), (left, right) = tf_same_padding(h, k, stride), tf_same_padding(w, k, stride)
            if (top, left) == (bottom, right):
                layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, k, stride=stride, padding=(top, left))
            elif k % 2:
                layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, k, padding=k // 2)
                layers[f"crop{i}"] = StridedCrop(k // 2 - top, k // 2 - left, stride)
            else:
                raise ValueError(f"layer {i}: uneven 'same' padding with an even kernel size {k} is not supported")
            h, w = -(-h // stride), -(-w // stride)
        if min(h, w) < 1:
            raise ValueError(f"layer {i}: an input of {list(input_size)} leaves no spatial positions")
        layers[f"act{i}"] = ACTIVATIONS[activation]()
    layers |= {"pool": nn.AdaptiveAvgPool2d(1), "flatten": nn.Flatten(), "dense": nn.Linear(channels[-1], classes)}
    return nn.Sequential(OrderedDict(layers))


#: Keyword fragments of model factories that would load weights (a manifest builds architectures only).
_LOADS_WEIGHTS = ("weight", "pretrained", "checkpoint", "file", "url", "path")


def _architecture_only(model: nn.Module) -> nn.Module:
    """Drop BatchNorm's ``num_batches_tracked`` step counters: the zoo format stores floating-point
    tensors, and the counter changes the function only when training with ``momentum=None``. A state
    dict loaded into the model may still hold them; they are ignored."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.num_batches_tracked is not None:
            m.num_batches_tracked = None
            m.register_load_state_dict_pre_hook(_ignore_step_counter)
    return model


def _ignore_step_counter(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    state_dict.pop(prefix + "num_batches_tracked", None)  # BatchNorm adds it to a state dict without metadata


def _check_factory_kwargs(library: str, kwargs: dict) -> None:
    bad = sorted(k for k in kwargs if any(w in k.lower() for w in _LOADS_WEIGHTS))
    if bad:
        raise ValueError(f"{library} arguments {bad} would load weights; a zoo names an architecture only")


def torchvision_model(model: str, **kwargs) -> nn.Module:
    """``torchvision.models.get_model(model, weights=None, **kwargs)``, randomly initialized (nothing
    is downloaded), without BatchNorm step counters."""
    try:
        import torchvision
    except ImportError:
        raise ValueError("torchvision is not installed (pip install 'wgraph[vision]')") from None
    if model not in torchvision.models.list_models():
        raise ValueError(f"torchvision has no model {model!r}")
    _check_factory_kwargs("torchvision", kwargs)
    return _architecture_only(torchvision.models.get_model(model, weights=None, **kwargs))


def timm_model(model: str, **kwargs) -> nn.Module:
    """``timm.create_model(model, pretrained=False, **kwargs)`` (nothing is downloaded), without
    BatchNorm step counters."""
    try:
        import timm
    except ImportError:
        raise ValueError("timm is not installed (pip install timm)") from None
    _check_factory_kwargs("timm", kwargs)
    return _architecture_only(timm.create_model(model, pretrained=False, **kwargs))


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


class ShiftedSequential(nn.Sequential):
    """``nn.Sequential`` whose output is shifted by a constant: ``f(x) + offset`` (the INRs of
    DWSNets and neural-graphs add 0.5 to the last layer's output)."""

    def __init__(self, *layers: nn.Module, offset: float = 0.0):
        super().__init__(*layers)
        self.offset = float(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.offset

    def extra_repr(self) -> str:
        return f"offset={self.offset}"


def siren(sizes: list[int] | tuple[int, ...] = (2, 32, 32, 1), w0: float = 30.0, offset: float = 0.0) -> nn.Sequential:
    """A SIREN ``sizes[0] -> ... -> sizes[-1]``: ``Linear`` layers with :class:`Sine` (``w0``) between
    them, the last layer linear. The layers are created with the SIREN initialization: first layer
    ``U(-1/n, 1/n)``, later layers ``U(-√(6/n)/w0, √(6/n)/w0)`` (``n`` = fan-in), biases likewise.
    ``offset``: a constant added to the output, :math:`f(x) + c` (a :class:`ShiftedSequential`;
    the state dict is the same)."""
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
    return ShiftedSequential(*layers, offset=offset) if offset else nn.Sequential(*layers)


class _PatchEmbedding(nn.Module):
    def __init__(self, channels: int, dim: int, image_size: int, patch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, dim, patch, stride=patch)
        # fixed (requires_grad=False) in the published model: its checkpoints hold the sinusoidal table
        self.pos_embedding = nn.Parameter(torch.zeros((image_size // patch) ** 2, dim), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1) + self.pos_embedding


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.queries, self.keys, self.values = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.out_projection = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape
        q, k, v = (f(x).reshape(b, n, self.heads, e // self.heads).permute(0, 2, 1, 3)
                   for f in (self.queries, self.keys, self.values))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out_projection(out.permute(0, 2, 1, 3).reshape(b, n, e))


class _EncoderBlock(nn.Module):
    """Attention, then a two-layer MLP, each after a LayerNorm without parameters and, as published,
    without a residual connection."""

    def __init__(self, dim: int, heads: int, forward_mul: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attention = _SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        hidden = dim * forward_mul
        self.fc1, self.activation, self.fc2 = nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(self.norm2(self.attention(self.norm1(x))))))


class _TokenMeanClassifier(nn.Module):
    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.fc1, self.activation, self.fc2 = nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x.mean(dim=1))))


class SmallViT(nn.Module):
    """The vision transformer of the Small Transformer Zoo's MNIST-Transformers (Tran et al. 2025,
    Transformer-NFN): patch embedding (a strided convolution plus a fixed position table), encoder
    blocks, a final LayerNorm, a classifier on the mean token. Its state dict has the published
    names (``embedding.conv1.*``, ``encoder.{i}.attention.queries.weight``, ``encoder.{i}.fc1.*``,
    ``classifier.fc2.*``, ...); attention is :math:`\\mathrm{softmax}(Q_h K_h^T / \\sqrt{d_h}) V_h`
    per head, computed by ``scaled_dot_product_attention``."""

    def __init__(self, n_channels: int = 1, embed_dim: int = 32, n_layers: int = 2, n_heads: int = 2,
                 forward_mul: int = 2, image_size: int = 28, patch_size: int = 4, n_classes: int = 10):
        super().__init__()
        if embed_dim % n_heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of n_heads {n_heads}")
        self.embedding = _PatchEmbedding(n_channels, embed_dim, image_size, patch_size)
        self.encoder = nn.ModuleList(_EncoderBlock(embed_dim, n_heads, forward_mul) for _ in range(n_layers))
        self.norm = nn.LayerNorm(embed_dim, elementwise_affine=False)
        self.classifier = _TokenMeanClassifier(embed_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embedding(x)
        for block in self.encoder:
            x = block(x)
        return self.classifier(self.norm(x))


#: Builders a zoo manifest may name (``arch.name``), called with JSON keyword arguments. A manifest
#: is untrusted input: it can only pick from this table, never import code. Add your own with
#: :func:`register_arch`.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "digits_cnn": digits_cnn,
    "siren": siren,
    "small_cnn": small_cnn,
    "resnet_mlp": resnet_mlp,
    "tf_cnn": tf_cnn,
    "small_vit": SmallViT,
    "torchvision": torchvision_model,
    "timm": timm_model,
}


def register_arch(name: str, builder: Callable[..., nn.Module]) -> None:
    """Make ``builder`` available to zoo manifests as ``arch.name == name``."""
    ARCHITECTURES[name] = builder
