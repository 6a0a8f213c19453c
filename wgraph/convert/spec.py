"""Resolve model SPECs of the command line and read checkpoints without unpickling.

SPEC is ``torchvision:NAME`` (a torchvision model, randomly initialized; nothing is downloaded)
or ``package.module:factory`` (a callable returning an ``nn.Module``, or an ``nn.Module`` class).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from ..errors import FileFormatError, SpecError


def resolve_spec(spec: str) -> nn.Module:
    if ":" not in spec:
        raise SpecError(f"model SPEC {spec!r} must be 'torchvision:NAME' or 'package.module:factory'")
    mod_name, _, attr = spec.partition(":")
    if mod_name == "torchvision":
        try:
            import torchvision
        except ImportError:
            raise SpecError(f"{spec!r}: torchvision is not installed (pip install 'wgraph[vision]')") from None
        names = torchvision.models.list_models()
        if attr not in names:
            close = [n for n in names if attr.lower()[:4] in n][:8]
            similar = f"; similar: {', '.join(close)}" if close else ""
            raise SpecError(f"{spec!r}: torchvision has no model {attr!r}{similar}")
        return torchvision.models.get_model(attr, weights=None)
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise SpecError(f"{spec!r}: cannot import module {mod_name!r} ({e})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{spec!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    model = obj if isinstance(obj, nn.Module) else obj() if callable(obj) else None
    if not isinstance(model, nn.Module):
        raise SpecError(f"{spec!r}: {attr!r} did not give a torch.nn.Module (got {type(model).__name__})")
    return model


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"checkpoint {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors/torch raise many types for corrupt or unsafe files
        raise FileFormatError(f"checkpoint {path}: cannot be read safely ({type(e).__name__}: {e})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise FileFormatError(f"checkpoint {path}: expected a mapping of parameter names to tensors")
    return sd


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise SpecError(f"input shape {text!r} must be comma-separated integers, e.g. 1,3,224,224") from None
    if not shape or any(s <= 0 for s in shape):
        raise SpecError(f"input shape {text!r} must be positive integers, e.g. 1,3,224,224")
    return shape
