"""A plain folder (or list) of checkpoints of one architecture: what a user's own experiments produce.

``SRC`` is a directory (every ``.safetensors``, ``.pt``, ``.pth``, ``.bin``, ``.ckpt`` under it, in
path order) or a text file listing checkpoint paths, one a line (relative to the file). A
``.safetensors`` file is parsed by safetensors; any other by ``torch.load(weights_only=True)``,
which refuses a pickle that needs anything but tensors and plain containers. The state dict may be
nested under ``state_dict`` / ``model_state_dict`` / ``model`` / ``net`` / ``params``; a ``module.``
prefix on every key (``DataParallel``) is dropped; BatchNorm's ``num_batches_tracked`` counters are
ignored when the architecture does not store them.

``arch``: ``torchvision:NAME`` or ``timm:NAME`` (built with random weights, nothing downloaded), the
name of a registered architecture (:data:`~wgraph.zoo.archs.ARCHITECTURES`), or
``package.module:factory`` (imported now and registered under that name in this process only: a
manifest never imports code, so call :func:`~wgraph.zoo.register_arch` with the same name before
loading such a zoo). ``arch_kwargs``: JSON keyword arguments of the builder.

``labels``: a CSV file with one row per checkpoint; its ``key`` column (default ``file``) names the
checkpoint by its path relative to ``SRC``, its file name or its stem. Every other column becomes a
table column (typed int, float, bool or str; ``rename`` renames them); integer ``run`` /
``checkpoint`` columns are used as such (default: the checkpoint's position, 0). A checkpoint without
a row, or with an empty field, is skipped (``missing label``). A key that is a path relative to
another directory is matched by its file name when that name is unique in ``SRC``.

The Small Transformer Zoo's MNIST-Transformers (Tran et al. 2025) are such a folder:
``arch="small_vit"`` (:class:`~wgraph.zoo.archs.SmallViT`), labels ``metadata/mnist.csv``, key
``ckpt_file``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from ...errors import ZooError
from ..archs import ARCHITECTURES, register_arch
from .common import (
    DUPLICATE,
    LABEL,
    MISSING_FILE,
    FileItem,
    Plan,
    Problem,
    arch_template,
    column_type,
    dtype_of,
    fingerprint,
    read_csv,
    read_files,
    typed_column,
)

HELP = "a folder or list of checkpoints (.safetensors / .pt) of one architecture, labels from a CSV"
SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def resolve_arch(spec: str, kwargs: dict | None, input_shape: list[int] | None) -> dict:
    """The manifest ``arch`` of an architecture SPEC (see the module docstring)."""
    kwargs = dict(kwargs or {})
    library, _, name = spec.partition(":")
    if library in ("torchvision", "timm") and name:
        arch = {"name": library, "kwargs": {"model": name, **kwargs}}
        shape = input_shape or ([1, 3, 224, 224] if library == "torchvision" else None)
    elif spec in ARCHITECTURES:
        arch, shape = {"name": spec, "kwargs": kwargs}, input_shape
    elif name:
        try:
            factory = getattr(importlib.import_module(library), name)
        except (ImportError, AttributeError) as e:
            raise ZooError(f"architecture {spec!r}: cannot import it ({e})") from None
        register_arch(spec, factory)
        arch, shape = {"name": spec, "kwargs": kwargs}, input_shape
    else:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ZooError(f"architecture {spec!r}: expected torchvision:NAME, timm:NAME, package.module:factory or "
                       f"one of {known}")
    if shape is None:
        from ..dataset import build_arch

        example = getattr(build_arch(arch), "example_input", None)
        if not isinstance(example, torch.Tensor):
            raise ZooError(f"architecture {spec!r}: give input_shape (--input-shape), e.g. 1,784")
        shape = list(example.shape)
    return {**arch, "input_shape": [int(s) for s in shape]}


def list_files(src: Path) -> tuple[Path, list[Path]]:
    """The root that names are relative to, and the checkpoint files of ``src``."""
    if src.is_dir():
        return src, sorted(p for p in src.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    if src.is_file():
        lines = [s.strip() for s in src.read_text().splitlines()]
        return src.parent, [src.parent / s for s in lines if s and not s.startswith("#")]
    raise ZooError(f"{src}: no such directory or list file")


def _labels(path: Path, key: str, names: list[str], rename: dict[str, str]) -> tuple[dict, dict[int, dict], list]:
    """Column types, each file's row (by position), and the rows that name no file."""
    header, body = read_csv(path)
    if key not in header:
        raise ZooError(f"{path}: no column {key!r} naming the checkpoints (key=, --key); columns: {header}")
    k = header.index(key)
    cols = {j: rename.get(c, c) for j, c in enumerate(header) if j != k}
    types = {c: column_type([r[j] for r in body]) for j, c in cols.items()}
    values = {c: typed_column([r[j] for r in body], types[c]) for j, c in cols.items()}
    aliases: dict[str, set[int]] = {}
    for i, name in enumerate(names):
        for alias in (name, Path(name).name, Path(name).stem):
            aliases.setdefault(alias, set()).add(i)
    lookup = {a: i.pop() for a, i in aliases.items() if len(i) == 1}  # an ambiguous alias names nothing
    rows, unmatched = {}, []
    for r, fields in enumerate(body):
        v = fields[k]
        i = lookup.get(v, lookup.get(Path(v).name))  # a path relative to another root ends in the file name
        if i is None or i in rows:
            why = "names no checkpoint in the source" if i is None else f"repeats the row of {names[i]!r}"
            reason = MISSING_FILE if i is None else DUPLICATE
            unmatched.append(Problem(path.name, None, reason, f"row {r + 1}: {v!r} {why}"))
            continue
        rows[i] = {c: values[c][r] for c in cols.values()}
    return types, rows, unmatched


def plan(src, *, arch: str, arch_kwargs: dict | None = None, input_shape: list[int] | None = None,
         labels: str | None = None, key: str = "file", rename: dict[str, str] | None = None,
         dtype: str = "float32") -> Plan:
    """Plan the import of the checkpoints in ``src`` (see the module docstring); ``rename``: new
    names of label columns (e.g. ``{"test_top1_accuracy": "test_acc"}``)."""
    root, files = list_files(Path(src))
    names = [p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p) for p in files]
    spec = resolve_arch(arch, arch_kwargs, input_shape)
    template, dt = arch_template(spec), dtype_of(dtype)
    types, rows, problems = ({}, {}, []) if labels is None else _labels(Path(labels), key, names, rename or {})
    for c in ("run", "checkpoint"):
        if c in types and types[c] != "int":
            raise ZooError(f"{labels}: column {c!r} must hold integers (it is used as the zoo's {c})")
    columns = {"run": "int", "checkpoint": "int", "source": "str"} | types
    items, ok, seen = [], set(), set()
    for i, (path, name) in enumerate(zip(files, names)):
        row = {"run": i, "checkpoint": 0, "source": name} | rows.get(i, {})
        items.append(FileItem(i, path, name, row))
        if labels is not None and i not in rows:
            problems.append(Problem(Path(labels).name, i, LABEL, f"no row for {name!r} (key column {key!r})"))
        elif (row["run"], row["checkpoint"]) in seen:
            problems.append(Problem(name, i, DUPLICATE, f"(run, checkpoint) {row['run'], row['checkpoint']} again"))
        else:
            seen.add((row["run"], row["checkpoint"]))
            ok.add(i)
    prefixed = any(k.startswith("module.") for k in template)
    counters = any(k.endswith("num_batches_tracked") for k in template)

    def adapt(tensors, extras, item):
        if tensors and not prefixed and all(k.startswith("module.") for k in tensors):
            tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
        if not counters:
            tensors = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
        return tensors

    def read(start: int, stop: int):
        return read_files([it for it in items[start:stop] if it.index in ok], template, dt, list(columns), adapt)

    options = {"arch": arch, "arch_kwargs": arch_kwargs or {}, "input_shape": spec["input_shape"], "labels": labels,
               "key": key, "rename": rename or {}}
    fp = fingerprint([(n, p.stat().st_size if p.is_file() else -1) for n, p in zip(names, files)]
                     + ([Path(labels).stat().st_size] if labels else []))
    return Plan("checkpoints", spec, columns, options, fp, len(items), read, dt, problems)


def add_arguments(p) -> None:
    p.add_argument("--arch", required=True, help="torchvision:NAME, timm:NAME, a registered architecture, or "
                   "package.module:factory")
    p.add_argument("--arch-kwargs", default="{}", help="JSON keyword arguments of the architecture's builder")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,784 (torchvision default 1,3,224,224)")
    p.add_argument("--labels", help="CSV with one row per checkpoint")
    p.add_argument("--key", default="file", help="the CSV column naming the checkpoint (default 'file')")
    p.add_argument("--rename", help="rename label columns, OLD=NEW[,OLD=NEW...] (e.g. test_top1_accuracy=test_acc)")
    p.add_argument("--dtype", default="float32", help="dtype of the stored weights (default float32)")


def options(args) -> dict:
    try:
        kwargs = json.loads(args.arch_kwargs)
    except json.JSONDecodeError as e:
        raise ZooError(f"--arch-kwargs: not JSON ({e})") from None
    shape = [int(s) for s in args.input_shape.split(",")] if args.input_shape else None
    pairs = [p.split("=", 1) for p in args.rename.split(",")] if args.rename else []
    if any(len(p) != 2 for p in pairs):
        raise ZooError(f"--rename {args.rename!r}: expected OLD=NEW[,OLD=NEW...]")
    return {"arch": args.arch, "arch_kwargs": kwargs, "input_shape": shape, "labels": args.labels, "key": args.key,
            "rename": dict(pairs), "dtype": args.dtype}
