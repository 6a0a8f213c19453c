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
  one tested at the end (the lowest where lower is better, ``task.higher_is_better``), with
  ``"last"`` the final one.
* The learning rate of step ``s`` is ``lr * lr_factor(s, total, warmup, schedule)``, a function of
  the step alone (a ``LambdaLR`` whose state is in the checkpoint); a schedule with a warm-up or a
  cosine decay is stretched over the run's ``total`` steps, which a resumed run may then not change.
  With ``clip_grad`` the global gradient norm is clipped to it; the norm before clipping is recorded.
* A training loss that is not finite (a diverged model) stops the run with a :class:`TrainError`
  naming the step; the checkpoint before it stays.
* Model hooks, called only if the model has them (on the model itself, not its DDP wrapper), in eval
  mode and without gradients (the trainer restores the mode), identically on every rank:
  ``refresh_statistics(graphs, batch_size)`` recomputes statistics of the training networks (say,
  a readout's normalization); it is called with the training graphs before every validation and
  before the final evaluation of a model that is not a best-validation snapshot, and what it sets
  must be in the ``state_dict`` (the checkpoints and the snapshots hold it).
  ``dead_units(graphs, batch_size) -> {"dead": int, "total": int}`` counts the readout's hidden
  units that are zero for every network given (the first :data:`DEAD_UNIT_NETWORKS` training
  networks, at every epoch end); the history records the fraction, and a warning says when it first
  reaches one half and when it first reaches 1.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import MISSING, asdict, fields
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
#: The checkpoint format written (1: before learning-rate schedules; such checkpoints still resume).
FORMAT = 2
#: Training networks (the first of the split) on which ``model.dead_units`` is counted.
DEAD_UNIT_NETWORKS = 512

log = logging.getLogger("wgraph.train")

__all__ = [
    "TrainConfig", "TrainError", "train", "evaluate", "epoch_order", "lr_factor", "DEFAULT_EPOCHS", "RESUMABLE",
]


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


# --------------------------------------------------------------------------- learning rate and gradients
def lr_factor(step: int, total: int, warmup: float = 0.0, schedule: str = "constant") -> float:
    r"""The multiple of ``lr`` used by optimizer step ``step`` (counted from 0) of a run of ``total``.

    With :math:`W = \mathrm{round}(\mathrm{warmup} \cdot \mathrm{total})` warm-up steps, step
    :math:`s < W` uses :math:`(s + 1) / W` (a linear rise that reaches 1 at step :math:`W - 1`);
    later steps use 1 (``"constant"``) or :math:`(1 + \cos(\pi (s - W) / (\mathrm{total} - W))) / 2`
    (``"cosine"``: 1 at step :math:`W`, falling towards 0, which step ``total`` would reach).
    """
    w = round(warmup * total)
    if step < w:
        return (step + 1) / w
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (step - w) / max(1, total - w)))
    return 1.0


def _depends_on_total(cfg: TrainConfig) -> bool:
    return cfg.warmup > 0 or cfg.schedule != "constant"


def clip_gradients(model: torch.nn.Module, max_norm: float | None) -> float:
    """The global 2-norm of the gradients of ``model``'s parameters; with ``max_norm``, the gradients
    are then scaled by ``min(1, max_norm / (norm + 1e-6))`` (``torch.nn.utils.clip_grad_norm_``)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm is None:
        return float(torch.nn.utils.get_total_norm([p.grad for p in params]))
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


# --------------------------------------------------------------------------- model hooks
@torch.no_grad()
def call_hook(model: torch.nn.Module, name: str, *args):
    """``model.<name>(*args)`` in eval mode without gradients (the mode is restored), or ``None``
    when the model has no such method."""
    fn = getattr(model, name, None)
    if fn is None:
        return None
    was_training = model.training
    model.eval()
    try:
        return fn(*args)
    finally:
        model.train(was_training)


def _dead_fraction(model, graphs, batch_size: int) -> tuple[float, int, int] | None:
    """``(fraction, dead, total)`` of ``model.dead_units(graphs, batch_size)``, or ``None`` without the hook."""
    answer = call_hook(model, "dead_units", graphs, batch_size)
    if answer is None:
        return None
    if not isinstance(answer, dict) or not {"dead", "total"} <= answer.keys():
        raise TrainError(f"{type(model).__name__}.dead_units must return {{'dead': int, 'total': int}}, got {answer!r}")
    dead, total = int(answer["dead"]), int(answer["total"])
    return (dead / total if total else 0.0), dead, total


def _warn_collapse(history: list[dict], epoch: float, dead: int, total: int, networks: int) -> None:
    """Warn when the fraction of dead readout units first reaches 1/2, and when it first reaches 1."""
    fraction = dead / total
    before = [h["dead_units"] for h in history if h.get("dead_units") is not None]
    if not (fraction >= 0.5 > max(before, default=0.0) or fraction >= 1.0 > max(before, default=0.0)):
        return
    gone = "; its output no longer depends on the weights" if dead == total else ""
    log.warning(
        "epoch %g: %d of %d readout units (%.0f%%) are zero for every training network (the first %d): "
        "the readout has collapsed%s. A lower --lr, a --warmup (with --schedule cosine) or a normalization "
        "of the readout usually prevents it",
        epoch, dead, total, 100 * fraction, networks, gone,
    )


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


def _check_resumable(ck: dict, config: TrainConfig, total: int, path: Path) -> None:
    """Refuse to resume checkpoint ``ck`` with settings that change the run: a field outside
    ``RESUMABLE`` (one that an older checkpoint lacks counts as its default), or, for a schedule
    stretched over the run (a warm-up or a cosine decay), the total number of steps."""
    if ck.get("format", 1) > FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {ck['format']}; this wgraph reads up to {FORMAT}")
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    saved, now = {**defaults, **json.loads(ck["config"])}, asdict(config)
    diff = [k for k in now if k not in RESUMABLE and saved.get(k) != now[k]]
    if diff:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in diff)
        raise CheckpointError(f"{path} was written by a run with other settings ({changes}); use another --out")
    before = ck.get("total_steps", total)
    if before != total and _depends_on_total(config):
        raise CheckpointError(
            f"{path} was written by a run of {before} steps, and its learning-rate schedule (warmup "
            f"{config.warmup}, {config.schedule}) is stretched over the run: resume it with the same "
            f"--epochs / --steps (now {total} steps), or use another --out"
        )


# --------------------------------------------------------------------------- the loop
def train(config: TrainConfig, data: TaskData | None = None, on_step=None) -> dict:
    """Train ``config.model`` on ``config.task`` and return the results (also in ``out/results.json``).

    ``data``: the zoo as :class:`TaskData` (default: loaded from ``config.zoo``). ``on_step(step)``:
    called after every optimizer step, once that step's checkpoint (if any) is written.
    """
    config.validate()
    task = get_task(config.task).configure(config)
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

        data = task_data(load_zoo(cfg.zoo), task, where=f"zoo {cfg.zoo}", strict=cfg.strict, probes=cfg.probes)
    task = task.bind(data)
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

    if hasattr(task, "build_model"):  # a task with models of its own (inr-edit, ticket-mask)
        model = task.build_model(cfg.model, graphs.layout, data.arch)
    else:
        model = build_model(cfg.model, graphs.layout, task.out_dim)
    model.to(device)
    fit_normalization(model, graphs[idx["train"]], cfg.eval_batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg.warmup, cfg.schedule))
    step, history, best, train_s, epoch_loss, epoch_grad = 0, [], None, 0.0, [0.0, 0], [0.0, 0]
    resumed_from = None
    if cfg.resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        _check_resumable(ck, cfg, total, ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if "scheduler" in ck:  # format 1 has none: its run had the constant rate (checked above), which has no state
            sched.load_state_dict(ck["scheduler"])
        set_rng_state(ck["rng"], device)
        step, history, best = ck["step"], ck["history"], ck["best"]
        train_s, epoch_loss = ck["train_s"], ck["epoch_loss"]
        epoch_grad = ck.get("epoch_grad_norm", [0.0, 0])  # format 1: the epoch's mean from the resumed steps on
        resumed_from = step
    net = model
    if ranks.world > 1:
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    t_setup = time.perf_counter() - t_start

    def checkpoint() -> None:
        state = {
            "format": FORMAT, "config": json.dumps(asdict(cfg)), "step": step, "total_steps": total,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": rng_state(device), "history": history, "best": best, "train_s": train_s,
            "epoch_loss": epoch_loss, "epoch_grad_norm": epoch_grad,
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
        grad_norm = clip_gradients(model, cfg.clip_grad)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        step += 1
        shown = loss.detach() / ranks.world
        if ranks.world > 1:
            torch.distributed.all_reduce(shown)
        if not torch.isfinite(shown):  # every rank sees the reduced loss, so every rank stops here
            raise TrainError(
                f"step {step}: the training loss is {float(shown)} (the model diverged, or a target or weight is not "
                f"finite); a checkpoint already written in {out} is kept. Try a lower --lr or --clip-grad"
            )
        epoch_loss = [epoch_loss[0] + float(shown), epoch_loss[1] + 1]
        epoch_grad = [epoch_grad[0] + grad_norm, epoch_grad[1] + 1]
        bar.update(1)
        if step % steps_per_epoch == 0 or step == total:
            now = time.perf_counter()
            train_s += now - t_last
            call_hook(model, "refresh_statistics", graphs[idx["train"]], cfg.eval_batch_size)
            val = evaluate(model, graphs, targets, idx["val"], task, cfg.eval_batch_size)
            record = {
                "step": step, "epoch": step / steps_per_epoch, "train_loss": epoch_loss[0] / epoch_loss[1],
                "lr": lr, "grad_norm": epoch_grad[0] / epoch_grad[1],
            }
            checked = idx["train"][:DEAD_UNIT_NETWORKS]
            dead = _dead_fraction(model, graphs[checked], cfg.eval_batch_size)
            if dead is not None:
                if ranks.main and dead[2]:
                    _warn_collapse(history, record["epoch"], dead[1], dead[2], len(checked))
                record["dead_units"] = dead[0]
            history.append({**record, **{f"val_{k}": v for k, v in val.items()}})
            epoch_loss, epoch_grad = [0.0, 0], [0.0, 0]
            if cfg.select == "best-val" and (best is None or task.better(val[task.primary], best["metric"])):
                snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best = {"metric": val[task.primary], "step": step, "state": snapshot}
            shown_val = {f"val_{task.primary}": f"{val[task.primary]:.4f}"}
            log.info(
                "epoch %g: train loss %.4f, validation %s %.4f (lr %.3g, gradient norm %.3g)",
                record["epoch"], record["train_loss"], task.primary, val[task.primary], lr, record["grad_norm"],
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
    else:
        call_hook(model, "refresh_statistics", graphs[idx["train"]], cfg.eval_batch_size)
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
    """Plot the training loss (with the learning rate, thin, on a second axis) and the validation
    ``metric`` per epoch (two panels) to ``path`` (PNG)."""
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
    if "lr" in history[0]:  # the learning rate, thin, on its own axis
        twin = a.twinx()
        twin.plot(epochs, [h["lr"] for h in history], lw=0.8, color="0.55")
        twin.set_ylabel("learning rate", color="0.45")
        twin.tick_params(axis="y", labelsize=7, colors="0.45")
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
