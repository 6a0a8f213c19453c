"""Pictures of INR editing: source images, edit targets and each trained model's edited INRs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..zoo import load_zoo
from ..zoo.data import images
from .data import split_groups
from .spec import get_task


@torch.no_grad()
def plot_edits(zoo_dir, runs: dict[str, str | Path], path, count: int = 6) -> Path:
    """A PNG grid: for ``count`` test INRs (of the first run's split), rows source image, edit
    target, the input INR, and each run's edited INR (``runs``: ``{label: wgraph train --out DIR}``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from safetensors.torch import load_file

    zoo = load_zoo(zoo_dir)
    results = {k: json.loads((Path(v) / "results.json").read_text()) for k, v in runs.items()}
    first = next(iter(results.values()))["config"]
    task = get_task("inr-edit").with_edit(first["edit"])
    split = split_groups(np.asarray(zoo.table["image"]), first["split_seed"], first["val_fraction"],
                         first["test_fraction"])
    rows = split["test"][:count]
    graphs = zoo.graphs(rows).to(torch.float32)
    pixels, _ = images(zoo.config.get("dataset", "digits"))
    side = pixels.shape[-1]
    y = task.zoo_targets(zoo, rows, graphs)
    panels = {"source": pixels[torch.as_tensor(zoo.table["image"][rows])].flatten(1), "target": y[:, 0],
              "input INR": y[:, 1]}
    for label, out in runs.items():
        cfg = results[label]["config"]
        model = task.build_model(cfg["model"], graphs.layout, zoo.arch)
        model.load_state_dict(load_file(str(Path(out) / "model.safetensors")))
        panels[label] = model.eval()(graphs)
    fig, axes = plt.subplots(len(panels), len(rows), figsize=(1.1 * len(rows), 1.15 * len(panels)), squeeze=False)
    for r, (label, imgs) in enumerate(panels.items()):
        for c in range(len(rows)):
            ax = axes[r, c]
            ax.imshow(imgs[c].reshape(side, side).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"inr-edit ({task.edit}): test INRs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
