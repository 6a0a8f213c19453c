"""Presets: models/gnn*.toml build GraphNFNs; unknown keys, types and values are errors naming them."""

import sys
import types
from dataclasses import fields

import pytest
import torch

import wgraph
from wgraph.config import Config
from wgraph.nn import (
    PRESET_TYPES,
    ConfigError,
    GNNConfig,
    GraphNFN,
    PresetError,
    ReadoutConfig,
    StatNNConfigError,
    available_presets,
    from_preset,
    load_preset,
)
from wgraph.nn.presets import MODELS_DIR
from wgraph.zoo import mlp


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    return wgraph.to_graph(mlp([4, 6, 3]), torch.randn(1, 4))


def write(tmp_path, text, name="p.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", ["gnn", "gnn-pna", "gnn-generalization"])
def test_shipped_presets_build_and_list_every_key(name, graph):
    cfg = load_preset(name)
    assert cfg["type"] == "gnn"
    # every hyperparameter is spelled out in the file, so the file documents the model
    assert set(cfg) - {"type"} == {f.name for f in fields(GNNConfig)}
    assert set(cfg["readout"]) == {f.name for f in fields(ReadoutConfig)}
    model = from_preset(name, graph)
    assert isinstance(model, GraphNFN)
    assert model(graph).shape == (1, cfg["out_dim"])
    assert model.config.aggr == tuple(cfg["aggr"])


def test_pna_preset_uses_three_aggregators(graph):
    assert from_preset("gnn-pna", graph).config.aggr == ("mean", "max", "std")


def test_path_and_overrides(tmp_path, graph):
    p = write(tmp_path, 'type = "gnn"\nhidden = 8\nlayers = 1\n[readout]\npool = ["max"]\n')
    model = from_preset(p, graph, out_dim=3, readout={"hidden": 5})
    assert (model.config.hidden, model.config.layers, model.config.out_dim) == (8, 1, 3)
    assert model.config.readout.pool == ("max",) and model.config.readout.hidden == 5
    assert model(graph).shape == (1, 3)
    assert from_preset(str(p), graph.layout).config.hidden == 8  # a str path and a bare Layout


@pytest.mark.parametrize(
    "text,match",
    [
        ('type = "gnn"\nhiden = 8\n', "unknown key 'hiden'"),
        ('type = "gnn"\n[readout]\npooling = ["mean"]\n', "unknown key 'readout.pooling'"),
        ('type = "gnn"\nhidden = "wide"\n', "hidden must be an integer"),
        ('type = "gnn"\nedge_updates = 1\n', "edge_updates must be true or false"),
        ('type = "gnn"\naggr = ["mean", "median"]\n', "aggr = 'median'"),
        ('type = "gnn"\nnorm = "batch"\n', "norm = 'batch'"),
        ('type = "gnn"\nbackend = "triton-someday"\n', "backend = 'triton-someday'"),
        ('type = "gnn"\nreadout = 3\n', "readout must be a table"),
        ('type = "gnn"\nlayers = -1\n', "layers must be >= 0, got -1"),
    ],
)
def test_bad_gnn_presets_name_the_problem(tmp_path, graph, text, match):
    with pytest.raises(ConfigError, match=match):
        from_preset(write(tmp_path, text), graph)


def test_unknown_type_names_value_and_known_types(tmp_path, graph):
    with pytest.raises(PresetError, match=r"unknown preset type 'transformer'.*'gnn'.*'np'"):
        from_preset(write(tmp_path, 'type = "transformer"\n'), graph)


def test_missing_type_missing_file_bad_toml(tmp_path, graph):
    with pytest.raises(PresetError, match="'type'"):
        from_preset(write(tmp_path, "hidden = 8\n"), graph)
    with pytest.raises(PresetError, match="no preset named 'nope'.*gnn-pna"):
        from_preset("nope", graph)
    with pytest.raises(PresetError, match="does not exist"):
        from_preset(tmp_path / "missing.toml", graph)
    with pytest.raises(PresetError, match="not valid TOML"):
        from_preset(write(tmp_path, "type = \n"), graph)


def test_bad_override_is_an_error(graph):
    with pytest.raises(ConfigError, match="unknown key 'width'"):
        from_preset("gnn", graph, width=3)
    with pytest.raises(PresetError, match="cannot override the preset's type"):
        from_preset("gnn", graph, type="np")


def test_parameter_sharing_types_are_delegated(tmp_path, graph, monkeypatch):
    """type != "gnn" goes to wgraph.nn.ps_models.from_config(config, layout), the whole dict."""
    calls = []
    fake = types.ModuleType("wgraph.nn.ps_models")
    fake.from_config = lambda config, layout: calls.append((config, layout)) or "built"
    monkeypatch.setitem(sys.modules, "wgraph.nn.ps_models", fake)
    assert from_preset(write(tmp_path, 'type = "hnp"\nhidden = 4\n'), graph) == "built"
    assert calls == [({"type": "hnp", "hidden": 4}, graph)]


def test_models_dir_holds_the_shipped_presets():
    assert (MODELS_DIR / "gnn.toml").is_file() and (MODELS_DIR / "gnn-pna.toml").is_file()
    assert {"gnn", "gnn-pna"} <= set(available_presets())


# ----------------------------------------------------------------------------- the registry of preset types
@pytest.mark.parametrize("name", available_presets())
def test_every_shipped_preset_builds_and_spells_out_its_type_s_keys(name, graph):
    """Each file in models/ names a registered type, lists every field of the type's config class (so the
    file documents the model), and builds a model that maps the graph to (B, out_dim)."""
    cfg = load_preset(name)
    kind = PRESET_TYPES[cfg["type"]]
    assert set(cfg) - {"type"} == {f.name for f in fields(kind.config)}
    kind.config.from_dict({k: v for k, v in cfg.items() if k != "type"})  # every value valid
    model = from_preset(name, graph.to(torch.float64)).double()
    assert model(graph.to(torch.float64)).shape == (1, cfg["out_dim"])


def test_every_preset_type_resolves_its_builder():
    for name, kind in PRESET_TYPES.items():
        assert callable(kind.builder()), name
        assert issubclass(kind.config, Config)


def test_docs_list_every_gnn_key():
    table = (MODELS_DIR.parent.parent / "docs" / "nfn.md").read_text()
    for f in fields(GNNConfig):
        if f.name != "readout":
            assert f"`{f.name}`" in table, f.name
    for f in fields(ReadoutConfig):
        assert f"`readout.{f.name}`" in table, f.name


def test_statnn_keys_are_checked():
    with pytest.raises(StatNNConfigError, match="unknown key 'width'"):
        from_preset("statnn", graph_of_mlp(), width=3)
    with pytest.raises(StatNNConfigError, match=r"dropout must be in \[0.0, 1.0\), got 1.0"):
        from_preset("statnn", graph_of_mlp(), dropout=1.0)
    with pytest.raises(StatNNConfigError, match="'layers' must be a positive integer"):
        from_preset("statnn", graph_of_mlp(), layers=0)
    with pytest.raises(StatNNConfigError, match="one architecture"):
        from_preset("statnn", [graph_of_mlp(), graph_of_mlp()])


def graph_of_mlp():
    torch.manual_seed(0)
    return wgraph.to_graph(mlp([4, 6, 3]), torch.randn(1, 4))


def test_flat_mlp_reads_every_parameter_and_sees_no_symmetry(graph):
    """``type = "mlp"``: every parameter reaches the output (a change to any one moves it), its
    per-parameter head has each tensor's shape, and, blind to the symmetries, a neuron permutation
    changes its output."""
    torch.manual_seed(0)
    g = graph.to(torch.float64)
    model = from_preset("mlp", g, out_dim=2).double()
    assert model(g).shape == (1, 2)
    sd = g.to_state_dict()
    for name in sd:
        bumped = {**sd, name: sd[name] + 0.1}
        moved = wgraph.to_graph_batch([bumped], mlp([4, 6, 3]), torch.randn(1, 4)).to(torch.float64)
        assert (model(moved) - model(g)).abs().max() > 1e-6, name
    assert (model(g.permute(wgraph.random_symmetry(g, seed=0))) - model(g)).abs().max() > 1e-6
    out = from_preset("mlp", g, head="parameters").double()(g)
    assert {n: tuple(v.shape[1:]) for n, v in out.items()} == {n: tuple(v.shape) for n, v in sd.items()}
