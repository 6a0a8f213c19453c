"""INR datasets in the DWSNets / neural-graphs and NFN formats: one SIREN state dict per file.

**DWSNets** (Navon et al. 2023) and **neural-graphs** (Kofinas et al. 2024): a split file such as
``mnist_splits.json``, ``{"train": {"path": [...], "label": [...]}, "val": {...}, "test": {...}}``,
whose paths are relative to ``SRC`` (neural-graphs) or absolute paths of the machine that made the
split (DWSNets): a path that does not exist is looked up by its tail under ``SRC``. A split whose
entries are plain lists of paths (neural-graphs' Fashion-MNIST ``splits.json``) takes each label
from the file (``{"label": ..., <tensors>}``). Each file is ``torch.save`` of an ``INR``: ``seq.{i}.weight``,
``seq.{i}.bias``, every layer but the last ``sin(w0 · (W x + b))``, the last linear, the output
plus 0.5.

**NFN** (Zhou et al. 2023): ``SRC/{prefix}_{label}s/net{index}.pth`` (e.g.
``randinit_smaller_3s/net17.pth``), files of ``Siren(..., outermost_linear=True)``:
``net.{i}.linear.weight`` / ``.bias`` (sine layers) and ``net.{L}.weight`` / ``.bias`` (linear).

The architecture is recognized from the keys of the first readable file: a chain of ``(weight,
bias)`` layers numbered in order. Every INR becomes a :func:`~wgraph.zoo.archs.siren` (``offset``
0.5 for DWSNets' ``seq.*`` keys, 0 otherwise; ``w0`` 30, the value of both sources), its layers
renamed ``0.*``, ``2.*``, ``4.*``: the values are the file's, bit for bit. Labels come from the split
file, else the file's own ``label``, else the path (``..._{label}s/`` of NFN,
``mnist_png_{split}_{label}_{id}/`` of DWSNets). Table: ``run`` = ``image`` (the INR's position),
``checkpoint`` 0, ``label``, ``split`` and ``source`` (the file).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ...errors import ZooError
from .common import (
    KEYS,
    CheckpointError,
    FileItem,
    Plan,
    arch_template,
    dtype_of,
    fingerprint,
    read_checkpoint,
    read_files,
)

HELP = "INR datasets (SIRENs) of DWSNets / neural-graphs (split JSON) or NFN (PREFIX_{label}s/net{i}.pth)"
COLUMNS = {"run": "int", "checkpoint": "int", "image": "int", "label": "int", "split": "str", "source": "str"}
SUFFIXES = (".pth", ".pt", ".safetensors")
_LAYER = re.compile(r"^(?P<prefix>(?:.*\.)?)(?P<i>\d+)(?P<linear>\.linear)?\.(?P<kind>weight|bias)$")


def as_label(v) -> int | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else None


def label_from_path(rel: Path) -> int | None:
    """The class in an NFN (``.../{prefix}_{label}s/net{i}.pth``) or DWSNets
    (``.../mnist_png_{split}_{label}_{id}/checkpoints/...``) path."""
    for part in reversed(rel.parts[:-1]):
        m = re.search(r"_(\d+)s$", part) or re.fullmatch(r".+_(\d+)_\d+", part)
        if m:
            return int(m.group(1))
    return None


def recognize(keys: list[str], shapes: dict[str, tuple]) -> dict:
    """The SIREN in a state dict: ``sizes``, the source key of each wgraph key, and the
    convention (``dwsnets``: ``seq.*``, ``nfn``: ``net.*.linear``, else ``sequential``)."""
    layers: dict[int, dict[str, str]] = {}
    prefixes, linear = set(), {}
    for k in keys:
        m = _LAYER.match(k)
        if not m:
            raise ZooError(f"key {k!r} is not '<prefix><i>.weight' / '.bias' of a chain of linear layers")
        i = int(m["i"])
        prefixes.add(m["prefix"])
        linear[i] = bool(m["linear"])
        layers.setdefault(i, {})[m["kind"]] = k
    order = sorted(layers)
    ok = len(prefixes) == 1 and order == list(range(order[0], order[0] + len(order))) and len(order) >= 2
    ok = ok and all(set(layers[i]) == {"weight", "bias"} for i in order)
    ws = [shapes[layers[i]["weight"]] for i in order] if ok else []
    ok = ok and all(len(w) == 2 for w in ws) and all(a[0] == b[1] for a, b in zip(ws, ws[1:]))
    ok = ok and all(shapes[layers[i]["bias"]] == (w[0],) for i, w in zip(order, ws))
    if not ok:
        raise ZooError(f"keys {keys} are not a chain of (weight, bias) linear layers")
    if linear[order[-1]]:
        raise ZooError("the last layer is a sine layer (NFN's outermost_linear=False); a wgraph siren ends linear")
    prefix = prefixes.pop()
    convention = "dwsnets" if prefix == "seq." else "nfn" if any(linear.values()) else "sequential"
    rename = {}
    for j, i in enumerate(order):
        rename[layers[i]["weight"]], rename[layers[i]["bias"]] = f"{2 * j}.weight", f"{2 * j}.bias"
    return {"sizes": [ws[0][1]] + [w[0] for w in ws], "rename": rename, "convention": convention}


def _split_items(path: Path, root: Path) -> list[tuple[str, str, object]]:
    """(split, path, label or None) of each entry of a split file, train / val / test first."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZooError(f"{path}: unreadable split file ({e})") from None
    if not isinstance(data, dict):
        raise ZooError(f"{path}: expected {{split: {{'path': [...], 'label': [...]}}}}")
    out = []
    for split in sorted(data, key=lambda s: (["train", "val", "test"] + [s]).index(s)):
        entry = data[split]
        paths, labels = (entry.get("path"), entry.get("label")) if isinstance(entry, dict) else (entry, None)
        if not isinstance(paths, list) or (labels is not None and len(labels) != len(paths)):
            raise ZooError(f"{path}: split {split!r} needs a list 'path' (and as many 'label')")
        out += [(split, str(p), None if labels is None else labels[i]) for i, p in enumerate(paths)]
    return out


class _Resolver:
    """Paths of a split file under ``root``; one that does not exist is looked up by its tail
    (DWSNets stores absolute paths of the machine that made the split)."""

    def __init__(self, root: Path):
        self.root, self.strip = root, None

    def __call__(self, text: str) -> Path:
        p = Path(text)
        direct = p if p.is_absolute() else self.root / p
        if direct.exists():
            return direct
        tries = range(1, len(p.parts))
        for k in ([self.strip] if self.strip else []) + list(tries):
            cand = self.root.joinpath(*p.parts[k:])
            if cand.exists():
                self.strip = k
                return cand
        return direct


def _display(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def plan(src, *, splits: str | None = None, w0: float = 30.0, offset: float | None = None,
         dtype: str = "float32") -> Plan:
    """Plan the import of the INR dataset ``src``: a directory (with one ``*splits*.json``, or the
    NFN layout), or a split file. ``splits``: the split file (relative to ``src``); ``offset``: the
    constant added to the output (default: 0.5 for DWSNets' ``seq.*`` files, else 0)."""
    root = Path(src)
    if root.is_file():
        root, splits = root.parent, root.name
    if not root.is_dir():
        raise ZooError(f"{root}: no such directory")
    if splits is None:
        found = sorted(p.name for p in root.glob("*.json") if "split" in p.name)
        if len(found) > 1:
            raise ZooError(f"{root}: several split files {found}; choose one with splits= (--splits)")
        splits = found[0] if found else None
    items: list[FileItem] = []
    if splits is not None:
        resolve = _Resolver(root)
        for i, (split, text, label) in enumerate(_split_items(root / splits, root)):
            path = resolve(text)
            row = {"label": as_label(label), "split": split}
            items.append(FileItem(i, path, _display(path, root), row))
    else:
        files = sorted(root.glob("*/net*.pth"), key=lambda p: (int(re.sub(r"\D", "", p.stem) or -1), p.as_posix()))
        files = files or sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        items = [FileItem(i, p, _display(p, root), {"label": None, "split": ""}) for i, p in enumerate(files)]
    if not items:
        raise ZooError(f"{root}: no split file (*splits*.json) and no INR files ({', '.join(SUFFIXES)})")
    for it in items:
        it.row |= {"run": it.index, "checkpoint": 0, "image": it.index, "source": it.name}
        it.row["path_label"] = label_from_path(Path(it.name))

    siren = _first_siren(items)
    if offset is None:
        offset = 0.5 if siren["convention"] == "dwsnets" else 0.0
    kwargs = {"sizes": siren["sizes"], "w0": w0} | ({"offset": offset} if offset else {})
    arch = {"name": "siren", "kwargs": kwargs, "input_shape": [1, siren["sizes"][0]]}
    template, dt, rename = arch_template(arch), dtype_of(dtype), siren["rename"]

    def adapt(tensors, extras, item: FileItem):
        if item.row["label"] is None:
            item.row["label"] = as_label(extras.get("label"))
        if item.row["label"] is None:
            item.row["label"] = item.row["path_label"]
        if set(tensors) != set(rename):
            missing, extra = sorted(set(rename) - set(tensors)), sorted(set(tensors) - set(rename))
            raise CheckpointError(KEYS, f"missing {missing}, unexpected {extra} (the first INR's keys)")
        return {rename[k]: v for k, v in tensors.items()}

    def read(a: int, b: int):
        return read_files(items[a:b], template, dt, list(COLUMNS), adapt)

    options = {"splits": splits, "w0": w0, "offset": offset, "convention": siren["convention"]}
    fp = fingerprint((it.name, it.path.stat().st_size if it.path.is_file() else -1) for it in items)
    return Plan("inr", arch, dict(COLUMNS), options, fp, len(items), read, dt)


def _first_siren(items: list[FileItem]) -> dict:
    errors = []
    for it in items:
        try:
            tensors, _ = read_checkpoint(it.path)
            return recognize(list(tensors), {k: tuple(v.shape) for k, v in tensors.items()})
        except (CheckpointError, ZooError) as e:
            errors.append(f"{it.name}: {e}")
            if len(errors) >= 20:
                break
    raise ZooError("no INR file could be read as a SIREN: " + "; ".join(errors[:3]))


def add_arguments(p) -> None:
    p.add_argument("--splits", help="split file (default: the one *splits*.json in SRC; none: the NFN layout)")
    p.add_argument("--w0", type=float, default=30.0, help="SIREN frequency w0 (default 30, as both sources)")
    p.add_argument("--offset", type=float, help="constant added to the output (default 0.5 for DWSNets' seq.* "
                   "files, else 0)")
    p.add_argument("--dtype", default="float32", help="dtype of the stored weights (default float32)")


def options(args) -> dict:
    return {"splits": args.splits, "w0": args.w0, "offset": args.offset, "dtype": args.dtype}
