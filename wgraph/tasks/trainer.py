"""The training loop: :func:`train` fits a preset to a task on a zoo and writes ``results.json``.

Reproducibility and resume:

* ``seed`` seeds ``torch``, ``numpy`` and ``random`` and the model's initialization; the order of
  the training networks in epoch ``e`` is ``numpy.random.default_rng([seed, e]).permutation``, so
  the data order is a function of ``(seed, step)``: nothing about it needs saving.
* Every ``checkpoint_every`` steps and at every epoch end, rank 0 writes ``checkpoint.pt`` in the
  output directory (atomically: :mod:`.checkpoint`): model, optimizer, step, RNG states, history,
  best-validation state. ``resume=True`` continues from it (a run killed with ``kill -9`` and
  started again with the same command ends exactly where an uninterrupted run would, on one
  process); without ``resume``, an existing checkpoint is an error rather than silently overwritten.
* Batches hold ``batch_size`` networks (the last incomplete batch of an epoch is dropped; the order
  changes every epoch). Under ``torchrun`` each of the ``W`` ranks computes every ``W``-th network of
  the batch and DDP averages the gradients, which equals the one-process gradient of the batch.
* Validation metrics are computed at every epoch end; with ``select = "best-val"`` (default) the
  model of the epoch with the best validation ``task.primary`` metric (Kendall tau, accuracy) is the
  one tested at the end, with ``"last"`` the final one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..dirlock import lock_directory
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import DEFAULT_EPOCHS, RESUMABLE, TrainConfig, TrainError
from .data import TaskData, split_groups, task_data
from .distributed import Ranks, setup, teardown
from .models import build_model, fit_normalization
from .spec import Task, get_task

CHECKPOINT = "checkpoint.pt"
RESULTS = "results.json"
MODEL = "model.safetensors"
CURVE = "learning_curve.png"

log = logging.getLogger("wgraph.train")

__all__ = ["TrainConfig", "TrainError", "train", "evaluate", "epoch_order", "DEFAULT_EPOCHS", "RESUMABLE"]


# --------------------------------------------------------------------------- seeds and RNG states
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the ``n`` training networks in ``epoch`` (a function of ``seed`` and ``epoch`` only)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def rng_state(device: torch.device) -> dict:
    """Every RNG state as tensors, numbers and lists (what ``torch.load(weights_only=True)`` reads)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, py_gauss = random.getstate()
    keys = torch.from_numpy(keys.astype(np.int64))
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": keys, "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(state), "gauss": py_gauss},
    }
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(
    model, graphs, targets: torch.Tensor, index: torch.Tensor, task: Task, batch_size: int
) -> dict[str, float]:
    """The task's loss and metrics of ``model`` on networks ``index`` (in eval mode, in chunks)."""
    was_training = model.training
    model.eval()
    outs = [model(graphs[index[i : i + batch_size]]) for i in range(0, len(index), batch_size)]
    model.train(was_training)
    return task.metrics(torch.cat(outs), targets[index])


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _check_resumable(saved: dict, config: TrainConfig, path: Path) -> None:
    now = asdict(config)
    diff = [k for k in now if k not in RESUMABLE and saved.get(k) != now[k]]
    if diff:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in diff)
        raise CheckpointError(f"{path} was written by a run with other settings ({changes}); use another --out")


# --------------------------------------------------------------------------- the loop
def train(config: TrainConfig, data: TaskData | None = None, on_step=None) -> dict:
    """Train ``config.model`` on ``config.task`` and return the results (also in ``out/results.json``).

    ``data``: the zoo as :class:`TaskData` (default: loaded from ``config.zoo``). ``on_step(step)``:
    called after every optimizer step, once that step's checkpoint (if any) is written.
    """
    config.validate()
    task = get_task(config.task)
    ranks, device = setup(config.device)
    try:
        return _train(config, task, ranks, device, data, on_step)
    finally:
        teardown(ranks)


def _train(cfg: TrainConfig, task: Task, ranks: Ranks, device: torch.device, data, on_step) -> dict:
    t_start = time.perf_counter()
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    out.mkdir(parents=True, exist_ok=True)
    # One run per output directory: a second process writing here would overwrite this one's results.
    lock = lock_directory(out, TrainError, "training into this directory (use another --out)") if ranks.main else None
    try:
        return _run(cfg, task, ranks, device, data, on_step, out, ckpt_path, t_start)
    finally:
        if lock is not None:
            lock.close()


def _run(cfg, task, ranks, device, data, on_step, out: Path, ckpt_path: Path, t_start: float) -> dict:
    from torch.nn.parallel import DistributedDataParallel
    from tqdm.auto import tqdm

    if ckpt_path.exists() and not cfg.resume:
        raise TrainError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out")
    seed_everything(cfg.seed)

    if data is None:
        if cfg.zoo is None:
            raise TrainError("no zoo: pass --zoo DIR (a zoo written by `wgraph zoo cnn` or `wgraph zoo inr`)")
        from ..zoo import load_zoo

        data = task_data(load_zoo(cfg.zoo), task, where=f"zoo {cfg.zoo}", strict=cfg.strict)
    split = split_groups(data.groups, cfg.split_seed, cfg.val_fraction, cfg.test_fraction)
    idx = {k: torch.as_tensor(v, dtype=torch.long, device=device) for k, v in split.items()}
    graphs = data.graphs.to(device=device, dtype=torch.float32)
    targets = data.targets.to(device)
    n_train = len(split["train"])
    batch = min(cfg.batch_size, n_train)
    if batch < ranks.world:
        raise TrainError(f"a batch of {batch} networks cannot be shared by {ranks.world} processes")
    steps_per_epoch = max(1, n_train // batch)
    total = cfg.steps if cfg.steps is not None else (cfg.epochs or DEFAULT_EPOCHS) * steps_per_epoch

    model = build_model(cfg.model, graphs.layout, task.out_dim)
    fit_normalization(model, graphs[idx["train"]])
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, history, best, train_s, epoch_loss = 0, [], None, 0.0, [0.0, 0]
    resumed_from = None
    if cfg.resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        _check_resumable(json.loads(ck["config"]), cfg, ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        set_rng_state(ck["rng"], device)
        step, history, best = ck["step"], ck["history"], ck["best"]
        train_s, epoch_loss = ck["train_s"], ck["epoch_loss"]
        resumed_from = step
    net = model
    if ranks.world > 1:
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    t_setup = time.perf_counter() - t_start

    def checkpoint() -> None:
        state = {
            "format": 1, "config": json.dumps(asdict(cfg)), "step": step, "model": model.state_dict(),
            "optimizer": opt.state_dict(), "rng": rng_state(device), "history": history, "best": best,
            "train_s": train_s, "epoch_loss": epoch_loss,
        }
        save_checkpoint(ckpt_path, state)

    bar = tqdm(total=total, initial=step, desc=f"{task.name} {cfg.model}", disable=not (cfg.progress and ranks.main))
    eval_s, t_last = 0.0, time.perf_counter()
    net.train()
    while step < total:
        epoch, i = divmod(step, steps_per_epoch)
        order = epoch_order(cfg.seed, epoch, n_train)[i * batch : (i + 1) * batch]
        chosen = idx["train"][torch.as_tensor(order, device=device)]
        mine = chosen[ranks.rank :: ranks.world]
        loss = task.loss(net(graphs[mine]), targets[mine], reduction="sum") * (ranks.world / len(chosen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        shown = loss.detach() / ranks.world
        if ranks.world > 1:
            torch.distributed.all_reduce(shown)
        epoch_loss = [epoch_loss[0] + float(shown), epoch_loss[1] + 1]
        bar.update(1)
        if step % steps_per_epoch == 0 or step == total:
            now = time.perf_counter()
            train_s += now - t_last
            val = evaluate(model, graphs, targets, idx["val"], task, cfg.eval_batch_size)
            record = {"step": step, "epoch": step / steps_per_epoch, "train_loss": epoch_loss[0] / epoch_loss[1]}
            history.append({**record, **{f"val_{k}": v for k, v in val.items()}})
            epoch_loss = [0.0, 0]
            if cfg.select == "best-val" and (best is None or val[task.primary] > best["metric"]):
                snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best = {"metric": val[task.primary], "step": step, "state": snapshot}
            shown_val = {f"val_{task.primary}": f"{val[task.primary]:.4f}"}
            log.info(
                "epoch %g: train loss %.4f, validation %s %.4f",
                history[-1]["epoch"], history[-1]["train_loss"], task.primary, val[task.primary],
            )
            bar.set_postfix(loss=f"{history[-1]['train_loss']:.4f}", **shown_val)
            t_last = time.perf_counter()
            eval_s += t_last - now
            if ranks.main:
                checkpoint()
        elif step % cfg.checkpoint_every == 0 and ranks.main:
            train_s += time.perf_counter() - t_last
            checkpoint()
            t_last = time.perf_counter()
        if on_step is not None:
            on_step(step)
    bar.close()

    t_eval = time.perf_counter()
    if best is not None:
        model.load_state_dict(best["state"])
    parts = ("train", "val", "test")
    metrics = {part: evaluate(model, graphs, targets, idx[part], task, cfg.eval_batch_size) for part in parts}
    eval_s += time.perf_counter() - t_eval
    sizes = {part: {"networks": len(v), "groups": int(len(np.unique(data.groups[v])))} for part, v in split.items()}
    timings = {
        "setup_s": t_setup, "train_s": train_s, "eval_s": eval_s, "total_s": time.perf_counter() - t_start,
        "steps_per_s": step / train_s if train_s > 0 else None,
    }
    results = {
        "task": task.name, "model": cfg.model, "zoo": cfg.zoo, "seed": cfg.seed, "config": asdict(cfg),
        "metrics": metrics, "primary_metric": task.primary,
        "selected_step": best["step"] if best is not None else step,
        "steps": step, "steps_per_epoch": steps_per_epoch, "batch_size": batch, "epochs": step / steps_per_epoch,
        "networks": data.graphs.batch_size, "dropped_networks": data.dropped,
        "split": {"seed": cfg.split_seed, "by": task.group, **sizes},
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "history": history, "world_size": ranks.world, "device": str(device), "resumed_from_step": resumed_from,
        "timings": timings,
    }
    if ranks.main:
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(tensors, str(out / MODEL), metadata={"task": task.name, "preset": cfg.model})
        _write_json(out / RESULTS, results)
        learning_curve(history, out / CURVE, task.primary, title=f"{task.name} {cfg.model}")
        log.info("wrote %s, %s, %s", out / RESULTS, out / MODEL, out / CURVE)
    return results


def learning_curve(history: list[dict], path: Path, metric: str, title: str = "") -> Path | None:
    """Plot the training loss and the validation ``metric`` per epoch (two panels) to ``path`` (PNG)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=3, label="train")
    if "val_loss" in history[0]:
        a.plot(epochs, [h["val_loss"] for h in history], marker="o", ms=3, label="validation")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    a.legend()
    b.plot(epochs, [h.get(f"val_{metric}") for h in history], marker="o", ms=3, color="C1")
    b.set(xlabel="epoch", ylabel=metric.replace("_", " "), title=f"validation {metric.replace('_', ' ')}")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
