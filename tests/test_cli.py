"""The ``wgraph`` command line: convert, info, and its errors."""

import pickle
from pathlib import Path

import pytest
import torch
from conftest import assert_state_dict_exact
from safetensors.torch import save_file

from wgraph import cli
from wgraph.cli import build_parser, main
from wgraph.graph import WeightGraph
from wgraph.zoo import small_cnn


def test_convert_and_info(tmp_path, capsys):
    out = tmp_path / "cnn.safetensors"
    assert main(["convert", "wgraph.zoo.archs:small_cnn", "--input-shape", "1,1,28,28", "-o", str(out)]) == 0
    g = WeightGraph.load(out)
    assert g.layout.num_params == sum(p.numel() for p in small_cnn().parameters())
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dense k=3x3" in text and "dense linear" in text and "permutable" in text and "4970 parameters" in text


def test_convert_torchvision_model(tmp_path, capsys):
    out = tmp_path / "vgg.safetensors"
    assert main(["convert", "torchvision:vgg11", "--input-shape", "1,3,32,32", "-o", str(out)]) == 0
    g = WeightGraph.load(out)
    assert g.layout.num_params == 132_863_336
    assert any(l.name == "features.18:flat" for l in g.layout.layers)  # one node per channel and position


def test_convert_with_checkpoint(tmp_path):
    torch.manual_seed(1)
    model = small_cnn()
    ckpt = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(ckpt))
    out = tmp_path / "g.safetensors"
    convert = ["convert", "wgraph.zoo:small_cnn", "--input-shape", "1,1,28,28", "-o", str(out)]
    assert main([*convert, "--checkpoint", str(ckpt)]) == 0
    assert_state_dict_exact(WeightGraph.load(out).to_state_dict(), model.state_dict())
    pt = tmp_path / "w.pt"
    torch.save(model.state_dict(), pt)
    assert main([*convert, "--checkpoint", str(pt)]) == 0
    assert_state_dict_exact(WeightGraph.load(out).to_state_dict(), model.state_dict())


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_checkpoint_is_not_unpickled(tmp_path, capsys):
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"0.weight": _Evil()}, f, protocol=2)
    out = str(tmp_path / "o.safetensors")
    rc = main(["convert", "wgraph.zoo:small_cnn", "--checkpoint", str(bad), "--input-shape", "1,1,28,28", "-o", out])
    captured = capsys.readouterr()
    assert rc == 2 and "pwned" not in captured.out
    assert "evil.pt" in captured.err and "cannot be read safely" in captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["convert", "nonsense", "-o", "{tmp}/o.safetensors"], "must be 'torchvision:NAME'"),
        (["convert", "no_such_pkg.mod:f", "-o", "{tmp}/o.safetensors"], "cannot import module 'no_such_pkg.mod'"),
        (["convert", "wgraph.zoo:nope", "-o", "{tmp}/o.safetensors"], "has no attribute 'nope'"),
        (["convert", "torchvision:resnet1234", "-o", "{tmp}/o.safetensors"], "torchvision has no model 'resnet1234'"),
        (["convert", "wgraph.zoo:small_cnn", "-o", "{tmp}/o.safetensors"], "pass --input-shape"),
        (["convert", "wgraph.zoo:small_cnn", "--input-shape", "1,x", "-o", "{tmp}/o.safetensors"], "comma-separated"),
        (
            ["convert", "wgraph.zoo:small_cnn", "-o", "{tmp}/missing/o.safetensors"],
            "directory .*missing does not exist",
        ),
        (
            ["convert", "wgraph.zoo:small_cnn", "--checkpoint", "{tmp}/nope.pt", "-o", "{tmp}/o.safetensors"],
            "nope.pt: no such file",
        ),
        (["info", "{tmp}/nothing.safetensors"], "no such file"),
        (
            ["convert", "torchvision:vgg11", "--input-shape", "1,3,8,8", "-o", "{tmp}/o.safetensors"],
            "VGG does not run on the example input",
        ),
    ],
)
def test_cli_errors(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    import re

    assert re.search(message, capsys.readouterr().err)


def test_console_script_installed(tmp_path):
    import subprocess
    import sys
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "wgraph"]
    assert ep.value == "wgraph.cli:main"
    script = Path(sys.executable).parent / "wgraph"
    out = tmp_path / "m.safetensors"
    argv = [str(script), "convert", "wgraph.zoo:mlp", "--input-shape", "2,784", "-o", str(out)]
    r = subprocess.run(argv, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(script), "convert", "bad", "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "error:" in r.stderr


def test_demo_runs(capsys, tmp_path):
    assert main(["demo", "--quick", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "round trip: bit-exact" in out and "function preserved" in out
    assert "| gnn |" in out and "| np |" in out and "Kendall tau: gnn" in out
    assert "| gnn-fused |" in out and str(tmp_path.resolve()) in out
    runs = ("zoo-cnn/manifest.json", "train-gnn/results.json", "train-np/results.json")
    for f in (*runs, "profile.csv", "profile_width.png"):
        assert (tmp_path / f).is_file(), f


# ----------------------------------------------------------------------------- options derived from configs
def _parsed(*argv) -> dict:
    args = vars(build_parser().parse_args(list(argv)))
    return {k: v for k, v in args.items() if k not in ("fn", "command", "zoo_kind", "verbose")}


def test_train_options_keep_their_flags_and_defaults():
    """`wgraph train`'s options come from TrainConfig's fields: the same flags and defaults as before."""
    got = _parsed("train", "--task", "generalization", "--model", "gnn", "--zoo", "z")
    want = {
        "task": "generalization", "model": "gnn", "zoo": "z", "out": "runs/train", "seed": 0, "split_seed": 0,
        "epochs": None, "steps": None, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.0, "val_fraction": 0.1,
        "test_fraction": 0.1, "select": "best-val", "checkpoint_every": 100, "eval_batch_size": 256, "device": "cpu",
        "resume": False, "progress": True, "strict": False, "warmup": 0.0, "schedule": "constant", "clip_grad": None,
        "probes": 0, "edit": "dilate",
    }
    assert got == want
    flags = ["--no-progress", "--resume", "--select", "last", "--split-seed", "3", "--batch-size", "4", "--lr", "0.5"]
    got = _parsed("train", "--task", "inr-classify", "--model", "np", "--zoo", "z", "--steps", "7", *flags)
    assert (got["progress"], got["resume"], got["select"], got["split_seed"]) == (False, True, "last", 3)
    assert (got["steps"], got["batch_size"], got["lr"], got["task"]) == (7, 4, 0.5, "inr-classify")
    for bad in (["--task", "nope"], ["--epochs", "2", "--steps", "3"], []):  # a choice, exclusive, --zoo required
        argv = ["train", "--task", "generalization", "--model", "gnn", *(["--zoo", "z"] if bad else []), *bad]
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)


def test_zoo_options_keep_their_flags_and_defaults():
    got = _parsed("zoo", "cnn", "out")
    assert got == {"out": "out", "runs": 250, "checkpoints": 4, "epochs": 20, "seed": 0, "shard_size": 50,
                   "threads": 1, "quiet": False, "dataset": "digits"}
    got = _parsed("zoo", "inr", "out")
    assert got == {"out": "out", "images": None, "steps": 300, "seed": 0, "init": "shared", "shard_size": 600,
                   "threads": 1, "quiet": False, "dataset": "digits"}
    assert _parsed("zoo", "inr", "o", "--images", "all")["images"] is None
    assert _parsed("zoo", "inr", "o", "--images", "12", "--init", "independent")["images"] == 12
    for bad in (["--images", "0"], ["--init", "same"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["zoo", "inr", "o", *bad])


def test_a_bad_value_is_an_error_naming_the_option(tmp_path, capsys):
    argv = ["train", "--task", "generalization", "--model", "statnn", "--zoo", str(tmp_path), "--batch-size", "0"]
    assert main(argv) == 2
    assert "batch_size" in capsys.readouterr().err


# ----------------------------------------------------------------------------- subcommand modules
def test_a_subcommand_whose_dependency_is_missing_says_so(tmp_path, monkeypatch, capsys):
    """A subcommand module that cannot import a package stays listed, and running it names the package."""
    (tmp_path / "wgraph_test_needs_pkg.py").write_text("import wgraph_test_missing_pkg\n\ndef register(sub): ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.SUBCOMMAND_MODULES, "needy", "wgraph_test_needs_pkg")
    assert "needy" in build_parser().format_help()
    assert main(["needy", "--any", "args"]) == 2
    err = capsys.readouterr().err
    assert "wgraph needy: error:" in err and "'wgraph_test_missing_pkg'" in err and "not installed" in err
    assert main(["convert", "bad", "-o", str(tmp_path / "o")]) == 2  # the other subcommands still run


def test_a_missing_wgraph_module_is_not_hidden(monkeypatch):
    monkeypatch.setitem(cli.SUBCOMMAND_MODULES, "ghost", "wgraph.no_such_module")
    with pytest.raises(ModuleNotFoundError, match="wgraph.no_such_module"):
        build_parser()


MYPKG = """
import torch
from torch import nn


def make_net():
    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))


class TokenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(50, 4), nn.Linear(4, 2)

    def forward(self, tokens):
        return self.head(self.emb(tokens).mean(1))


def token_net():
    return TokenNet()
"""


def test_console_script_imports_from_the_current_directory(tmp_path):
    """`wgraph convert mypkg.models:make_net` from the package's folder (it said "No module named
    'mypkg'" through the console script, though `python -m wgraph` worked)."""
    import subprocess
    import sys

    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(MYPKG)
    script = Path(sys.executable).parent / "wgraph"
    argv = [str(script), "convert", "mypkg.models:make_net", "--input-shape", "1,6", "-o", "m.safetensors"]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert WeightGraph.load(tmp_path / "m.safetensors").layout.num_params == 38


def test_convert_token_inputs_and_edges(tmp_path, capsys, monkeypatch):
    (tmp_path / "mypkg2").mkdir()
    (tmp_path / "mypkg2" / "__init__.py").write_text(MYPKG)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "t.safetensors"
    argv = ["convert", "mypkg2:token_net", "--input-shape", "1,3", "--input-dtype", "long", "--input-range", "0,50"]
    assert main([*argv, "-o", str(out)]) == 0
    assert WeightGraph.load(out).layout.num_params == 210  # the 50 x 4 table and the head
    assert main([*argv[:4], "--input-range", "0,50", "-o", str(out)]) == 2  # floats take no range
    assert "--input-range is for integer inputs" in capsys.readouterr().err
    assert main([*argv, "-o", str(tmp_path)]) == 2  # an existing directory: said, no traceback
    err = capsys.readouterr().err
    assert "it is a directory" in err and "Traceback" not in err
    assert main(["info", str(tmp_path)]) == 2 and "a directory, not a graph file" in capsys.readouterr().err

