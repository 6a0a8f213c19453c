"""Saved graphs are untrusted: an edited layout loads correctly or raises FileFormatError naming the
field, never a wrong state dict, a "symmetry" that changes the function, or an error from deep
inside torch."""

import copy
import dataclasses
import json
import random

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import wgraph
from wgraph.zoo import resnet_mlp, small_cnn


class _Mixed(nn.Module):
    """Concatenation, flatten, BatchNorm (an extra buffer) and a residual: most layout features."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 3, 3, padding=1)
        self.b = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(20, 6)
        self.fc2 = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.bn(torch.cat([self.a(x), self.b(x)], dim=1)).relu()
        h = self.fc(self.pool(h).flatten(1)).relu()
        return self.head(h + self.fc2(h).relu())


CASES = {
    "cnn": (lambda: small_cnn(channels=4, classes=3), (1, 1, 16, 16)),
    "resnet_mlp": (lambda: resnet_mlp(d_in=5, width=4, depth=2, d_out=3), (1, 5)),
    "mixed": (_Mixed, (1, 1, 8, 8)),
}


def _saved(tmp_path, name):
    torch.manual_seed(0)
    make, shape = CASES[name]
    model = make().eval()
    x = torch.randn(4, *shape[1:])
    g = wgraph.to_graph(model, torch.randn(shape))
    path = tmp_path / f"{name}.safetensors"
    g.save(path)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        layout = json.loads(f.metadata()["wgraph_layout"])
    return model, x, g, tensors, layout


def _write(path, tensors, layout):
    save_file(tensors, str(path), metadata={"wgraph_layout": json.dumps(layout)})


#: The fields that define the function of the architecture a layout describes (names and notes do not).
STRUCTURE = {
    "layers": ("kind", "start", "size", "space", "scaling"),
    "spaces": ("layers", "size", "permutable", "segments", "heads", "head_group", "scaling"),
    "blocks": (
        "kind", "src", "dst", "param", "kernel", "src_offset", "dst_offset", "inner", "count", "groups", "index"
    ),
}


def _structure(layout: wgraph.Layout):
    parts = {key: [[getattr(x, f) for f in fs] for x in getattr(layout, key)] for key, fs in STRUCTURE.items()}
    return parts, layout.params, layout.node_features


def _load_and_use(path, model, x, original):
    """Load, then everything a user does next; only a FileFormatError may stop it.

    A layout that loads describes *some* architecture. If its parameters are the original's, the
    state dict must be bit for bit the original's; if its structure is the original's (only names
    or notes edited), the graph and its symmetries must also compute the original function.
    """
    try:
        g = wgraph.WeightGraph.load(path)
    except wgraph.FileFormatError:
        return "rejected"
    sd = g.to_state_dict()
    for k, v in sd.items():
        assert tuple(v.shape) == g.layout.params[g.layout.param_index[k]].shape
    if g.layout.params == original.layout.params:
        want = original.to_state_dict()
        assert list(sd) == list(want) and all(torch.equal(sd[k], want[k]) for k in want)
    g.to_pyg()
    g.to_networkx()
    permuted = g.permute(wgraph.random_symmetry(g, seed=1))
    permuted.to_state_dict()
    if _structure(g.layout) == _structure(original.layout):
        with torch.no_grad():
            ref = model(x)
            torch.testing.assert_close(wgraph.load_into(copy.deepcopy(model), g)(x), ref)
            torch.testing.assert_close(wgraph.load_into(copy.deepcopy(model), permuted)(x), ref)
    return "loaded"


def _mutate(layout: dict, rng: random.Random) -> str:
    """One random edit of a layout dict: a field set to another value, or an entry dropped or repeated."""
    key = rng.choice(["layers", "spaces", "blocks", "params"])
    items = layout[key]
    if not items:
        return "nothing"
    i = rng.randrange(len(items))
    op = rng.random()
    if op < 0.08:
        del items[i]
        return f"{key}[{i}] dropped"
    if op < 0.16:
        items.insert(rng.randrange(len(items) + 1), copy.deepcopy(items[i]))
        return f"{key}[{i}] repeated"
    item = items[i]
    field = rng.choice(sorted(item))
    value = item[field]
    if isinstance(value, bool):
        new = not value
    elif isinstance(value, int):
        new = rng.choice([value + 1, value - 1, -1, 0, 10**6, value * 2])
    elif isinstance(value, list):
        if value and rng.random() < 0.6:
            j = rng.randrange(len(value))
            inner = value[j]
            value[j] = rng.choice([inner + 1, -1, 10**6]) if isinstance(inner, int) else [-1, 0, 1]
            return f"{key}[{i}].{field}[{j}] edited"
        new = rng.choice([[], value + value[:1], "x", None])
    elif isinstance(value, str):
        new = rng.choice(["input", "hidden", "output", "dense", "identity", "nodes", "edges", "positive", "", 3])
    else:
        new = rng.choice([0, "x", [1]])
    if rng.random() < 0.05:
        del item[field]
        return f"{key}[{i}].{field} deleted"
    item[field] = new
    return f"{key}[{i}].{field} = {new!r}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_fuzzed_layouts_load_correctly_or_raise_file_format_error(tmp_path, name):
    model, x, g, tensors, layout = _saved(tmp_path, name)
    rng = random.Random(name)
    outcomes = {"rejected": 0, "loaded": 0}
    for trial in range(150):
        edited = copy.deepcopy(layout)
        what = [_mutate(edited, rng) for _ in range(rng.choice([1, 1, 2]))]
        path = tmp_path / f"fuzz{trial}.safetensors"
        _write(path, tensors, edited)
        try:
            outcomes[_load_and_use(path, model, x, g)] += 1
        except AssertionError as e:
            raise AssertionError(f"edit {what} loaded into a wrong graph: {e}") from None
        except Exception as e:
            raise AssertionError(f"edit {what}: {type(e).__name__}: {e}") from None
    assert outcomes["rejected"] > 50, outcomes


def _edited(tmp_path, name, edit):
    _, _, _, tensors, layout = _saved(tmp_path, name)
    edit(layout)
    path = tmp_path / "edited.safetensors"
    _write(path, tensors, layout)
    return path


def _hidden_space(layout):
    return next(i for i, s in enumerate(layout["spaces"]) if s["permutable"])


def _input_space(layout):
    return next(i for i, l in enumerate(layout["layers"]) if l["kind"] == "input")


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d["spaces"][d["layers"][_input_space(d)]["space"]].update(permutable=True), r"permutable"),
        (lambda d: d["params"][0].update(shape=[2, 2]), r"params\[0\] \('0.weight'\).shape"),
        (lambda d: d["params"].append(copy.deepcopy(d["params"][0])), r"a second parameter of this name"),
        (lambda d: d["params"].pop(0), r"blocks\[0\] \('0.weight'\).param"),
        (lambda d: d["params"][0].update(index=99), r"block 99 is out of range"),
        (lambda d: d["spaces"][_hidden_space(d)].update(size=3), r"spaces\[\d+\].size"),
        (lambda d: d["blocks"][0].update(src=99), r"blocks\[0\]"),
        (lambda d: d["layers"][1].update(kind="weird"), r"layers\[1\].kind"),
        (lambda d: d["layers"][1].update(size="4"), r"layers\[1\].size: '4' is not of type int"),
        (lambda d: d["blocks"][0].pop("kind"), r"blocks\[0\].kind: missing"),
    ],
)
def test_named_edits_are_rejected_with_the_field(tmp_path, edit, field):
    path = _edited(tmp_path, "cnn", edit)
    with pytest.raises(wgraph.FileFormatError, match=field):
        wgraph.WeightGraph.load(path)


def test_tensors_that_do_not_match_the_layout_are_rejected(tmp_path):
    _, _, _, tensors, layout = _saved(tmp_path, "mixed")
    path = tmp_path / "t.safetensors"
    renamed = dict(tensors)
    renamed["edges/other"] = renamed.pop("edges/0.weight" if "edges/0.weight" in renamed else next(
        k for k in renamed if k.startswith("edges/")))
    _write(path, renamed, layout)
    with pytest.raises(wgraph.FileFormatError, match="unexpected"):
        wgraph.WeightGraph.load(path)
    extra = next(k for k in tensors if k.startswith("extras/"))
    _write(path, {**tensors, extra: tensors[extra].float()}, layout)
    with pytest.raises(wgraph.FileFormatError, match="extra state"):
        wgraph.WeightGraph.load(path)
    edge = next(k for k in tensors if k.startswith("edges/"))
    _write(path, {**tensors, edge: tensors[edge][:, :1]}, layout)
    with pytest.raises(wgraph.FileFormatError, match="expected shape"):
        wgraph.WeightGraph.load(path)


def test_from_pyg_checks_the_layout():
    g = wgraph.to_graph(small_cnn(channels=4, classes=3), torch.randn(1, 1, 16, 16))
    si = g.layout.layers[0].space
    spaces = list(g.layout.spaces)
    spaces[si] = dataclasses.replace(spaces[si], permutable=True)  # the input neurons
    bad = copy.copy(g.layout)  # built without __init__ (which the suite makes check layouts)
    bad.__dict__.clear()
    object.__setattr__(bad, "spaces", tuple(spaces))
    for f in ("layers", "blocks", "params", "node_features", "meta"):
        object.__setattr__(bad, f, getattr(g.layout, f))
    with pytest.raises(wgraph.FileFormatError, match="permutable"):
        wgraph.WeightGraph.from_pyg(g.to_pyg(), bad)


def test_save_is_atomic_and_cleans_stale_temporaries(tmp_path):
    g = wgraph.to_graph(small_cnn(channels=4, classes=3), torch.randn(1, 1, 16, 16))
    target = tmp_path / "g.safetensors"
    dead = tmp_path / ".g.safetensors.wgraph-tmp.999999999"  # a writer killed mid-write
    dead.write_bytes(b"x" * 100)
    other = tmp_path / ".other.safetensors.wgraph-tmp.999999999"  # another target's: left alone
    other.write_bytes(b"x")
    g.save(target)
    assert not dead.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, other.name])
    assert torch.equal(wgraph.WeightGraph.load(target).nodes, g.nodes)


def test_directories_are_named_as_such(tmp_path):
    g = wgraph.to_graph(small_cnn(channels=4, classes=3), torch.randn(1, 1, 16, 16))
    with pytest.raises(wgraph.FileFormatError, match="it is a directory"):
        g.save(tmp_path)
    with pytest.raises(wgraph.FileFormatError, match="a directory, not a graph file"):
        wgraph.WeightGraph.load(tmp_path)
