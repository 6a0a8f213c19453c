"""The zoo directory format: safetensors shards plus ``manifest.json``.

::

    ZOO/
      manifest.json              format, kind, arch, columns, config, complete, shards
      shard-00000.safetensors    {state-dict name: Tensor (n, *shape)} for the shard's n networks
      shard-00001.safetensors
      ...

``manifest.json``::

    {"format": "wgraph-zoo", "version": 1, "kind": "cnn",
     "arch": {"name": "digits_cnn", "kwargs": {...}, "input_shape": [1, 1, 8, 8],
              "per_network": {"activation": "activation"}},
     "columns": {"run": "int", "checkpoint": "int", "lr": "float", "optimizer": "str", ...},
     "config": {...the generator's settings...},
     "complete": true,
     "shards": [{"file": "shard-00000.safetensors", "index": 0, "count": 64,
                 "sha256": "...", "table": {"run": [...], "checkpoint": [...], ...}}, ...]}

Each shard's rows of the table (one value per network, in the shard's order) sit in its manifest
entry; column types are ``int``, ``float`` (``NaN`` allowed, for diverged runs), ``str``, ``bool``.

Safety: loading reads only the files the manifest names (plain ``*.safetensors`` names inside the
directory), checks each one's sha256 before parsing it, and parses it with safetensors, which never
unpickles. Other files in the directory (``*.pt``, ``*.pkl``, ...) are never opened.

Crash safety: every file is written to a temporary file in the same directory, flushed with
``fsync`` and moved into place with ``os.replace``; the manifest is rewritten the same way after
each shard. A kill at any moment leaves the previous manifest, whose shards are all whole; a shard
written but not yet in the manifest is simply regenerated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..dirlock import LOCK, lock_directory
from ..errors import ZooError
from .dataset import Zoo, build_arch

FORMAT = "wgraph-zoo"
VERSION = 1
MANIFEST = "manifest.json"
TEMP_PREFIX = ".tmp-"
#: Column type names and the numpy dtypes :attr:`Zoo.table` gives them.
COLUMN_TYPES = {"int": np.int64, "float": np.float64, "str": np.str_, "bool": np.bool_}
REQUIRED_COLUMNS = ("run", "checkpoint")
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*\.safetensors$")
_TEMP_NAME = re.compile(r"^\.tmp-(manifest\.json|shard-\d+\.safetensors)\.\d+$")  # what atomic_write leaves


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ atomic writes
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform / file system can fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either its old content or all of ``data``."""
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


# ------------------------------------------------------------------ manifest
def _check_columns(columns: Any, where: str) -> dict[str, str]:
    if not isinstance(columns, dict) or not all(isinstance(k, str) and v in COLUMN_TYPES for k, v in columns.items()):
        raise ZooError(f"{where}: 'columns' must map column names to one of {sorted(COLUMN_TYPES)}, got {columns!r}")
    for c in REQUIRED_COLUMNS:
        if columns.get(c) != "int":
            raise ZooError(f"{where}: column {c!r} of type 'int' is required")
    return columns


def _check_value(v: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "float":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, str) if kind == "str" else isinstance(v, bool)


def _check_table(table: Any, columns: dict[str, str], count: int, where: str) -> None:
    if not isinstance(table, dict) or set(table) != set(columns):
        got = sorted(table) if isinstance(table, dict) else type(table).__name__
        raise ZooError(f"{where}: table has columns {got}, the manifest declares {sorted(columns)}")
    for c, kind in columns.items():
        values = table[c]
        if not isinstance(values, list) or len(values) != count:
            raise ZooError(f"{where}: column {c!r} must be a list of {count} values")
        bad = next((v for v in values if not _check_value(v, kind)), None)
        if bad is not None or (kind in ("int", "float") and any(v is None for v in values)):
            raise ZooError(f"{where}: column {c!r} is declared {kind!r} but holds {bad!r}")


def _check_arch(arch: Any, where: str) -> dict:
    ok = (
        isinstance(arch, dict)
        and isinstance(arch.get("name"), str)
        and isinstance(arch.get("kwargs", {}), dict)
        and isinstance(arch.get("input_shape"), list)
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in arch["input_shape"])
        and isinstance(arch.get("per_network", {}), dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in arch.get("per_network", {}).items())
    )
    if not ok:
        want = "{'name': str, 'kwargs': dict, 'input_shape': [int, ...], 'per_network': {str: str}}"
        raise ZooError(f"{where}: 'arch' must be {want}, got {arch!r}")
    return arch


def read_manifest(root: Path) -> dict:
    """Parse and validate ``root/manifest.json`` (structure only; shards are not opened)."""
    path = root / MANIFEST
    if not root.is_dir():
        raise ZooError(f"{root}: no such directory")
    if not path.is_file():
        raise ZooError(f"{root}: no {MANIFEST}; not a wgraph zoo directory")
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZooError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ZooError(f"{path}: not a wgraph zoo manifest (format is not {FORMAT!r})")
    if m.get("version") != VERSION:
        raise ZooError(f"{path}: format version {m.get('version')!r}; this wgraph reads version {VERSION}")
    if not isinstance(m.get("kind"), str) or not m["kind"]:
        raise ZooError(f"{path}: 'kind' must be a non-empty string")
    _check_arch(m.get("arch"), str(path))
    columns = _check_columns(m.get("columns"), str(path))
    for col in m["arch"].get("per_network", {}).values():
        if col not in columns:
            raise ZooError(f"{path}: arch.per_network names column {col!r}, which the table does not have")
    shards = m.get("shards")
    if not isinstance(shards, list) or not isinstance(m.get("complete"), bool):
        raise ZooError(f"{path}: 'shards' must be a list and 'complete' a boolean")
    seen_files, seen_index = set(), set()
    for i, s in enumerate(shards):
        where = f"{path}: shards[{i}]"
        if not isinstance(s, dict):
            raise ZooError(f"{where}: not an object")
        f, idx, n, h = s.get("file"), s.get("index"), s.get("count"), s.get("sha256")
        if not isinstance(f, str) or not _SHARD_NAME.match(f):
            raise ZooError(f"{where}: file {f!r} is not a plain '*.safetensors' name inside the zoo directory")
        if not isinstance(idx, int) or not isinstance(n, int) or n < 0:
            raise ZooError(f"{where}: 'index' and 'count' must be integers")
        if not isinstance(h, str) or not re.fullmatch(r"[0-9a-f]{64}", h):
            raise ZooError(f"{where}: 'sha256' must be 64 lowercase hex digits")
        if f in seen_files or idx in seen_index:
            raise ZooError(f"{where}: file {f!r} / index {idx} listed twice")
        seen_files.add(f)
        seen_index.add(idx)
        _check_table(s.get("table"), columns, n, f"{where} ({f})")
    m.setdefault("config", {})
    return m


def _parse_shard(root: Path, entry: dict, template: dict[str, torch.Tensor], verify: bool) -> dict[str, torch.Tensor]:
    """Read, check (sha256, then safetensors header, keys, shapes) and parse one shard."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    name = entry["file"]
    path = root / name
    if path.is_symlink() or not path.is_file():
        raise ZooError(f"{path}: shard missing (or not a regular file); rerun the generation command to rebuild it")
    data = path.read_bytes()
    if verify:
        got = sha256_bytes(data)
        if got != entry["sha256"]:
            raise ZooError(
                f"{path}: corrupted shard (sha256 {got[:12]}..., manifest says {entry['sha256'][:12]}...); "
                "it was not loaded. Rerun the generation command to regenerate it"
            )
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ZooError(f"{path}: not a valid safetensors file (truncated or corrupted: {e}); not loaded") from None
    if tensors.keys() != template.keys():
        missing = sorted(template.keys() - tensors.keys())
        extra = sorted(tensors.keys() - template.keys())
        raise ZooError(f"{path}: keys do not match the architecture (missing {missing}, unexpected {extra})")
    for k in template:  # in the architecture's order, so the first mismatch reported is the first layer's
        t = tensors[k]
        want = (entry["count"], *template[k].shape)
        if tuple(t.shape) != want:
            raise ZooError(f"{path}: {k!r} has shape {tuple(t.shape)}, expected {want}")
        if not t.dtype.is_floating_point:
            raise ZooError(f"{path}: {k!r} is {t.dtype}, expected floating-point weights")
    return tensors


def _template(arch: dict, where: str) -> dict[str, torch.Tensor]:
    """The architecture's state dict on the meta device: names and shapes, no memory, no init."""
    with torch.device("meta"):
        return build_arch(arch, where).state_dict()


def load_zoo(path, verify: bool = True, *, partial: bool = False) -> Zoo:
    """Load the zoo in directory ``path``.

    Reads ``manifest.json`` and the shards it lists, nothing else. ``verify``: check every shard's
    sha256 before parsing it (a truncated shard is caught by the safetensors header check either
    way). ``partial``: accept a zoo whose generation has not finished (``complete`` false).
    Raises :class:`~wgraph.errors.ZooError`, naming the file, on any mismatch.
    """
    root = Path(path)
    m = read_manifest(root)
    if not m["complete"] and not partial:
        done = sum(s["count"] for s in m["shards"])
        raise ZooError(
            f"{root}: incomplete zoo ({len(m['shards'])} shards, {done} networks so far); rerun the generation "
            "command to finish it, or pass partial=True"
        )
    template = _template(m["arch"], f"{root / MANIFEST}: arch")
    shards = sorted(m["shards"], key=lambda s: s["index"])
    parsed = [_parse_shard(root, s, template, verify) for s in shards]
    if parsed:
        dtypes = {t.dtype for p in parsed for t in p.values()}
        if len(dtypes) > 1:
            raise ZooError(f"{root}: shards mix dtypes {sorted(map(str, dtypes))}")
        weights = {k: torch.cat([p[k] for p in parsed]) for k in template}
    else:
        weights = {k: torch.empty(0, *v.shape, dtype=v.dtype) for k, v in template.items()}
    columns = m["columns"]
    table = {
        c: np.array([v for s in shards for v in s["table"][c]], dtype=COLUMN_TYPES[kind]) for c, kind in columns.items()
    }
    pairs = set(zip(table["run"].tolist(), table["checkpoint"].tolist()))
    if len(pairs) != len(table["run"]):
        raise ZooError(f"{root}: duplicate (run, checkpoint) rows in the manifest")
    return Zoo(m["kind"], m["arch"], weights, table, config=m["config"], path=root)


# ------------------------------------------------------------------ writing
def _as_list(values: Any) -> list:
    return values.tolist() if isinstance(values, (np.ndarray, torch.Tensor)) else list(values)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.generic, torch.Tensor)):
        return v.item()
    return v


class ZooWriter:
    """Write a zoo shard by shard, resumably.

    ``ZooWriter(path, kind=, arch=, columns=, config=)`` creates ``path`` (and its manifest) or
    reopens it. Reopening checks that ``kind``, ``arch``, ``columns`` and ``config`` equal the
    manifest's (so a resumed generation continues the same zoo), removes stray temporary files,
    and drops (with a warning) shards whose file is missing or fails its sha256, so that they are
    generated again. :meth:`has_shard` tells a generator what to skip; :meth:`write_shard` adds
    one; :meth:`finish` marks the zoo complete. One writer per directory at a time (a lock file).
    """

    def __init__(self, path, *, kind: str, arch: dict, columns: dict[str, str], config: dict | None = None):
        self.root = Path(path)
        self.root.mkdir(parents=True, exist_ok=True)
        had_lock = (self.root / LOCK).exists()
        self._lock = lock_directory(self.root, ZooError, "writing this zoo")
        try:
            self._open(kind, arch, columns, config, had_lock)
        except BaseException:
            self.close()
            raise

    def _open(self, kind: str, arch: dict, columns: dict[str, str], config: dict | None, had_lock: bool) -> None:
        fresh = {
            "format": FORMAT, "version": VERSION, "kind": kind, "arch": json.loads(json.dumps(arch)),
            "columns": dict(columns), "config": json.loads(json.dumps(config or {})), "complete": False, "shards": [],
        }
        _check_arch(fresh["arch"], "arch")
        _check_columns(fresh["columns"], "columns")
        self.template = _template(fresh["arch"], "arch")
        temps = [p for p in self.root.iterdir() if _TEMP_NAME.match(p.name)]
        others = sorted(p.name for p in self.root.iterdir() if p.name not in (LOCK, MANIFEST) and p not in temps)
        if not (self.root / MANIFEST).exists() and others:
            if not had_lock:
                (self.root / LOCK).unlink(missing_ok=True)
            listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise ZooError(
                f"{self.root}: not empty ({listed}) and holds no {MANIFEST}; "
                "write a new zoo into a new or empty directory"
            )
        for stray in temps:  # the remains of a write that was killed
            with contextlib.suppress(OSError):
                stray.unlink()
        if (self.root / MANIFEST).exists():
            self.manifest = read_manifest(self.root)
            for key in ("kind", "arch", "columns", "config"):
                if self.manifest[key] != fresh[key]:
                    raise ZooError(
                        f"{self.root}: holds a zoo generated with different {key} "
                        f"({_diff(self.manifest[key], fresh[key])}); "
                        "use another directory, or the same settings to resume"
                    )
            self._drop_bad_shards()
        else:
            self.manifest = fresh
            self._write_manifest()

    def _drop_bad_shards(self) -> None:
        keep = []
        for s in self.manifest["shards"]:
            p = self.root / s["file"]
            ok = p.is_file() and not p.is_symlink() and sha256_bytes(p.read_bytes()) == s["sha256"]
            if ok:
                keep.append(s)
            else:
                warnings.warn(f"{p}: missing or corrupted shard; it will be generated again", stacklevel=3)
        if len(keep) != len(self.manifest["shards"]):
            self.manifest["shards"] = keep
            self.manifest["complete"] = False
            self._write_manifest()

    def _write_manifest(self) -> None:
        self.manifest["shards"].sort(key=lambda s: s["index"])
        atomic_write(self.root / MANIFEST, (json.dumps(self.manifest, indent=1) + "\n").encode())

    @property
    def complete(self) -> bool:
        return self.manifest["complete"]

    @property
    def num_networks(self) -> int:
        return sum(s["count"] for s in self.manifest["shards"])

    def has_shard(self, index: int) -> bool:
        return any(s["index"] == index for s in self.manifest["shards"])

    def write_shard(self, index: int, weights: dict[str, torch.Tensor], table: dict[str, Any]) -> None:
        """Write shard ``index``: ``weights`` stacked ``{name: (n, *shape)}``, ``table`` ``{column:
        n values}``; then record it in the manifest. Replaces an existing shard of that index."""
        if weights.keys() != self.template.keys():
            raise ZooError(f"shard {index}: weights have keys {sorted(weights)}, architecture {sorted(self.template)}")
        n = next(iter(weights.values())).shape[0]
        for k, t in weights.items():
            if tuple(t.shape) != (n, *self.template[k].shape):
                want = (n, *self.template[k].shape)
                raise ZooError(f"shard {index}: {k!r} has shape {tuple(t.shape)}, expected {want}")
        if set(table) != set(self.manifest["columns"]):
            raise ZooError(f"shard {index}: table columns {sorted(table)}, expected {sorted(self.manifest['columns'])}")
        rows = {c: [_jsonable(v) for v in _as_list(table[c])] for c in self.manifest["columns"]}
        _check_table(rows, self.manifest["columns"], n, f"shard {index}")
        from safetensors.torch import save

        data = save({k: t.detach().to("cpu").contiguous() for k, t in weights.items()})
        name = shard_name(index)
        atomic_write(self.root / name, data)
        entry = {"file": name, "index": index, "count": n, "sha256": sha256_bytes(data), "table": rows}
        self.manifest["shards"] = [s for s in self.manifest["shards"] if s["index"] != index] + [entry]
        self._write_manifest()

    def finish(self) -> None:
        """Mark the zoo complete (:func:`load_zoo` refuses incomplete zoos unless ``partial=True``)."""
        self.manifest["complete"] = True
        self._write_manifest()
        self.close()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> ZooWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_run_shards(out, cfg, *, kind: str, columns: dict[str, str], dataset: str, train_shard,
                     trainings: int = 1, progress: bool = True, threads: int | None = 1) -> Zoo:
    """Generate (or resume) a zoo of training runs in directory ``out`` and load it: the loop of the
    CNN, transformer and ticket generators.

    ``cfg``: the generator's settings (a dataclass with ``runs``, ``shard_size``, ``seed``,
    ``test_fraction``, ``epochs``, ``batch_size`` and ``arch()``; stored as the manifest's config).
    Runs ``0 .. runs - 1`` go in shards of ``shard_size``; every shard the manifest does not hold yet is
    ``train_shard(cfg, runs, data, bar) -> (weights, table)`` on :func:`~wgraph.zoo.data.image_split`
    of ``dataset``, written with :class:`ZooWriter` (so a rerun continues where one stopped).
    ``trainings``: trainings of ``epochs`` each per run (the progress bar's length).
    ``threads``: torch threads while training (:func:`~wgraph.zoo.threads.torch_threads`)."""
    from tqdm.auto import tqdm

    from .data import image_split
    from .threads import torch_threads

    shards = [list(range(a, min(a + cfg.shard_size, cfg.runs))) for a in range(0, cfg.runs, cfg.shard_size)]
    writer = ZooWriter(Path(out), kind=kind, arch=cfg.arch(), columns=columns, config=asdict(cfg))
    with writer, torch_threads(threads):
        todo = [i for i in range(len(shards)) if not writer.has_shard(i)]
        if todo:
            data = image_split(dataset, cfg.seed, cfg.test_fraction)
            steps = cfg.epochs * math.ceil(len(data[1]) / cfg.batch_size) * trainings
            with tqdm(total=len(todo) * steps, desc=f"{kind} zoo", unit="step", disable=not progress) as bar:
                for i in todo:
                    bar.set_postfix_str(f"shard {i + 1}/{len(shards)}: runs {shards[i][0]}..{shards[i][-1]}")
                    writer.write_shard(i, *train_shard(cfg, shards[i], data, bar))
        writer.finish()
    return load_zoo(out)


def _diff(stored: Any, now: Any) -> str:
    if isinstance(stored, dict) and isinstance(now, dict):
        keys = [k for k in {**stored, **now} if stored.get(k) != now.get(k)]
        return ", ".join(f"{k}: {stored.get(k)!r} stored, {now.get(k)!r} now" for k in keys)
    return f"{stored!r} stored, {now!r} now"
