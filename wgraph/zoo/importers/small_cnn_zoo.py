"""The Small CNN Zoo (Unterthiner et al., "Predicting Neural Network Accuracy from Weights", 2020),
as the NFN, neural-graphs and ScaleGMN loaders read it::

    SRC/
      weights.npy       (N, P) float: one flattened network per row
      layout.csv        varname, start_idx, end_idx, shape: the columns of a row that hold each
                        TensorFlow variable, e.g. "sequential/conv2d/kernel:0", 0, 144, "(3, 3, 1, 16)"
      metrics.csv.gz    one row per row of weights.npy: config.* hyperparameters, modeldir (the
                        training run), step, test_accuracy, test_loss, train_accuracy, train_loss

Every variable is read from its slice of the row in C order with its TensorFlow shape, and mapped
to the equivalent torch tensor: a convolution kernel ``(kh, kw, in, out)`` (HWIO) becomes
``(out, in, kh, kw)``, a dense kernel ``(in, out)`` becomes ``(out, in)``, biases stay. The torch
network is :func:`~wgraph.zoo.archs.tf_cnn`, which computes what the TensorFlow network computes
(TensorFlow's ``"same"`` padding included) for the stride and padding given (the published files do
not record them; the defaults are stride 2 and ``"valid"``, Keras' default padding, as
:func:`~wgraph.zoo.archs.small_cnn`), and whose activation is each network's ``config.activation``.

Table: the metrics columns with ``config.`` dropped and ``test_accuracy`` / ``train_accuracy``
renamed ``test_acc`` / ``train_acc`` (the names of wgraph's CNN zoos, so ``wgraph train`` reads them),
plus ``run`` (one number per ``modeldir``), ``checkpoint`` (the rank of ``step`` among the file's
steps), ``row`` (the row of ``weights.npy``) and ``source``.

``weights.npy`` is memory-mapped, never loaded with ``allow_pickle``; a file cut short keeps its
whole rows (the others are reported ``truncated``).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...errors import ZooError
from ..archs import ACTIVATIONS
from .common import (
    ACTIVATION,
    DUPLICATE,
    LABEL,
    TRUNCATED,
    Batch,
    Plan,
    Problem,
    column_type,
    fingerprint,
    read_csv,
    typed_column,
)

HELP = "the Small CNN Zoo (Unterthiner et al. 2020): weights.npy, layout.csv, metrics.csv.gz"
RENAMES = {"test_accuracy": "test_acc", "train_accuracy": "train_acc"}
#: Image size of each ``config.dataset`` of the published zoo (all stored as 1-channel images).
INPUT_SIZES = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "svhn_cropped": 32}
OWN_COLUMNS = {"run": "int", "checkpoint": "int", "row": "int", "source": "str"}


@dataclass(frozen=True)
class Variable:
    name: str
    start: int
    stop: int
    shape: tuple[int, ...]


def read_layout(path: Path, width: int) -> list[Variable]:
    """The variables of ``layout.csv``, checked against rows of ``width`` values."""
    header, rows = read_csv(path)
    need = ("varname", "start_idx", "end_idx", "shape")
    if any(c not in header for c in need):
        raise ZooError(f"{path}: expected the columns {', '.join(need)}, found {', '.join(header)}")
    col = {c: header.index(c) for c in need}
    out, taken = [], np.zeros(width, dtype=bool)
    for i, r in enumerate(rows):
        where = f"{path}, row {i + 1} ({r[col['varname']]})"
        try:
            start, stop = int(r[col["start_idx"]]), int(r[col["end_idx"]])
        except ValueError:
            raise ZooError(f"{where}: start_idx / end_idx must be integers") from None
        shape = tuple(int(s) for s in re.findall(r"\d+", r[col["shape"]]))
        if not (0 <= start < stop <= width) or math.prod(shape) != stop - start or not shape:
            raise ZooError(f"{where}: slice {start}:{stop} and shape {r[col['shape']]!r} do not fit rows of {width}")
        if taken[start:stop].any():
            raise ZooError(f"{where}: slice {start}:{stop} overlaps another variable")
        taken[start:stop] = True
        out.append(Variable(r[col["varname"]], start, stop, shape))
    return out


def torch_names(variables: list[Variable], where: Path) -> dict:
    """The :func:`~wgraph.zoo.archs.tf_cnn` keyword arguments and the torch name of each variable:
    (kernel, bias) pairs, convolutions (4-D kernels) first, then one dense layer."""
    pairs = list(zip(variables[::2], variables[1::2]))
    ok = len(variables) % 2 == 0 and len(pairs) >= 2 and all(
        k.name.endswith("kernel:0") and b.name.endswith("bias:0") and b.shape == k.shape[-1:] for k, b in pairs
    )
    convs, dense = pairs[:-1], pairs[-1]
    ok = ok and all(len(k.shape) == 4 and k.shape[0] == k.shape[1] for k, _ in convs) and len(dense[0].shape) == 2
    channels = [convs[0][0].shape[2]] + [k.shape[3] for k, _ in convs] if ok else []
    ok = ok and all(k.shape[2] == c for (k, _), c in zip(convs, channels)) and dense[0].shape[0] == channels[-1]
    if not ok:
        found = ", ".join(f"{v.name} {v.shape}" for v in variables)
        raise ZooError(f"{where}: expected (kernel, bias) pairs of square convolutions (kh, kw, in, out) "
                       f"followed by one dense layer (in, out); found {found}")
    names = {}
    for i, (k, b) in enumerate(convs):
        names[k.name], names[b.name] = f"conv{i}.weight", f"conv{i}.bias"
    names[dense[0].name], names[dense[1].name] = "dense.weight", "dense.bias"
    kwargs = {"channels": channels, "kernel_size": [k.shape[0] for k, _ in convs], "classes": dense[0].shape[1]}
    return {"kwargs": kwargs, "names": names}


def open_rows(path: Path) -> tuple[np.ndarray | None, int, int, int]:
    """``weights.npy`` memory-mapped: (the whole rows, or None), rows the header declares, row
    width, and how many rows the file holds whole."""
    if not path.is_file():
        raise ZooError(f"{path}: no such file")
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read:
                raise ValueError(f"npy format version {version}")
            shape, fortran, dtype = read[version](f)
        except ValueError as e:
            raise ZooError(f"{path}: not a readable .npy array ({e})") from None
        offset = f.tell()
    if dtype.kind != "f" or len(shape) != 2 or fortran:
        raise ZooError(f"{path}: expected a 2-D C-order float array, found {dtype} of shape {shape}"
                       + (" in Fortran order" if fortran else ""))
    n, width = shape
    whole = min(n, (path.stat().st_size - offset) // max(1, width * dtype.itemsize))
    mm = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(whole, width)) if whole else None
    return mm, n, width, whole


def ranges(positions: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted ``positions`` as (first, count)."""
    out: list[tuple[int, int]] = []
    for p in positions:
        if out and out[-1][0] + out[-1][1] == p:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((p, 1))
    return out


def read_metrics(path: Path) -> tuple[dict[str, list[str]], int]:
    """The metrics columns as text, named as the zoo's table names them, and the number of rows."""
    header, body = read_csv(path)
    names = [RENAMES.get(c.removeprefix("config."), c.removeprefix("config.")) for c in header]
    clash = sorted({c for c in names if names.count(c) > 1 or c in OWN_COLUMNS})
    if clash:
        own = list(OWN_COLUMNS)
        raise ZooError(f"{path}: columns {clash} clash (after dropping 'config.') with each other or with {own}")
    return {c: [r[j] for r in body] for j, c in enumerate(names)}, len(body)


def plan(src, *, stride: int = 2, padding: str = "valid", input_size: list[int] | None = None,
         steps: list[int] | None = None, activation: str = "relu", weights: str = "weights.npy",
         layout: str = "layout.csv", metrics: str = "metrics.csv.gz") -> Plan:
    """Plan the import of the Small-CNN-Zoo directory ``src``. ``stride`` / ``padding``: of every
    convolution (TensorFlow's meaning); ``input_size``: (H, W) of the images (default: from
    ``config.dataset``); ``steps``: import only the checkpoints of these ``step`` values (e.g. 86,
    the end of training); ``activation``: when the metrics have no ``config.activation``."""
    root = Path(src)
    w_path, l_path, m_path = root / weights, root / layout, root / metrics
    for p in (l_path, m_path):
        if not p.is_file():
            raise ZooError(f"{p}: no such file (a Small CNN Zoo directory holds {weights}, {layout}, {metrics})")
    mm, n_declared, width, whole = open_rows(w_path)
    variables = read_layout(l_path, width)
    tf = torch_names(variables, l_path)
    raw, n_metrics = read_metrics(m_path)
    total = max(n_declared, n_metrics)
    step_col = typed_column(raw["step"], "int") if "step" in raw and column_type(raw["step"]) == "int" else None
    if steps is not None and step_col is None:
        raise ZooError(f"{m_path}: no integer 'step' column to select steps {steps} from")
    wanted = set(steps or [])
    positions = [r for r in range(total) if steps is None or r >= n_metrics or step_col[r] in wanted]

    picked = [r for r in positions if r < n_metrics]
    types = {c: column_type(v) for c, v in raw.items()}
    table = {c: typed_column(v, types[c]) for c, v in raw.items()}
    run_keys = raw.get("modeldir") or [str(r) for r in range(n_metrics)]
    run_ids = {k: i for i, k in enumerate(dict.fromkeys(run_keys))}
    step_rank = {s: i for i, s in enumerate(sorted({s for s in step_col if s is not None}))} if step_col else {}

    problems, ok, seen = [], np.zeros(total, dtype=bool), set()
    acts = table.get("activation")
    for r in positions:
        if r >= whole or r >= n_metrics:
            continue
        if acts is not None and acts[r] not in ACTIVATIONS:
            problems.append(Problem(metrics, r, ACTIVATION, f"{acts[r]!r} is not one of {sorted(ACTIVATIONS)}"))
            continue
        key = (run_ids[run_keys[r]], step_rank.get(step_col[r], 0) if step_col else 0)
        if key in seen:
            problems.append(Problem(metrics, r, DUPLICATE, f"run {run_keys[r]!r} has this step twice"))
            continue
        seen.add(key)
        ok[r] = True
    for first, count in ranges([r for r in positions if whole <= r < n_declared]):
        detail = f"the file ends after {whole} whole rows of the {n_declared} its header declares"
        problems.append(Problem(weights, first, TRUNCATED, detail, count))
    for first, count in ranges([r for r in positions if n_declared <= r]):
        detail = f"{metrics} has {n_metrics} rows, {weights} {n_declared}"
        problems.append(Problem(weights, first, TRUNCATED, detail, count))
    for first, count in ranges([r for r in positions if n_metrics <= r < whole]):
        problems.append(Problem(metrics, first, LABEL, f"no metrics row ({metrics} has {n_metrics} rows)", count))

    valid_acts = sorted({acts[r] for r in positions if ok[r]}) if acts is not None else [activation]
    template_act = valid_acts[0] if len(valid_acts) == 1 else "gelu"
    size = _input_size(input_size, table.get("dataset"), picked, m_path)
    channels = tf["kwargs"]["channels"]
    kwargs = {**tf["kwargs"], "stride": stride, "padding": padding, "input_size": size, "activation": template_act}
    arch = {"name": "tf_cnn", "kwargs": kwargs, "input_shape": [1, channels[0], *size]}
    if acts is not None:
        arch["per_network"] = {"activation": "activation"}
    columns = {**OWN_COLUMNS, **types}
    native = np.dtype(mm.dtype if mm is not None else np.float32).newbyteorder("=")
    dtype = torch.from_numpy(np.zeros(0, dtype=native)).dtype

    def read(a: int, b: int) -> Batch:
        rows = [r for r in positions[a:b] if ok[r]]
        if rows and rows[-1] - rows[0] == len(rows) - 1:
            block = np.array(mm[rows[0] : rows[-1] + 1])  # one sequential read
        else:
            block = mm[rows] if rows else np.zeros((0, width), dtype=native)
        w = {}
        for v in variables:
            arr = block[:, v.start : v.stop].reshape(len(rows), *v.shape)
            if len(v.shape) == 4:
                arr = arr.transpose(0, 4, 3, 1, 2)  # HWIO -> OIHW
            elif len(v.shape) == 2:
                arr = arr.transpose(0, 2, 1)  # (in, out) -> (out, in)
            w[tf["names"][v.name]] = torch.from_numpy(np.ascontiguousarray(arr, dtype=native))
        own = {
            "run": [run_ids[run_keys[r]] for r in rows],
            "checkpoint": [step_rank.get(step_col[r], 0) if step_col else 0 for r in rows],
            "row": rows, "source": [f"{weights}[{r}]" for r in rows],
        }
        table_rows = {c: [v[r] for r in rows] for c, v in table.items()}
        return Batch(rows, [weights] * len(rows), w, {**own, **table_rows})

    options = {"stride": stride, "padding": padding, "input_size": size, "steps": steps, "activation": activation,
               "files": [weights, layout, metrics]}
    fp = fingerprint([n_declared, width, w_path.stat().st_size, hashlib.sha256(l_path.read_bytes()).hexdigest(),
                      m_path.stat().st_size])
    return Plan("cnn", arch, columns, options, fp, len(positions), read, dtype, problems)


def _input_size(given, datasets, picked: list[int], where: Path) -> list[int]:
    if given is not None:
        size = [int(s) for s in given]
        return size * 2 if len(size) == 1 else size
    names = sorted({datasets[r] for r in picked}) if datasets is not None else []
    if len(names) == 1 and names[0] in INPUT_SIZES:
        return [INPUT_SIZES[names[0]]] * 2
    raise ZooError(f"{where}: cannot tell the image size from config.dataset {names or '(no such column)'}; "
                   f"pass input_size (--input-size H,W); the published datasets: {INPUT_SIZES}")


def add_arguments(p) -> None:
    p.add_argument("--stride", type=int, default=2, help="stride of every convolution (default 2)")
    p.add_argument("--padding", choices=["same", "valid"], default="valid",
                   help="TensorFlow padding of every convolution (default 'valid', Keras' default)")
    p.add_argument("--input-size", help="image H,W (default: from config.dataset: 28 for MNIST / Fashion-MNIST, "
                   "32 for CIFAR-10 / SVHN)")
    p.add_argument("--steps", help="import only these steps, e.g. 86 (the end of training)")


def options(args) -> dict:
    ints = lambda s: [int(x) for x in s.split(",")] if s else None  # noqa: E731
    return {"stride": args.stride, "padding": args.padding, "input_size": ints(args.input_size),
            "steps": ints(args.steps)}
