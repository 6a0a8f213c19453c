"""What every importer shares: the problems it reports, the :class:`Plan` it makes of a source, the
resumable write of that plan through :class:`~wgraph.zoo.store.ZooWriter`, typed CSV tables and
checkpoint files read without unpickling anything but tensors.

An importer reads its source's description (layout, labels, the first checkpoint) and returns a
:class:`Plan`: the zoo's ``kind``, ``arch`` and ``columns``, the number of networks in the source,
and ``read(start, stop)``, which reads networks ``start .. stop - 1`` into a :class:`Batch`.
:func:`write_import` cuts the source into shards of ``shard_size`` networks (shard ``i`` holds the
good networks of positions ``i · shard_size ...``, so a resumed import writes the same shards),
screens every network (finite weights, a value in every column) and writes each shard through
:class:`~wgraph.zoo.store.ZooWriter`: atomic files, a manifest rewritten after each shard, resumable
by running the same import again. The problems of each written shard are kept next to the manifest
in ``import-report.json``, so the summary of a resumed import still lists them.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import pickle
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import ZooError
from ..store import ZooWriter, atomic_write, load_zoo

#: The importer's version, stored in every imported zoo's ``config``.
IMPORTER = "wgraph.zoo.importers/1"
#: The problems of an import, next to the zoo's manifest (never read by :func:`~wgraph.zoo.load_zoo`).
REPORT = "import-report.json"

# Why a network was skipped (Problem.reason).
MISSING_FILE = "missing file"
TRUNCATED = "truncated"
UNREADABLE = "unreadable"
UNSAFE = "unsafe pickle"
KEYS = "keys"
SHAPE = "shape"
DTYPE = "dtype"
NONFINITE = "non-finite weights"
LABEL = "missing label"
DUPLICATE = "duplicate"
ACTIVATION = "activation"


class ImportFailed(ZooError):
    """A strict import met a problem, or an import kept no network. ``problems``: what was found."""

    def __init__(self, message: str, problems: list[Problem]):
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class Problem:
    """Why network ``index`` (its position in the source: row of ``weights.npy``, entry of a split
    file or folder listing) of ``file`` was skipped; ``count`` consecutive networks from ``index``
    when one cause skips a range (a truncated array). ``index`` is None for a problem of a whole
    file."""

    file: str
    index: int | None
    reason: str
    detail: str
    count: int = 1

    def where(self) -> str:
        if self.index is None:
            return self.file
        if self.count == 1:
            return f"{self.file} [network {self.index}]"
        return f"{self.file} [networks {self.index}..{self.index + self.count - 1}]"

    def __str__(self) -> str:
        return f"{self.where()}: {self.reason}: {self.detail}"


@dataclass
class ImportReport:
    """The outcome of :func:`~wgraph.zoo.import_zoo`: ``networks`` found in the source, ``imported``
    into the zoo at ``out`` (loaded as ``zoo``), and every ``problem``."""

    format: str
    source: str
    out: Path
    networks: int
    imported: int
    problems: list[Problem]
    zoo: Any = None

    @property
    def skipped(self) -> int:
        return self.networks - self.imported

    def counts(self) -> dict[str, int]:
        """Skipped networks by reason."""
        out: dict[str, int] = {}
        for p in self.problems:
            out[p.reason] = out.get(p.reason, 0) + p.count
        return out

    def summary(self, limit: int = 10) -> str:
        lines = [f"imported {self.imported} of {self.networks} networks ({self.format}: {self.source}) into {self.out}"]
        if self.problems:
            lines.append(f"skipped {self.skipped}: " + ", ".join(f"{r} {n}" for r, n in self.counts().items()))
            lines += [f"  {p}" for p in self.problems[:limit]]
            if len(self.problems) > limit:
                lines.append(f"  ... and {len(self.problems) - limit} more (all in {self.out / REPORT})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


@dataclass
class Batch:
    """Networks read from the source: ``index`` (source positions), ``files`` (where each one came
    from), ``weights`` ``{name: (n, *shape)}``, ``rows`` ``{column: n values}`` (None where the
    source has no value), and the ``problems`` of the networks of the range that could not be read."""

    index: list[int]
    files: list[str]
    weights: dict[str, torch.Tensor]
    rows: dict[str, list]
    problems: list[Problem] = field(default_factory=list)


@dataclass
class Plan:
    """What an importer found: the zoo to write (``kind``, ``arch``, ``columns``, ``dtype``), the
    ``options`` that decide its content and a ``fingerprint`` of the source (both stored in the
    manifest's ``config``, so resuming with other settings or another source is refused), ``count``
    networks, ``read(start, stop)``, and the ``problems`` found before reading any weights."""

    kind: str
    arch: dict
    columns: dict[str, str]
    options: dict
    fingerprint: str
    count: int
    read: Callable[[int, int], Batch]
    dtype: torch.dtype = torch.float32
    problems: list[Problem] = field(default_factory=list)


# ------------------------------------------------------------------ writing
def write_import(fmt: str, source: Path, out, plan: Plan, *, shard_size: int, strict: bool,
                 progress: bool) -> ImportReport:
    """Write ``plan`` to the zoo directory ``out`` (or resume it) and return the report. ``strict``:
    raise :class:`ImportFailed` at the first problem instead of skipping the network."""
    from tqdm.auto import tqdm

    if shard_size < 1:
        raise ZooError(f"shard size must be at least 1, got {shard_size}")
    if plan.count == 0:
        raise ImportFailed(f"{source}: no networks found", plan.problems)
    if strict and plan.problems:
        raise _strict(sorted(plan.problems, key=_position))
    config = {"importer": IMPORTER, "format": fmt, "source": str(source), "fingerprint": plan.fingerprint,
              "shard_size": shard_size, "dtype": str(plan.dtype).removeprefix("torch."), "options": plan.options}
    starts = list(range(0, plan.count, shard_size))
    with ZooWriter(out, kind=plan.kind, arch=plan.arch, columns=plan.columns, config=config) as writer:
        recorded = {i: v for i, v in _read_report(writer.root).items() if writer.has_shard(i)}
        done = sum(min(shard_size, plan.count - a) for i, a in enumerate(starts) if writer.has_shard(i))
        with tqdm(total=plan.count, initial=done, desc=f"import {fmt}", unit="net", disable=not progress) as bar:
            for i, a in enumerate(starts):
                if writer.has_shard(i):
                    continue
                b = min(a + shard_size, plan.count)
                weights, rows, problems = screen(plan.read(a, b), plan)
                if strict and problems:
                    raise _strict(problems)
                recorded[i] = [asdict(p) for p in problems]
                _write_report(writer.root, fmt, recorded)  # before the shard: a resumed import rereads it anyway
                writer.write_shard(i, weights, rows)
                bar.update(b - a)
        writer.finish()
    zoo = load_zoo(out)
    problems = sorted(plan.problems + [Problem(**p) for i in sorted(recorded) for p in recorded[i]], key=_position)
    report = ImportReport(fmt, str(source), Path(out), plan.count, len(zoo), problems, zoo)
    if len(zoo) == 0:
        raise ImportFailed(f"no network could be imported\n{report.summary()}", problems)
    return report


def _strict(problems: list[Problem]) -> ImportFailed:
    more = f" (and {len(problems) - 1} more in this part of the source)" if len(problems) > 1 else ""
    return ImportFailed(f"strict import stopped: {problems[0]}{more}", problems)


def _read_report(root: Path) -> dict[int, list[dict]]:
    path = root / REPORT
    if not path.is_file():
        return {}
    try:
        shards = json.loads(path.read_text())["shards"]
        return {int(k): [dict(p) for p in v] for k, v in shards.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # rewritten from the source below
        return {}


def _write_report(root: Path, fmt: str, recorded: dict[int, list[dict]]) -> None:
    shards = {str(i): recorded[i] for i in sorted(recorded)}
    atomic_write(root / REPORT, (json.dumps({"format": fmt, "shards": shards}, indent=1) + "\n").encode())


def screen(batch: Batch, plan: Plan) -> tuple[dict[str, torch.Tensor], dict[str, list], list[Problem]]:
    """Drop the networks of ``batch`` whose weights are not all finite or that lack a value of some
    column (a float column may hold NaN; a missing value is None); the kept weights and rows, and
    every problem of the range (the batch's own first), in source order."""
    n = len(batch.index)
    reason: list[Problem | None] = [None] * n
    for name, t in batch.weights.items():
        bad = (~torch.isfinite(t.reshape(n, -1)).all(1)).nonzero().flatten().tolist() if n else []
        for j in bad:
            if reason[j] is None:
                reason[j] = Problem(batch.files[j], batch.index[j], NONFINITE, f"{name!r} holds NaN or inf")
    for col, values in batch.rows.items():
        for j, v in enumerate(values):
            if v is None and reason[j] is None:
                reason[j] = Problem(batch.files[j], batch.index[j], LABEL, f"no value for column {col!r}")
    keep = [j for j in range(n) if reason[j] is None]
    idx = torch.tensor(keep, dtype=torch.long)
    weights = {k: t.index_select(0, idx) for k, t in batch.weights.items()}
    rows = {c: [v[j] for j in keep] for c, v in batch.rows.items()}
    return weights, rows, sorted(batch.problems + [p for p in reason if p is not None], key=_position)


def _position(p: Problem) -> tuple:
    return (p.index is None, p.index or 0, p.file)


def empty_weights(template: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: torch.empty(0, *v.shape, dtype=dtype) for k, v in template.items()}


def arch_template(arch: dict) -> dict[str, torch.Tensor]:
    """The architecture's state dict (names and shapes) on the meta device."""
    from ..dataset import build_arch

    with torch.device("meta"):
        return build_arch(arch, "arch").state_dict()


def fingerprint(entries: Iterable) -> str:
    """A short sha256 of JSON-able ``entries`` (file names and sizes, layout text, ...)."""
    return hashlib.sha256(json.dumps(list(entries), sort_keys=True).encode()).hexdigest()[:16]


def dtype_of(name: str) -> torch.dtype:
    dt = getattr(torch, str(name), None)
    if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
        raise ZooError(f"dtype {name!r}: expected a floating-point torch dtype such as 'float32'")
    return dt


# ------------------------------------------------------------------ tables
def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV file, gzip-compressed or not (by its first bytes)."""
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, gzip.BadGzipFile) as e:
        raise ZooError(f"{path}: unreadable table ({type(e).__name__}: {e})") from None
    if not rows:
        raise ZooError(f"{path}: empty table")
    header, body = rows[0], rows[1:]
    bad = next((i for i, r in enumerate(body) if len(r) != len(header)), None)
    if bad is not None:
        raise ZooError(f"{path}: row {bad + 1} has {len(body[bad])} fields, the header {len(header)}")
    return header, body


_BOOLS = {"true": True, "false": False}


def _as_int(v: str) -> int:
    if v.strip().lstrip("+-").isdigit():
        return int(v)
    raise ValueError(v)


def _as_bool(v: str) -> bool:
    return _BOOLS[v.strip().lower()]


_PARSERS: dict[str, Callable[[str], Any]] = {"int": _as_int, "float": float, "bool": _as_bool, "str": str}


def column_type(values: list[str]) -> str:
    """The narrowest of ``int``, ``float``, ``bool``, ``str`` that reads every non-empty value."""
    present = [v for v in values if v != ""]
    for kind in ("int", "float", "bool"):
        try:
            for v in present:
                _PARSERS[kind](v)
        except (ValueError, KeyError):
            continue
        return kind
    return "str"


def typed_column(values: list[str], kind: str) -> list:
    """``values`` read as ``kind``; an empty field is a missing value (None)."""
    parse = _PARSERS[kind]
    return [None if v == "" else parse(v) for v in values]


# ------------------------------------------------------------------ checkpoints
#: Keys under which checkpoints nest their state dict, looked into in this order.
NESTED = ("state_dict", "model_state_dict", "model", "net", "params")


class CheckpointError(Exception):
    """A checkpoint file that could not be read (``reason`` is one of the Problem reasons)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of a checkpoint file and its other top-level entries (e.g. a ``label``).

    ``.safetensors`` files are parsed by safetensors; every other file by
    ``torch.load(weights_only=True)``, which unpickles nothing but tensors and plain containers:
    a file that needs anything else is refused (reason ``unsafe pickle``), never executed. A state
    dict nested under one of :data:`NESTED` is taken from there."""
    if not path.is_file():
        raise CheckpointError(MISSING_FILE, "no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load

            obj: Any = load(path.read_bytes())
        else:
            with warnings.catch_warnings():  # e.g. a pickle protocol torch does not write: refused below, or read
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        why = f"it needs {found[1]}, which is not a tensor type" if found else text.strip().split(". ")[0]
        raise CheckpointError(UNSAFE, f"refused by torch.load(weights_only=True): {why}") from None
    except Exception as e:  # torch / safetensors raise many types for truncated or corrupted files
        raise CheckpointError(UNREADABLE, f"truncated or corrupted ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(UNREADABLE, f"holds a {type(obj).__name__}, not a state dict")
    extras = {k: v for k, v in obj.items() if not isinstance(v, (torch.Tensor, dict))}
    while not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in NESTED if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise CheckpointError(KEYS, f"no tensors at the top level or under {', '.join(NESTED)}")
        obj = inner
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return tensors, extras


def match_template(sd: dict[str, torch.Tensor], template: dict[str, torch.Tensor],
                   dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``sd`` as the architecture's state dict: the same keys, shapes and, converted without loss,
    ``dtype``. Raises :class:`CheckpointError` (``keys``, ``shape`` or ``dtype``) naming the first
    mismatch."""
    missing = [k for k in template if k not in sd]
    extra = [k for k in sd if k not in template]
    if missing or extra:
        raise CheckpointError(KEYS, f"missing {_few(missing)}, unexpected {_few(extra)}")
    out = {}
    for k, want in template.items():
        t = sd[k]
        if tuple(t.shape) != tuple(want.shape):
            raise CheckpointError(SHAPE, f"{k!r} has shape {tuple(t.shape)}, the architecture {tuple(want.shape)}")
        if not t.is_floating_point():
            raise CheckpointError(DTYPE, f"{k!r} is {t.dtype}, expected floating-point weights")
        if t.dtype != dtype:
            c = t.to(dtype)
            back = c.to(t.dtype)
            if not bool(((back == t) | (back.isnan() & t.isnan())).all()):
                raise CheckpointError(DTYPE, f"{k!r} is {t.dtype}; converting it to {dtype} would change values")
            t = c
        out[k] = t
    return out


def _few(keys: list[str], n: int = 4) -> str:
    return "[" + ", ".join(map(repr, keys[:n])) + (f", ... ({len(keys)} in all)" if len(keys) > n else "") + "]"


@dataclass
class FileItem:
    """One network of a file-per-network source: its position, file, the name shown in reports,
    and its table row (values by column; None: not known yet)."""

    index: int
    path: Path
    name: str
    row: dict[str, Any]


def read_files(items: list[FileItem], template: dict[str, torch.Tensor], dtype: torch.dtype, columns: list[str],
               adapt: Callable[[dict[str, torch.Tensor], dict[str, Any], FileItem], dict[str, torch.Tensor]]) -> Batch:
    """Read ``items`` with :func:`read_checkpoint`; ``adapt(tensors, extras, item)`` turns a file's
    tensors into the architecture's names (and may fill ``item.row`` from ``extras``); the result
    is checked with :func:`match_template`. Unreadable or mismatching files become problems."""
    index, files, rows, sds, problems = [], [], {c: [] for c in columns}, [], []
    for it in items:
        try:
            tensors, extras = read_checkpoint(it.path)
            sd = match_template(adapt(tensors, extras, it), template, dtype)
        except CheckpointError as e:
            problems.append(Problem(it.name, it.index, e.reason, str(e)))
            continue
        index.append(it.index)
        files.append(it.name)
        sds.append(sd)
        for c in columns:
            rows[c].append(it.row.get(c))
    weights = {k: torch.stack([sd[k] for sd in sds]) for k in template} if sds else empty_weights(template, dtype)
    return Batch(index, files, weights, rows, problems)
