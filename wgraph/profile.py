r"""Memory and runtime of neural functionals on one architecture, each configuration in its own process.

A *configuration* is an architecture, a batch size ``B`` (networks), a width ``C`` (channels or node
state size), a *method* and a *scope*:

* methods: ``gnn-<backend>`` (the graph NFN with message passing through that
  :mod:`wgraph.kernels` backend: ``reference``, ``fused``, ``pyg``, ``scatter``, ``triton``), the
  parameter-sharing layers ``np``, ``hnp``, ``monomial``, ``magep`` (:mod:`wgraph.nn`), and ``nfn``'s
  ``nfn-np`` / ``nfn-hnp`` when that package is installed;
* scope ``layer``: one ``C -> C`` layer, forward, and backward from fixed random gradients of its
  outputs, on node states ``(B, N, C)`` (graph NFN; the edge inputs are the raw weights, re-lifted
  inside the kernel) or on a ``C``-channel weight-space input (parameter-sharing layers), inputs
  requiring gradients;
* scope ``model``: one training step (forward, MSE loss, backward, Adam step) of a whole model of
  ``layers`` layers of width ``C`` built from the method's preset (``models/gnn.toml``,
  ``np.toml``, ...) on the raw weights.

Every configuration runs in a fresh subprocess (``python -m wgraph.profile --worker JSON``) so that
the allocations of one cannot hide in another's peak. Memory:

* CPU: a second process measures memory, started with glibc told to serve every allocation of
  64 KB or more from a mapping of its own, unmapped when freed (``MALLOC_MMAP_THRESHOLD_=65536``).
  After the inputs are built and a warm-up step has run, ``malloc_trim(0)`` hands every free page
  of the heap back to the OS and the resident-set high-water mark (``VmHWM``) is reset
  (``/proc/self/clear_refs``); ``step_mb`` is the high-water mark of one more step minus the
  resident size at the reset. The peak then follows the live tensors and every other allocation
  (the native kernels' own buffers, the heap of small objects), not where the heap's free chunks
  happen to lie: with glibc's default settings a step's peak moved by 50-150 MB from run to run.
  ``total_mb`` adds the inputs (resident size after the inputs minus after the imports). Time is
  measured in the first process, with the default settings (a mapping per allocation costs page
  faults).
* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the memory
  allocated before the step (``step_mb``); ``total_mb`` is the peak itself.

Time is the best of ``reps`` steps after one warm-up step (which builds kernels, allocates caches and
optimizer state), or of more steps (up to 50) while they have taken under a second in all; steps
stop repeating once they have taken 10 s in all; CUDA steps are synchronized. A
configuration a method cannot represent (parameter-sharing layers need a chain of layers, for
example) is recorded with the reason; one whose estimated memory exceeds the cap is skipped with the
estimate; one that runs past the timeout is recorded as such. :func:`profile` runs a grid of
configurations and returns records; :func:`write_csv` and :func:`plot` write them out. The command
``wgraph profile`` does all of it.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import SpecError, WgraphError

GNN_BACKENDS = ("reference", "fused", "pyg", "scatter", "triton")
PS_METHODS = ("np", "hnp", "monomial", "magep")
NFN_METHODS = ("nfn-np", "nfn-hnp")
METHODS = (*(f"gnn-{b}" for b in GNN_BACKENDS), *PS_METHODS, *NFN_METHODS)

#: The environment of the CPU memory process: glibc maps every allocation of 64 KB or more on its own.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 16)}
SCOPES = ("layer", "model")
_NFN_INSTALLED = importlib.util.find_spec("nfn") is not None


class ProfileError(WgraphError):
    """A bad profiling request (unknown method or scope, an architecture that does not resolve)."""


@dataclass
class Config:
    """One measurement. ``arch`` is a spec string (see :func:`resolve_arch`)."""

    arch: str
    batch: int
    width: int
    method: str
    scope: str = "layer"
    layers: int = 4
    device: str = "cpu"
    threads: int = 1
    reps: int = 3
    input_shape: tuple[int, ...] | None = None
    aggr: tuple[str, ...] = ("mean",)  # graph NFN methods: the aggregators of its message passing
    extra: dict = field(default_factory=dict)  # free-form labels carried into the record


# ----------------------------------------------------------------------------- architectures
ARCH_HELP = (
    "mlp:784,256,256,10 | siren:2,32,32,1 | cnn:CHANNELS (Small-CNN-Zoo CNN, 1x28x28) | torchvision:NAME | "
    "package.module:factory | a zoo directory"
)


def resolve_arch(spec: str, input_shape: tuple[int, ...] | None = None):
    """``(model, example_input)`` for an architecture spec (see :data:`ARCH_HELP`)."""
    import torch

    from .zoo import mlp, small_cnn

    if spec.startswith(("mlp:", "siren:")):
        kind, _, sizes = spec.partition(":")
        try:
            widths = tuple(int(s) for s in sizes.split(","))
        except ValueError:
            raise ProfileError(f"{spec!r}: expected comma-separated layer sizes, e.g. mlp:784,256,256,10") from None
        # the activation does not change the weight space: tanh stands in for a SIREN's sine
        return mlp(widths, torch.nn.Tanh if kind == "siren" else torch.nn.ReLU), torch.randn(1, widths[0])
    if spec.startswith("cnn:"):
        return small_cnn(channels=int(spec[4:])), torch.randn(1, 1, 28, 28)
    if Path(spec).is_dir():
        from .zoo import load_zoo

        zoo = load_zoo(spec)
        return zoo.model(), zoo.example_input()
    from .convert.spec import resolve_spec

    try:
        model = resolve_spec(spec)
    except SpecError as e:
        raise ProfileError(f"architecture {spec!r} does not resolve ({e}); expected {ARCH_HELP}") from None
    if input_shape is None:
        if isinstance(getattr(model, "example_input", None), torch.Tensor):
            return model, model.example_input
        if not spec.startswith("torchvision:"):
            raise ProfileError(f"{spec}: pass an input shape (--input-shape 1,3,224,224)")
        input_shape = (1, 3, 224, 224)
    return model, torch.randn(input_shape)


_GRAPHS: dict = {}


def graph_of(spec: str, input_shape=None):
    """One network of the architecture as a :class:`~wgraph.graph.WeightGraph` (cached per process)."""
    from .convert import to_graph

    key = (spec, input_shape)
    if key not in _GRAPHS:
        model, x = resolve_arch(spec, input_shape)
        _GRAPHS[key] = to_graph(model.eval(), x)
    return _GRAPHS[key]


def layout_of(spec: str, input_shape=None):
    """The architecture's :class:`~wgraph.graph.Layout`."""
    return graph_of(spec, input_shape).layout


def random_batch(spec: str, batch: int, input_shape=None, scale: float = 0.1):
    """``batch`` networks of the architecture with i.i.d. ``N(0, scale^2)`` weights and node values."""
    import torch

    from .graph import WeightGraph

    g = WeightGraph.cat([graph_of(spec, input_shape)] * batch)
    edges = [None if e is None else torch.randn_like(e) * scale for e in g.edges]
    return WeightGraph(g.layout, torch.randn_like(g.nodes) * scale, edges, g.extras)


def network_size(layout) -> int:
    """Parameters of one network (the elements its weight graph stores)."""
    return layout.num_params


# ----------------------------------------------------------------------------- feasibility
def unsupported_reason(cfg: Config, layout) -> str | None:
    """Why ``cfg.method`` cannot run this configuration, or ``None``."""
    if cfg.method not in METHODS:
        raise ProfileError(f"unknown method {cfg.method!r}; expected one of {list(METHODS)}")
    if cfg.scope not in SCOPES:
        raise ProfileError(f"unknown scope {cfg.scope!r}; expected one of {list(SCOPES)}")
    if cfg.method.startswith("gnn-"):
        backend = cfg.method[4:]
        if backend == "triton" and cfg.device != "cuda":
            return "the triton backend runs on CUDA devices"
        from .kernels import missing_package

        needs = missing_package(backend)
        if needs:
            return f"the {backend} backend needs {needs}, which is not installed"
        if any(b.kind == "shared" for b in layout.blocks):
            return "graph NFNs do not read shared (tied-weight) blocks yet"
        return None
    if cfg.method.startswith("nfn-"):
        if cfg.scope != "layer":
            return "nfn layers are profiled at layer scope only"
        if not _NFN_INSTALLED:
            return "the nfn package is not installed (pip install nfn)"
    from .nn.weight_space import ChainSpec

    try:
        ChainSpec.from_layout(layout)
    except WgraphError as e:  # its first sentence names the block that breaks the chain
        return str(e).split(". ")[0]
    return None


def estimate_gb(cfg: Config, layout) -> float:
    """A rough upper estimate of the configuration's peak memory, for the cap (not a measurement).

    Parameter-sharing layers: parameters and their gradients (x3 for nfn's concatenations) plus six
    ``B x C x weights`` tensors per layer. Graph NFN with a materializing backend: four ``B x E x C``
    message tensors per direction (``E`` edges; a conv kernel is one edge), fused backends: the node
    states.
    """
    from .nn.weight_space import ChainSpec

    B, C = cfg.batch, cfg.width
    L = 1 if cfg.scope == "layer" else cfg.layers
    E = network_size(layout)
    if cfg.method.startswith("gnn-"):
        edges = layout.num_edges  # a conv kernel is one edge with K features
        materializes = cfg.method in ("gnn-reference", "gnn-pyg", "gnn-scatter")
        per_layer = 8 * B * edges * C * len(cfg.aggr) if materializes else 0
        nodes = 16 * B * layout.num_nodes * C
        return 4 * L * (per_layer + nodes) / 1e9
    import torch

    from .nn.np_layers import HNPLinear, NPLinear

    spec = ChainSpec.from_layout(layout)
    cls = HNPLinear if cfg.method.endswith("hnp") else NPLinear
    with torch.device("meta"):
        params = sum(p.numel() for p in cls(spec, C, C).parameters())
    factor = 3 if cfg.method.startswith("nfn-") else 2
    return 4 * L * (factor * params + 6 * B * C * E) / 1e9


# ----------------------------------------------------------------------------- the worker
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def _hwm_mb() -> float:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024


def _reset_peak() -> None:
    """Return freed heap to the OS, then reset the resident-set high-water mark (Linux)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _backward(outputs: list, grads: list) -> None:
    """Backward from ``outputs`` with fixed random gradients (drawn at the first call, the warm-up,
    and kept like the inputs): a layer's backward pass without a loss's own temporaries."""
    import torch

    if not grads:
        gen = torch.Generator(device=outputs[0].device).manual_seed(0)
        grads.extend(torch.randn(o.shape, generator=gen, device=o.device, dtype=o.dtype) for o in outputs)
    torch.autograd.backward(outputs, grads)


def _build(cfg: Config, layout):
    """``(step, params)``: a closure running one measured step, and the tensors whose gradients it sets."""
    import torch

    grads: list = []  # the layer scope's output gradients (see _backward)

    from .nn import from_preset
    from .nn.weight_space import ChainSpec, WeightSpace

    dev = torch.device(cfg.device)
    B, C = cfg.batch, cfg.width
    graph = random_batch(cfg.arch, B, cfg.input_shape).to(dev)
    if cfg.scope == "model":
        if cfg.method.startswith("gnn-"):
            model = from_preset("gnn", layout, hidden=C, layers=cfg.layers, aggr=list(cfg.aggr), backend=cfg.method[4:])
        else:
            model = from_preset(cfg.method, layout, hidden=C, layers=cfg.layers)
        model = model.to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        target = torch.zeros(B, 1, device=dev)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(model(graph), target)
            loss.backward()
            opt.step()

        return step, list(model.parameters())
    if cfg.method.startswith("gnn-"):
        from .nn import GraphNFN

        model = GraphNFN(layout, hidden=C, layers=1, aggr=tuple(cfg.aggr), backend=cfg.method[4:]).to(dev)
        with torch.no_grad():
            h, inputs = model.encode(graph)
        h.requires_grad_()
        layer = model.layers[0]

        def step():
            out, _ = layer(layout, h, inputs)
            _backward([out], grads)

        return step, [h, *layer.parameters()]
    spec = ChainSpec.from_layout(layout)
    ws = [torch.randn(B, C, *spec.weight_shape(i), device=dev, requires_grad=True) for i in range(spec.num_layers)]
    bs = [torch.randn(B, C, n, device=dev, requires_grad=True) for n in spec.sizes[1:]]
    x = WeightSpace(ws, bs, spec)
    if cfg.method.startswith("nfn-"):
        import nfn.layers as nfn_layers

        from .interop import nfn as wnfn

        cls = nfn_layers.NPLinear if cfg.method == "nfn-np" else nfn_layers.HNPLinear
        layer = cls(wnfn.network_spec(layout), C, C).to(dev)
        x = wnfn.to_wsfeat(x)
    else:
        from .nn import MAGEP, HNPLinear, MonomialLinear, NPLinear

        cls = {"np": NPLinear, "hnp": HNPLinear, "monomial": MonomialLinear, "magep": MAGEP}[cfg.method]
        layer = cls(spec, C, C).to(dev)

    def step():
        out = layer(x)
        _backward([*out.weights, *out.biases], grads)

    return step, [*ws, *bs, *layer.parameters()]


def measure(cfg: Config, part: str = "both") -> dict:
    """Run ``cfg`` in this process and return its measurements (see the module docstring): ``part``
    ``"time"``, ``"memory"`` or ``"both"``. On CPU, :func:`run_isolated` measures memory in a process
    of its own with large allocations mapped on their own; in any other process the memory step
    runs with whatever malloc settings that process has."""
    import torch

    torch.set_num_threads(cfg.threads)
    cuda = cfg.device == "cuda"
    if not cuda:
        _reset_peak()  # free heap left by earlier work in this process must not count against the base
    base = _rss_mb()
    torch.manual_seed(0)
    layout = layout_of(cfg.arch, cfg.input_shape)
    step, params = _build(cfg, layout)

    def run_step():
        step()
        if cuda:
            torch.cuda.synchronize()
        for p in params:
            p.grad = None

    # warm-up: lazy initialization (library handles, optimizer state, caches) is not a step's cost
    run_step()
    out = {"device_name": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__}
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    if part in ("time", "both") or cuda:  # on CUDA the peak is taken over the timed steps
        times = []
        # at least `reps` steps, more (up to 50) while they have taken under a second in all: the
        # best of many short steps; a step of over 10 s is not repeated
        while (len(times) < cfg.reps or (sum(times) < 1 and len(times) < 50)) and sum(times) <= 10:
            t = time.perf_counter()
            run_step()
            times.append(time.perf_counter() - t)
        out.update(time_s=min(times), reps=len(times))
    if part in ("memory", "both"):
        if cuda:
            peak = torch.cuda.max_memory_allocated()
            step_mb, total_mb = (peak - before) / 2**20, peak / 2**20
        else:
            _reset_peak()
            before = _rss_mb()
            run_step()
            peak = _hwm_mb()
            step_mb, total_mb = peak - before, peak - base
        out.update(step_mb=round(step_mb, 1), total_mb=round(total_mb, 1))
    return out


# ----------------------------------------------------------------------------- isolation
class WorkerFailed(Exception):
    """A measurement subprocess exited with an error; ``returncode`` and the last line of its stderr."""

    def __init__(self, returncode: int, last_line: str):
        super().__init__(f"exit {returncode}: {last_line}")
        self.returncode, self.last_line = returncode, last_line


def run_worker(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> dict:
    """``python *argv`` in a new process (with ``env`` added to the environment); returns the JSON
    object on its last stdout line.

    Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds and :class:`WorkerFailed` if the
    worker fails or prints no result.
    """
    env = {**os.environ, **env} if env else None
    p = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=env)
    out = p.stdout.strip().splitlines()
    if p.returncode != 0 or not out:
        err = [line for line in p.stderr.strip().splitlines() if line.strip()]
        raise WorkerFailed(p.returncode, err[-1] if err else "")
    return json.loads(out[-1])


def run_measurement(argv: list[str], device: str, timeout: float) -> dict:
    """One configuration's measurements from a worker ``python *argv`` that takes ``--part``: on CPU
    time with the default malloc settings and memory in a process of its own started with
    :data:`MEMORY_ENV` (see the module docstring), on CUDA both in one process."""
    if device == "cuda":
        return run_worker(argv, timeout)
    res = run_worker([*argv, "--part", "time"], timeout)
    res.update(run_worker([*argv, "--part", "memory"], timeout, env=MEMORY_ENV))
    return res


def run_isolated(cfg: Config, *, timeout: float = 600, mem_cap_gb: float = 8.0) -> dict:
    """Measure ``cfg`` in its own subprocess; the record is the config plus results and a ``status``."""
    layout = layout_of(cfg.arch, cfg.input_shape)
    rec = {**asdict(cfg), "params_per_net": network_size(layout)}
    rec.update(rec.pop("extra"))
    why = unsupported_reason(cfg, layout)
    if why:
        return {**rec, "status": f"n/a: {why}"}
    est = estimate_gb(cfg, layout)
    rec["estimate_gb"] = round(est, 2)
    if est > mem_cap_gb:
        return {**rec, "status": f"skipped: estimated {est:.1f} GB > {mem_cap_gb:g} GB cap"}
    t = time.perf_counter()
    try:
        res = run_measurement(["-m", "wgraph.profile", "--worker", json.dumps(asdict(cfg))], cfg.device, timeout)
    except subprocess.TimeoutExpired:
        return {**rec, "status": f"skipped: over {timeout:g} s"}
    except WorkerFailed as e:
        return {**rec, "status": f"failed (exit {e.returncode}): {e.last_line}"}
    return {**rec, **res, "status": "ok", "wall_s": round(time.perf_counter() - t, 1)}


def profile(configs: list[Config], *, timeout: float = 600, mem_cap_gb: float = 8.0, progress: bool = True) -> list[dict]:
    """Measure every configuration, each in its own process; records in order."""
    from tqdm.auto import tqdm

    records = []
    bar = tqdm(configs, desc="profile", unit="config", disable=not progress)
    for cfg in bar:
        bar.set_postfix_str(f"{cfg.method} B={cfg.batch} C={cfg.width}")
        records.append(run_isolated(cfg, timeout=timeout, mem_cap_gb=mem_cap_gb))
    return records


# ----------------------------------------------------------------------------- output
COLUMNS = ("arch", "scope", "batch", "width", "method", "device", "threads", "params_per_net", "time_s", "step_mb",
           "total_mb", "status")  # fmt: skip


def table(records: list[dict]) -> str:
    """A Markdown table of the records, with time and memory relative to the first ``ok`` method of each
    (arch, scope, batch, width, device, threads) group."""
    lines = [
        "| arch | scope | batch | width | method | time / step | step memory | total memory | time ratio | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base: dict = {}
    for r in records:
        key = (r["arch"], r["scope"], r["batch"], r["width"], r["device"], r["threads"])
        if r["status"] != "ok":
            lines.append(f"| {r['arch']} | {r['scope']} | {r['batch']} | {r['width']} | {r['method']} | {r['status']} | | | | |")
            continue
        ref = base.setdefault(key, r)
        tr = f"{r['time_s'] / ref['time_s']:.2f}x"
        mr = f"{r['step_mb'] / ref['step_mb']:.2f}x" if ref["step_mb"] > 0 else "-"
        lines.append(
            f"| {r['arch']} | {r['scope']} | {r['batch']} | {r['width']} | {r['method']} | {r['time_s']:.3g} s | "
            f"{r['step_mb']:.0f} MB | {r['total_mb']:.0f} MB | {tr} | {mr} |"
        )
    return "\n".join(lines)


def write_csv(records: list[dict], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(records)


def plot(records: list[dict], path: str | Path, x: str = "width") -> Path | None:
    """Memory and time against ``x`` (``"width"`` or ``"size"``: weights in the batch, ``batch x
    params_per_net``), one line per method; log-log axes. Returns the path, or ``None`` if fewer than
    two points of any method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ok = [r for r in records if r["status"] == "ok"]
    xs = (lambda r: r["width"]) if x == "width" else (lambda r: r["batch"] * r["params_per_net"])
    series: dict[str, list] = {}
    for r in ok:
        series.setdefault(r["method"], []).append((xs(r), r["step_mb"], r["time_s"]))
    if not any(len({p[0] for p in pts}) > 1 for pts in series.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, pts in series.items():
        pts.sort()
        for ax, i in zip(axes, (1, 2)):
            style = "-" if method.startswith("gnn-") else "--"
            ax.plot([p[0] for p in pts], [max(p[i], 1e-3) for p in pts], style, marker="o", label=method)
    xlabel = "width C (channels)" if x == "width" else "weights in the batch (B x parameters per network)"
    for ax, ylabel in zip(axes, ("peak memory of the step (MB)", "time per step (s)")):
        ax.set_xscale("log", base=2 if x == "width" else 10)
        if x == "width":
            ax.set_xticks(sorted({r["width"] for r in ok}))
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    archs = sorted({r["arch"] for r in ok})
    dev = sorted({r.get("device_name", r["device"]) for r in ok})
    fig.suptitle(f"{', '.join(archs)}: forward + backward ({', '.join(dev)})", fontsize=10)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# ----------------------------------------------------------------------------- command line
def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t]
    except ValueError:
        raise ProfileError(f"expected comma-separated integers, got {text!r}") from None


def default_methods(device: str) -> list[str]:
    """Every method that can run here: graph-NFN backends for the device, the parameter-sharing layers,
    and nfn's when installed (the ones that cannot represent an architecture are listed as such)."""
    backends = ["reference", "fused", "pyg", "scatter"] + (["triton"] if device == "cuda" else [])
    return [f"gnn-{b}" for b in backends] + list(PS_METHODS) + (list(NFN_METHODS) if _NFN_INSTALLED else [])


def _cli(args) -> int:
    from .convert.spec import parse_shape

    device = args.device
    methods = args.methods.split(",") if args.methods else default_methods(device)
    for m in methods:
        if m not in METHODS:
            raise ProfileError(f"unknown method {m!r}; expected one of {list(METHODS)}")
    shape = parse_shape(args.input_shape) if args.input_shape else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = [
        Config(args.arch, b, w, m, scope=args.scope, layers=args.layers, device=device, threads=args.threads, input_shape=shape)
        for b in _ints(args.batch) for w in _ints(args.width) for m in methods
    ]  # fmt: skip
    print(f"profiling {args.arch}: {len(configs)} configurations, each in its own process")
    records = profile(configs, timeout=args.timeout, mem_cap_gb=args.mem_cap_gb)
    print(table(records))
    write_csv(records, out / "profile.csv")
    (out / "profile.json").write_text(json.dumps(records, indent=1) + "\n")
    written = [out / "profile.csv", out / "profile.json"]
    for x in ("width", "size"):
        p = plot(records, out / f"profile_{x}.png", x=x)
        if p:
            written.append(p)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0 if any(r["status"] == "ok" for r in records) else 1


def register(sub) -> None:
    """Add ``wgraph profile`` to the command's subparsers."""
    p = sub.add_parser("profile", help="memory and time of graph NFNs vs parameter-sharing layers on an architecture")
    p.add_argument("--arch", required=True, help=ARCH_HELP)
    p.add_argument("--batch", default="8", help="batch size(s), comma-separated (default 8)")
    p.add_argument("--width", default="16,32,64", help="width(s), comma-separated (default 16,32,64)")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (default: all that can run)")
    p.add_argument("--scope", default="layer", choices=SCOPES, help="one layer, or a training step of a whole model")
    p.add_argument("--layers", type=int, default=4, help="layers of a whole model (--scope model)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per measurement")
    p.add_argument("--input-shape", help="example input shape for module:factory specs, e.g. 1,3,32,32")
    p.add_argument("--timeout", type=float, default=600, help="seconds per configuration")
    p.add_argument("--mem-cap-gb", type=float, default=8.0, help="skip configurations estimated above this")
    p.add_argument("-o", "--out", default="profile", help="output directory (CSV, JSON, PNG plots)")
    p.set_defaults(fn=_cli)


def _worker_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", required=True)
    ap.add_argument("--part", default="both", choices=("time", "memory", "both"))
    args = ap.parse_args(argv)
    cfg = json.loads(args.worker)
    if cfg.get("input_shape"):
        cfg["input_shape"] = tuple(cfg["input_shape"])
    print(json.dumps(measure(Config(**cfg), args.part)))


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
