"""Draw one small converted network from ``WeightGraph.to_networkx`` (the picture in docs/conversion.md).

    python benchmarks/draw_graph.py [--out docs/img/residual_cnn.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import wgraph  # noqa: E402


class SmallNet(nn.Module):
    """Conv + BatchNorm, a residual block, a concatenation, global pooling and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Conv2d(4, 4, 3, padding=1)
        self.side = nn.Conv2d(2, 2, 1)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        h = h + torch.relu(self.block(h))
        h = torch.cat([h, self.side(x)], dim=1)
        return self.head(h.mean((2, 3)))


COLORS = {"dense": "#4c72b0", "identity": "#dd8452", "copy": "#55a868", "grouped": "#8172b3"}


def draw(out: Path) -> None:
    torch.manual_seed(0)
    g = wgraph.to_graph(SmallNet(), torch.randn(1, 2, 8, 8))
    nxg = g.to_networkx()
    lay = g.layout
    # x: layers in the order the converter created them (a topological order), y: neuron position
    pos = {}
    for li, l in enumerate(lay.layers):
        for p in range(l.size):
            pos[l.start + p] = (li, p - (l.size - 1) / 2)
    space_colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(9, 5))
    for kind, color in COLORS.items():
        edges = [(u, v) for u, v, d in nxg.edges(data=True) if d["kind"] == kind]
        if edges:
            import networkx as nx

            nx.draw_networkx_edges(
                nxg, pos, edgelist=edges, edge_color=color, alpha=0.5, arrows=False, ax=ax, label=f"{kind} edges"
            )
    for li, l in enumerate(lay.layers):
        nodes = list(range(l.start, l.stop))
        color = "lightgray" if l.space == -1 or not lay.spaces[l.space].permutable else space_colors(l.space % 10)
        xs, ys = [pos[n][0] for n in nodes], [pos[n][1] for n in nodes]
        ax.scatter(xs, ys, s=120, color=color, edgecolors="black", zorder=3)
        ax.annotate(f"{l.name}\n({l.kind})", (li, pos[l.stop - 1][1] + 0.5), ha="center", fontsize=8)
    ax.set_title("SmallNet as a weight graph: node colour = neuron space (grey: fixed or composite)")
    ax.set_xlabel("layers in topological order")
    ax.set_ylabel("neuron position within its layer")
    ys = [y for _, y in pos.values()]
    ax.set_ylim(min(ys) - 1, max(ys) + 1.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parent.parent / "docs" / "img" / "small_net_graph.png"
    ap.add_argument("--out", type=Path, default=default)
    draw(ap.parse_args().out)
