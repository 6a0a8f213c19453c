"""Model zoos: reference architectures (:mod:`.archs`); generation and storage come later."""

from .archs import mlp, resnet_mlp, small_cnn

__all__ = ["mlp", "resnet_mlp", "small_cnn"]
