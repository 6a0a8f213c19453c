"""``canonicalize_zoo`` / ``wgraph zoo canonicalize``: a zoo copy with every attention head in canonical
GL form (same functions, GL orbits collapsed), written resumably by the zoo writer."""

from __future__ import annotations

import pytest
import torch
from test_transformer_nfn import _trained_like

import wgraph
from wgraph.attention_symmetry import apply_gl, random_gl
from wgraph.cli import main
from wgraph.errors import ZooError
from wgraph.zoo.canonical import canonicalize_zoo
from wgraph.zoo.store import ZooWriter, load_zoo
from wgraph.zoo.transformer import RowTransformer, TransformerZooConfig

COLUMNS = {"run": "int", "checkpoint": "int", "test_acc": "float"}
ATTENTION = (".attn.q.", ".attn.k.", ".attn.v.", ".attn.o.")


def _network(zoo, i: int) -> RowTransformer:
    """Network ``i`` of a float64 zoo, in float64 (``Zoo.network`` builds a float32 module)."""
    m = RowTransformer(**zoo.arch["kwargs"]).double()
    m.load_state_dict({k: v[i] for k, v in zoo.weights.items()})
    return m


def _write(path, state_dicts: list[dict], shard_size: int = 2, residual: bool = False) -> None:
    """A float64 transformer zoo of ``state_dicts``, ``shard_size`` networks per shard."""
    arch = TransformerZooConfig(dim=8, residual=residual).arch()
    with ZooWriter(path, kind="transformer", arch=arch, columns=COLUMNS, config={"test": 1}) as w:
        for i in range(0, len(state_dicts), shard_size):
            part = state_dicts[i : i + shard_size]
            weights = {k: torch.stack([sd[k] for sd in part]) for k in part[0]}
            table = {"run": list(range(i, i + len(part))), "checkpoint": [0] * len(part), "test_acc": [0.5] * len(part)}
            w.write_shard(i // shard_size, weights, table)
        w.finish()


@pytest.mark.parametrize("residual", [False, True])
def test_canonical_zoo_keeps_functions_and_table_and_collapses_gl_orbits(tmp_path, residual):
    models = _trained_like(residual, n=4)
    _write(tmp_path / "raw", [m.state_dict() for m in models], residual=residual)
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    g = wgraph.to_graph_batch([m.state_dict() for m in models], models[0], x)
    moved = apply_gl(g, random_gl(g.layout, 3, batch_size=len(models)))  # per-network GL(d_k) x GL(d_v) maps
    _write(tmp_path / "moved", [moved.to_state_dict(i) for i in range(len(models))], residual=residual)

    raw, canon = load_zoo(tmp_path / "raw"), canonicalize_zoo(tmp_path / "raw", tmp_path / "canon")
    assert len(canon) == len(raw) and canon.config["test"] == 1
    assert all((canon.table[c] == raw.table[c]).all() for c in COLUMNS)
    xs = torch.randn(32, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for i in range(len(models)):
        out = _network(raw, i)(xs)
        assert ((_network(canon, i)(xs) - out).norm() / out.norm()).item() < 1e-10
    for k, v in raw.weights.items():  # attention factors replaced, everything else copied
        changed = (canon.weights[k] - v).abs().max().item()
        assert changed > 1e-2 if any(a in k for a in ATTENTION) else changed == 0, k
    assert any((moved.edges[i] - g.edges[i]).abs().max() > 1e-2 for i in range(len(g.edges)))
    from_moved = canonicalize_zoo(tmp_path / "moved", tmp_path / "moved-canon")
    for k, v in canon.weights.items():
        torch.testing.assert_close(from_moved.weights[k], v, rtol=0, atol=1e-8)


def test_canonicalize_resumes_and_refuses_bad_input(tmp_path):
    _write(tmp_path / "raw", [m.state_dict() for m in _trained_like(False, n=4)])
    first = canonicalize_zoo(tmp_path / "raw", tmp_path / "canon")
    shard = tmp_path / "canon" / "shard-00001.safetensors"
    shard.unlink()  # an interrupted copy: the manifest lists a shard that is gone
    stamp = (tmp_path / "canon" / "shard-00000.safetensors").stat().st_mtime_ns
    with pytest.warns(UserWarning):
        again = canonicalize_zoo(tmp_path / "raw", tmp_path / "canon")
    assert shard.exists() and (tmp_path / "canon" / "shard-00000.safetensors").stat().st_mtime_ns == stamp
    assert all(torch.equal(again.weights[k], v) for k, v in first.weights.items())

    _write(tmp_path / "other", [m.state_dict() for m in _trained_like(False, n=2)])
    with pytest.raises(ZooError, match="different config"):  # a copy of another source is not resumed
        canonicalize_zoo(tmp_path / "other", tmp_path / "canon")
    with pytest.raises(ZooError, match="another directory"):
        canonicalize_zoo(tmp_path / "raw", tmp_path / "raw")
    siren = {"name": "siren", "kwargs": {"sizes": [2, 4, 1]}, "input_shape": [1, 2]}
    with ZooWriter(tmp_path / "siren", kind="inr", arch=siren, columns=COLUMNS) as w:
        sd = wgraph.zoo.siren([2, 4, 1]).state_dict()
        w.write_shard(0, {k: v[None] for k, v in sd.items()}, {"run": [0], "checkpoint": [0], "test_acc": [1.0]})
        w.finish()
    with pytest.raises(ZooError, match="no attention"):
        canonicalize_zoo(tmp_path / "siren", tmp_path / "siren-canon")


def test_cli_canonicalize(tmp_path, capsys):
    _write(tmp_path / "raw", [m.state_dict() for m in _trained_like(False, n=2)])
    assert main(["zoo", "canonicalize", str(tmp_path / "raw"), str(tmp_path / "canon"), "-q"]) == 0
    assert "wrote 2 canonicalized networks" in capsys.readouterr().out
    assert len(load_zoo(tmp_path / "canon")) == 2
