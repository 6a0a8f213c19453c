"""wgraph.profile: isolated measurements, the reasons a method cannot run, the CLI's table, CSV and plots."""

import csv
import json
import os
import subprocess
import sys

import pytest

from wgraph.profile import (
    MEMORY_ENV,
    Config,
    ProfileError,
    layout_of,
    measure,
    plot,
    resolve_arch,
    run_isolated,
    table,
    unsupported_reason,
)

ARCH = "mlp:12,8,8,3"


@pytest.mark.parametrize("method", ["gnn-fused", "gnn-reference", "np", "hnp", "magep"])
@pytest.mark.parametrize("scope", ["layer", "model"])
def test_measure_in_process(method, scope):
    r = measure(Config(ARCH, 2, 4, method, scope=scope, layers=2, reps=1))
    assert r["time_s"] > 0 and r["reps"] > 1  # steps of milliseconds: the best of many, not of `reps`
    assert r["step_mb"] >= 0 and r["total_mb"] >= r["step_mb"] - 1


def test_isolated_run_sees_the_step_memory():
    """A step that allocates ~64 MB more must show it: materializing reference vs fused on a layer
    whose (B, out, in, H) message tensor is 8 x 64 x 64 x 64 floats = 8 MB per intermediate."""
    recs = {m: run_isolated(Config("mlp:64,64,64", 8, 64, m)) for m in ("gnn-reference", "gnn-fused")}
    assert all(r["status"] == "ok" for r in recs.values()), recs
    assert recs["gnn-reference"]["step_mb"] > recs["gnn-fused"]["step_mb"] + 8


def test_unrepresentable_architectures_are_listed_with_the_reason():
    arch = "wgraph.zoo.archs:resnet_mlp"  # residual connections: not a chain of layers
    layout = layout_of(arch, (1, 64))
    assert "not a chain of layers" in unsupported_reason(Config(arch, 1, 4, "np"), layout)
    assert unsupported_reason(Config(arch, 1, 4, "gnn-fused"), layout) is None
    assert "CUDA" in unsupported_reason(Config(arch, 1, 4, "gnn-triton"), layout)
    rec = run_isolated(Config(arch, 1, 4, "hnp", input_shape=(1, 64)))
    assert rec["status"].startswith("n/a: this layout is not a chain of layers")
    for scope in ("layer", "model"):  # the graph NFN measures what NP cannot represent
        cfg = Config(arch, 2, 4, "gnn-fused", scope=scope, layers=2, reps=1, input_shape=(1, 64))
        assert measure(cfg)["time_s"] > 0


def test_the_profiler_asks_the_models_whether_they_read_a_layout(monkeypatch):
    """``unsupported_reason`` keeps only what is about the profiler; the rest is the model's ``supports``."""
    from wgraph.nn import GraphNFN, ParamSharingNFN, Support
    from wgraph.profile.methods import NFN_INSTALLED, NFN_METHODS

    layout = layout_of(ARCH)
    for method in ("gnn-fused", "np", "magep"):
        assert unsupported_reason(Config(ARCH, 1, 4, method), layout) is None
    monkeypatch.setattr(GraphNFN, "supports", classmethod(lambda cls, lay: Support(False, "no graph NFN here")))
    monkeypatch.setattr(ParamSharingNFN, "supports", classmethod(lambda cls, lay: Support(False, "no chain here")))
    assert unsupported_reason(Config(ARCH, 1, 4, "gnn-fused"), layout) == "no graph NFN here"
    for method in ("np", "hnp", "monomial", "magep", *(NFN_METHODS if NFN_INSTALLED else ())):
        assert unsupported_reason(Config(ARCH, 1, 4, method), layout) == "no chain here"
    # what is the profiler's own comes first: the device a backend runs on, nfn's scope
    assert "CUDA" in unsupported_reason(Config(ARCH, 1, 4, "gnn-triton"), layout)
    assert "layer scope only" in unsupported_reason(Config(ARCH, 1, 4, "nfn-hnp", scope="model"), layout)


def test_memory_cap_and_bad_requests():
    rec = run_isolated(Config(ARCH, 2, 4, "gnn-reference"), mem_cap_gb=1e-9)
    assert rec["status"].startswith("skipped: estimated")
    with pytest.raises(ProfileError, match="unknown method 'gnn-magic'"):
        run_isolated(Config(ARCH, 1, 4, "gnn-magic"))
    with pytest.raises(ProfileError, match="does not resolve"):
        resolve_arch("nonexistent_pkg_xyz:factory")
    with pytest.raises(ProfileError, match="comma-separated layer sizes"):
        resolve_arch("mlp:a,b")


def test_cli_writes_table_csv_and_plots(tmp_path, capsys):
    from wgraph.cli import main

    out = tmp_path / "prof"
    methods = "gnn-fused,gnn-triton"
    code = main(["profile", "--arch", ARCH, "--batch", "2", "--width", "4,8", "--methods", methods, "-o", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "| mlp:12,8,8,3 | layer | 2 | 4 | gnn-fused |" in text and "n/a: the triton backend runs on CUDA" in text
    rows = list(csv.DictReader(open(out / "profile.csv")))
    assert len(rows) == 4 and {r["method"] for r in rows} == {"gnn-fused", "gnn-triton"}
    assert len(json.loads((out / "profile.json").read_text())) == 4
    png = (out / "profile_width.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 10_000


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cli_refuses_cuda_without_a_device(tmp_path, capsys):
    """Without CUDA, --device cuda is refused before anything runs (it marked every configuration
    failed and wrote empty results)."""
    from wgraph.cli import main

    out = tmp_path / "prof"
    code = main(["profile", "--arch", ARCH, "--device", "cuda", "-q", "-o", str(out)])
    assert code == 2 and "no CUDA device is available" in capsys.readouterr().err
    assert not out.exists()


def _rec(method, width, time_s, step_mb):
    config = {"arch": ARCH, "scope": "layer", "batch": 2, "width": width, "method": method, "device": "cpu"}
    measured = {"time_s": time_s, "step_mb": step_mb, "total_mb": step_mb + 5, "status": "ok"}
    return {**config, "threads": 1, "params_per_net": 155, **measured}


def test_table_ratios_and_plots(tmp_path):
    recs = [_rec("np", 4, 2.0, 10.0), _rec("gnn-fused", 4, 1.0, 2.5), {**_rec("hnp", 4, 0, 0), "status": "skipped: x"}]
    lines = table(recs).splitlines()
    assert lines[2].endswith("| 1.00x | 1.00x |")  # the first method is the reference of its group
    assert lines[3].endswith("| 0.50x | 0.25x |") and "skipped: x" in lines[4]
    assert plot(recs, tmp_path / "p.png") is None  # one width: nothing to draw against
    recs += [_rec("np", 8, 4.0, 20.0), _rec("gnn-fused", 8, 1.5, 3.0)]
    assert plot(recs, tmp_path / "w.png", x="width") == tmp_path / "w.png"
    assert plot(recs, tmp_path / "s.png", x="size") is None  # same batch and network: one size
    recs.append({**_rec("np", 8, 8.0, 40.0), "batch": 4})
    assert plot(recs, tmp_path / "s.png", x="size") == tmp_path / "s.png"


def test_memory_freed_before_the_reset_counts_again_when_reused():
    """The CPU method's premise: after ``_reset_peak`` (malloc_trim + high-water reset), memory an
    earlier step freed is not resident, so a step reusing it raises the high-water mark."""
    import torch

    from wgraph.profile.measurement import _hwm_mb, _reset_peak, _rss_mb

    x = torch.ones(50_000_000)  # 200 MB, then freed (the "warm-up")
    del x
    _reset_peak()
    before = _rss_mb()
    y = torch.ones(50_000_000)
    assert _hwm_mb() - before > 150
    del y


def test_memory_process_unmaps_large_allocations_when_freed():
    """The memory process's premise: started with ``MEMORY_ENV``, a freed tensor leaves the resident
    set at once, so the high-water mark of a step follows its live tensors."""
    code = """
import torch
from wgraph.profile.measurement import _hwm_mb, _reset_peak, _rss_mb
_reset_peak()
before = _rss_mb()
for _ in range(3):  # three 80 MB tensors one after the other: a peak of one, not three
    x = torch.ones(20_000_000)
    del x
    assert _rss_mb() - before < 20, _rss_mb() - before
print(_hwm_mb() - before)
"""
    env = {**os.environ, **MEMORY_ENV}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert 70 < float(out.stdout) < 120


def test_cpu_records_time_and_memory_from_two_processes():
    rec = run_isolated(Config(ARCH, 2, 4, "gnn-fused", reps=1))
    assert rec["status"] == "ok" and rec["time_s"] > 0 and rec["step_mb"] >= 0 and rec["total_mb"] >= rec["step_mb"]


def test_a_registered_backend_is_a_method():
    """`gnn-<name>` for a backend registered at run time (the benchmark's node-part stand-in)."""
    from wgraph.kernels import register_backend
    from wgraph.profile import measure

    def zero_messages(send, recv, edge, edge_weight, *, kind, reverse, aggr, act, groups=1):
        return recv.new_zeros(*recv.shape[:2], recv.shape[2] * len(aggr)) + 0 * send.sum()

    register_backend("test-zero", zero_messages)
    rec = measure(Config(ARCH, 2, 4, "gnn-test-zero"), part="time")
    assert rec["time_s"] > 0
