"""Model presets: small TOML files shipped in the package's ``models/`` folder (``wgraph/models``, which
``models/`` at the repository root links to), or any path.

Every preset has a top-level ``type``, a name in :data:`PRESET_TYPES`, the registry of the models a
preset can describe: per type, its configuration class (:mod:`wgraph.nn.configs`: the keys the file
may hold, with their defaults and rules) and the function that builds the model. ``gnn`` builds a
:class:`~wgraph.nn.GraphNFN` (keys of :class:`~wgraph.nn.GNNConfig`, with a ``[readout]`` table),
``np``, ``hnp``, ``magep`` and ``monomial`` a :class:`~wgraph.nn.ParamSharingNFN`, ``statnn`` the
weight-statistics baseline :class:`~wgraph.nn.StatNN`, ``transformer-nfn`` a
:class:`~wgraph.nn.transformer_nfn.TransformerNFN`, ``mlp`` the flat baseline
:class:`~wgraph.nn.flat_mlp.FlatMLP`. Unknown keys and unknown types are errors
that name them.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError
from .configs import GNNConfig, HNPConfig, MAGEPConfig, MonomialConfig, NPConfig, StatNNConfig
from .flat_mlp import FlatMLPConfig
from .transformer_nfn import TransformerNFNConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Where named presets live: ``wgraph/models/``, package data (installed with the package).
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


class PresetError(ConfigError):
    """A preset that cannot be found, parsed, or has an unknown ``type``."""


@dataclass(frozen=True)
class PresetType:
    """A kind of model a preset can describe.

    ``config``: its configuration class (the preset's keys but ``type``). ``build``:
    ``"module:function"``, the function ``function(config, layout)`` that builds the model from the
    parsed preset (a dict, ``type`` included) for a Layout, WeightGraph or list of them. It is
    named rather than imported: the model modules import this one, and a model's module is loaded
    when a preset of its type is built.
    """

    config: type[Config]
    build: str

    def builder(self):
        module, name = self.build.split(":")
        return getattr(importlib.import_module(module), name)


#: Every preset ``type``: its configuration class and builder.
PRESET_TYPES: dict[str, PresetType] = {
    "gnn": PresetType(GNNConfig, "wgraph.nn.gnn:from_config"),
    "np": PresetType(NPConfig, "wgraph.nn.ps_models:from_config"),
    "hnp": PresetType(HNPConfig, "wgraph.nn.ps_models:from_config"),
    "monomial": PresetType(MonomialConfig, "wgraph.nn.ps_models:from_config"),
    "magep": PresetType(MAGEPConfig, "wgraph.nn.ps_models:from_config"),
    "statnn": PresetType(StatNNConfig, "wgraph.nn.statnn:from_config"),
    "transformer-nfn": PresetType(TransformerNFNConfig, "wgraph.nn.transformer_nfn:from_config"),
    "mlp": PresetType(FlatMLPConfig, "wgraph.nn.flat_mlp:from_config"),
}


def available_presets() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.toml"))


def preset_path(name_or_path: str | Path) -> Path:
    """The file of a preset: a name in ``models/`` (``"gnn"``, ``"gnn-pna"``) or a path."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or len(p.parts) > 1:
        if not p.is_file():
            raise PresetError(f"preset file {p} does not exist")
        return p
    f = MODELS_DIR / f"{name_or_path}.toml"
    if not f.is_file():
        raise PresetError(f"no preset named {str(name_or_path)!r}; available: {available_presets()} (or give a path)")
    return f


def load_preset(name_or_path: str | Path) -> dict[str, Any]:
    """The parsed preset as a dict (it must have a ``type``)."""
    path = preset_path(name_or_path)
    try:
        config = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"{path}: not valid TOML ({e})") from None
    if "type" not in config:
        raise PresetError(f"{path}: a preset needs a top-level key 'type', one of {list(PRESET_TYPES)}")
    return config


def preset_type(kind: str) -> PresetType:
    """The registry entry of preset type ``kind``."""
    if kind not in PRESET_TYPES:
        raise PresetError(f"unknown preset type {kind!r}; known types: {list(PRESET_TYPES)}")
    return PRESET_TYPES[kind]


def typed_config(config: dict[str, Any]) -> Config:
    """The configuration object of a parsed preset: its ``type``'s class, from the other keys."""
    rest = {k: v for k, v in config.items() if k != "type"}
    return preset_type(config.get("type")).config.from_dict(rest)


def resolve_preset(name_or_path: str | Path, **overrides) -> dict[str, Any]:
    """The parsed preset with ``overrides`` applied: they replace top-level keys, and a dict for a
    table (``readout={...}``) changes only the keys it names."""
    config = load_preset(name_or_path)
    if "type" in overrides and overrides["type"] != config["type"]:
        raise PresetError(f"cannot override the preset's type {config['type']!r} with {overrides['type']!r}")
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def from_preset(name_or_path: str | Path, layout, **overrides):
    """Build the model a preset describes for ``layout`` (a Layout, WeightGraph, or a list of them).

    ``overrides`` replace top-level keys of the preset (a ``readout={...}`` dict is merged into
    its ``[readout]`` table), e.g. ``from_preset("gnn", layout, hidden=32, out_dim=10)``.
    """
    config = resolve_preset(name_or_path, **overrides)
    return preset_type(config["type"]).builder()(config, layout)
