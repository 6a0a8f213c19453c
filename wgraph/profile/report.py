"""Records of measurements written out: a Markdown table with ratios, CSV, and plots."""

from __future__ import annotations

import csv
from pathlib import Path

#: The CSV's columns: the configuration, the network's size, the measurements and the status.
COLUMNS = (
    "arch", "scope", "batch", "width", "method", "device", "threads", "params_per_net",
    "time_s", "step_mb", "total_mb", "status",
)
#: The table's header; its first five columns (the configuration) open the rows of failures too.
HEADER = (
    "arch", "scope", "batch", "width", "method",
    "time / step", "step memory", "total memory", "time ratio", "memory ratio",
)


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(records: list[dict]) -> str:
    """A Markdown table of the records, with time and memory relative to the first ``ok`` method of each
    (arch, scope, batch, width, device, threads) group."""
    lines = [_row(HEADER), "|" + "---|" * len(HEADER)]
    base: dict = {}
    for r in records:
        key = (r["arch"], r["scope"], r["batch"], r["width"], r["device"], r["threads"])
        config = [r[c] for c in HEADER[:5]]
        if r["status"] != "ok":
            lines.append(_row(config + [r["status"]]) + " | | | |")
            continue
        ref = base.setdefault(key, r)
        tr = f"{r['time_s'] / ref['time_s']:.2f}x"
        mr = f"{r['step_mb'] / ref['step_mb']:.2f}x" if ref["step_mb"] > 0 else "-"
        measured = [f"{r['time_s']:.3g} s", f"{r['step_mb']:.0f} MB", f"{r['total_mb']:.0f} MB", tr, mr]
        lines.append(_row(config + measured))
    return "\n".join(lines)


def write_csv(records: list[dict], path: str | Path) -> None:
    """The records' :data:`COLUMNS` as CSV (other keys are left out)."""
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
