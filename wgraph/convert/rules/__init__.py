"""Per-op conversion rules, one module per op family, in reading order:

* :mod:`.registry`: how a rule is registered and looked up, and what a registration declares
  (ATen aliases, scaling behaviour, parameter features, merge labels, pooled axes);
* :mod:`.parametric`: Linear, convolutions, their functional forms, ``x @ W``, embeddings, PReLU;
* :mod:`.normalization`: BatchNorm, InstanceNorm, GroupNorm, LayerNorm, RMSNorm;
* :mod:`.pointwise`: activations, dropout, arithmetic, residual additions and gates;
* :mod:`.pooling`: pooling and reductions over spatial or token axes;
* :mod:`.shape`: reshapes, transposes, broadcasting, indexing, concatenation, splits;
* :mod:`.attention`: ``nn.MultiheadAttention`` and ``scaled_dot_product_attention``;
* :mod:`.torchvision_ops`: torchvision's Swin and stochastic-depth functions (registered lazily).
* :mod:`.timm_ops`: timm's attention-mask helper and window rearrangements (registered lazily).

A rule that ``torch.export`` graphs need names its ATen ops in its own registration (``aten=``);
rules for ATen ops without an fx-level twin (``addmm``, ``embedding``, ``select`` / ``slice``)
live with their family. Importing this package registers every rule in :data:`REGISTRY`.
"""

from . import attention, normalization, parametric, pointwise, pooling, shape, timm_ops, torchvision_ops  # noqa: F401
from .registry import KINDS, REGISTRY, SCALINGS, Declared, Op, Registry, Rule, register, supported_ops

__all__ = ["REGISTRY", "Registry", "Declared", "Op", "Rule", "register", "supported_ops", "SCALINGS", "KINDS"]
