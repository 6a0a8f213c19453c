"""Model presets: small TOML files shipped in the package's ``models/`` folder (``wgraph/models``, which
``models/`` at the repository root links to), or any path.

Every preset has a top-level ``type``. ``type = "gnn"`` builds a :class:`~wgraph.nn.GraphNFN`
from the remaining keys (those of :class:`~wgraph.nn.GNNConfig`, with a ``[readout]`` table);
the parameter-sharing types (``np``, ``hnp``, ``magep``, ``monomial``) are built by
``wgraph.nn.ps_models.from_config``; ``type = "statnn"`` builds the weight-statistics baseline
:class:`~wgraph.nn.StatNN`. Unknown keys and unknown types are errors that name them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .gnn import ConfigError, GNNConfig, GraphNFN

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Where named presets live: ``wgraph/models/``, package data (installed with the package).
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
GNN_TYPES = ("gnn",)
PS_TYPES = ("np", "hnp", "magep", "monomial")
STAT_TYPES = ("statnn",)
KNOWN_TYPES = GNN_TYPES + PS_TYPES + STAT_TYPES


class PresetError(ConfigError):
    """A preset that cannot be found, parsed, or has an unknown ``type``."""


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
        raise PresetError(f"{path}: a preset needs a top-level key 'type', one of {list(KNOWN_TYPES)}")
    return config


def from_preset(name_or_path: str | Path, layout, **overrides):
    """Build the model a preset describes for ``layout`` (a Layout, WeightGraph, or a list of them).

    ``overrides`` replace top-level keys of the preset (a ``readout={...}`` dict is merged into
    its ``[readout]`` table), e.g. ``from_preset("gnn", layout, hidden=32, out_dim=10)``.
    """
    config = load_preset(name_or_path)
    if "type" in overrides and overrides["type"] != config["type"]:
        raise PresetError(f"cannot override the preset's type {config['type']!r} with {overrides['type']!r}")
    for key, value in overrides.items():
        if key == "readout" and isinstance(value, dict) and isinstance(config.get("readout"), dict):
            config["readout"] = {**config["readout"], **value}
        else:
            config[key] = value
    kind = config["type"]
    if kind in GNN_TYPES:
        return GraphNFN(layout, GNNConfig.from_dict({k: v for k, v in config.items() if k != "type"}))
    if kind in PS_TYPES:
        from wgraph.nn.ps_models import from_config

        return from_config(config, layout)
    if kind in STAT_TYPES:
        from wgraph.nn.statnn import StatNN

        return StatNN(layout, config)
    raise PresetError(f"unknown preset type {kind!r}; known types: {list(KNOWN_TYPES)}")
