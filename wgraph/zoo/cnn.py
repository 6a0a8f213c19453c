"""A zoo of small CNNs trained on digits or MNIST, in the spirit of the Small CNN Zoo (Unterthiner
et al., "Predicting Neural Network Accuracy from Weights", 2020).

Data (``dataset``, :mod:`wgraph.zoo.data`): ``"digits"`` (8×8) or ``"mnist"`` (28×28), split by
:func:`~wgraph.zoo.data.image_split` (stratified, ``test_fraction`` held out, fixed by ``seed``).
The architecture is the same for both: on 28×28 inputs the three stride-2 convolutions give
14×14, 7×7 and 4×4 feature maps before the pool, the Small CNN Zoo's shapes.

Every *run* trains one :func:`~wgraph.zoo.archs.digits_cnn` with its own hyperparameters, drawn
from ``numpy.random.default_rng([seed, run])`` (so a run's hyperparameters, initialization, data
subset, minibatches and dropout masks depend only on the seed and the run number):

==================  =====================================================================
``lr``              log-uniform in ``lr_range``
``weight_decay``    log-uniform in ``weight_decay_range`` (an L2 term added to the gradient)
``init_std``        log-uniform in ``init_std_range``: weights ~ N(0, init_std²), biases 0
``dropout``         uniform in ``dropout_range``: dropout on the pooled features, before the
                    linear layer, during training only (the stored architecture has no dropout
                    module; it is the identity at evaluation)
``optimizer``       ``"sgd"`` (momentum 0.9) or ``"adam"`` (β = 0.9, 0.999, ε = 1e-8)
``train_fraction``  uniform in ``train_fraction_range``: the run trains on that fraction of the
                    training split (a random subset)
``activation``      one of ``activations`` (``"relu"``, ``"tanh"``, ``"gelu"``)
==================  =====================================================================

Training: ``epochs`` epochs of ``ceil(n_train / batch_size)`` steps (the same number of steps for
every run whatever its data fraction); each step draws a minibatch of ``batch_size`` examples from
the run's subset uniformly with replacement. Checkpoint ``k`` (of ``K``) is taken after epoch
``round(epochs · (k + 1) / K)``; its labels are computed in eval mode: ``test_acc`` / ``test_loss``
on the test split, ``train_acc`` / ``train_loss`` on the run's own training subset. Checkpoints
whose weights are not finite (a diverged run) are not stored.

Batching: the runs of one shard that share an activation are trained together. Their parameters
are rows of one ``(G, P)`` tensor; :func:`torch.func.vmap` over
:func:`torch.func.functional_call` of the very module :meth:`Zoo.model` builds runs the G networks
at once, one backward pass gives every network's gradient (the loss is the sum of the networks'
losses, each depending only on its own row), and SGD / Adam are applied row-wise with per-row
learning rates and weight decays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .data import DATASETS, SIDES

#: ``optimizer`` column values.
OPTIMIZERS = ("sgd", "adam")
COLUMNS = {
    "run": "int", "checkpoint": "int", "epoch": "int",
    "lr": "float", "weight_decay": "float", "init_std": "float", "dropout": "float",
    "optimizer": "str", "train_fraction": "float", "activation": "str",
    "test_acc": "float", "test_loss": "float", "train_acc": "float", "train_loss": "float",
}
HYPERPARAMETERS = ("lr", "weight_decay", "init_std", "dropout", "optimizer", "train_fraction", "activation")


@dataclass(frozen=True)
class CNNZooConfig:
    """Every setting of a CNN zoo; stored in the manifest (a resumed run must use the same)."""

    dataset: str = "digits"  # "digits" (8×8) or "mnist" (28×28); see wgraph.zoo.data
    runs: int = 250
    checkpoints: int = 4
    epochs: int = 20
    seed: int = 0
    shard_size: int = 50  # runs per shard (each gives `checkpoints` networks)
    channels: int = 16
    batch_size: int = 32
    test_fraction: float = 0.25
    lr_range: tuple[float, float] = (5e-4, 5e-2)
    weight_decay_range: tuple[float, float] = (1e-8, 1e-2)
    init_std_range: tuple[float, float] = (3e-2, 0.5)
    dropout_range: tuple[float, float] = (0.0, 0.5)
    train_fraction_range: tuple[float, float] = (0.1, 1.0)
    activations: tuple[str, ...] = ("relu", "tanh", "gelu")
    momentum: float = 0.9
    generator: str = field(default="wgraph.zoo.cnn/1", init=False)

    def __post_init__(self):
        from ..errors import ZooError

        if self.dataset not in DATASETS:
            raise ZooError(f"dataset must be one of {', '.join(map(repr, DATASETS))}, got {self.dataset!r}")
        if self.runs < 1 or self.checkpoints < 1 or self.epochs < 1 or self.shard_size < 1:
            raise ZooError("runs, checkpoints, epochs and shard-size must be at least 1")
        if self.checkpoints > self.epochs:
            raise ZooError(f"{self.checkpoints} checkpoints need at least as many epochs (got {self.epochs})")
        from .archs import ACTIVATIONS

        bad = [a for a in self.activations if a not in ACTIVATIONS]
        if bad or not self.activations:
            raise ZooError(f"activations {bad or '()'}: expected some of {sorted(ACTIVATIONS)}")

    def arch(self) -> dict:
        """The manifest's ``arch``: the template activation is the only one sampled, or ``"gelu"``
        (its layout has only permutation symmetries, the ones shared by every activation)."""
        template = self.activations[0] if len(set(self.activations)) == 1 else "gelu"
        side = SIDES[self.dataset]
        return {
            "name": "digits_cnn",
            "kwargs": {"channels": self.channels, "classes": 10, "activation": template},
            "input_shape": [1, 1, side, side],
            "per_network": {"activation": "activation"},
        }

    def checkpoint_epochs(self) -> list[int]:
        return [round(self.epochs * (k + 1) / self.checkpoints) for k in range(self.checkpoints)]


def unflatten(p: torch.Tensor, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Rows of flat parameters ``(G, P)`` as views ``{name: (G, *shape)}``, in the order of ``shapes``."""
    out, off = {}, 0
    for k, s in shapes.items():
        n = math.prod(s)
        out[k] = p[:, off : off + n].view(p.shape[0], *s)
        off += n
    return out


def _loguniform(rng: np.random.Generator, lo_hi) -> float:
    lo, hi = lo_hi
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_run(cfg: CNNZooConfig, run: int) -> dict:
    """The hyperparameters of ``run`` and a torch seed for its randomness."""
    rng = np.random.default_rng([cfg.seed, run])
    hp = {
        "lr": _loguniform(rng, cfg.lr_range),
        "weight_decay": _loguniform(rng, cfg.weight_decay_range),
        "init_std": _loguniform(rng, cfg.init_std_range),
        "dropout": float(rng.uniform(*cfg.dropout_range)),
        "optimizer": OPTIMIZERS[int(rng.integers(len(OPTIMIZERS)))],
        "train_fraction": float(rng.uniform(*cfg.train_fraction_range)),
        "activation": cfg.activations[int(rng.integers(len(cfg.activations)))],
    }
    hp["torch_seed"] = int(rng.integers(2**62))
    return hp


class _Group:
    """G runs with one activation, trained together (see the module docstring)."""

    def __init__(self, cfg: CNNZooConfig, runs: list[int], hps: list[dict], data, steps: int):
        from .archs import digits_cnn

        self.runs, self.hps = runs, hps
        G = len(runs)
        self.model = digits_cnn(cfg.channels, 10, hps[0]["activation"])
        self.shapes = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        self.head = f"{len(self.model) - 1}."
        # _forward runs the convolutions, then the global average pool + flatten as a mean over (H, W):
        # the same numbers, without vmap's slow path (as_strided_) for adaptive_avg_pool2d
        assert isinstance(self.model[-3], torch.nn.AdaptiveAvgPool2d) and isinstance(self.model[-2], torch.nn.Flatten)
        y_train = data[1]
        n = len(y_train)
        inits, batches, masks, subsets = [], [], [], []
        for hp in hps:
            g = torch.Generator().manual_seed(hp["torch_seed"])
            parts = [
                torch.randn(s, generator=g) * hp["init_std"] if k.endswith("weight") else torch.zeros(s)
                for k, s in self.shapes.items()
            ]
            inits.append(torch.cat([p.reshape(-1) for p in parts]))
            size = max(1, round(hp["train_fraction"] * n))
            subset = torch.randperm(n, generator=g)[:size]
            subsets.append(subset)
            batches.append(subset[torch.randint(size, (steps, cfg.batch_size), generator=g)])
            keep = 1.0 - hp["dropout"]
            masks.append(torch.rand(steps, cfg.batch_size, cfg.channels, generator=g) < keep)
        self.p = torch.stack(inits).requires_grad_(True)  # (G, P)
        self.batches = torch.stack(batches, 1)  # (steps, G, B)
        self.masks = torch.stack(masks, 1)  # (steps, G, B, C) booleans: kept features
        self.keep_scale = torch.tensor([1 / (1 - hp["dropout"]) for hp in hps])[:, None, None]
        self.subset_mask = torch.zeros(G, n, dtype=torch.bool)
        for i, s in enumerate(subsets):
            self.subset_mask[i, s] = True
        col = lambda k: torch.tensor([hp[k] for hp in hps], dtype=torch.float32)[:, None]  # noqa: E731
        self.lr, self.wd = col("lr"), col("weight_decay")
        self.adam = torch.tensor([hp["optimizer"] == "adam" for hp in hps])[:, None]
        self.m = torch.zeros_like(self.p)
        self.v = torch.zeros_like(self.p)
        self.t = 0

    def params(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        return unflatten(p, self.shapes)

    def _forward(self, params, x, mask=None):
        """One network's logits; ``mask``: the dropout mask (scaled) of the pooled features."""
        from torch.func import functional_call

        body = {k: v for k, v in params.items() if not k.startswith(self.head)}
        head = {k.removeprefix(self.head): v for k, v in params.items() if k.startswith(self.head)}
        h = functional_call(self.model[:-3], body, (x,)).mean((-2, -1))
        return functional_call(self.model[-1], head, (h if mask is None else h * mask,))

    def step(self, step: int, x_train: torch.Tensor, y_train: torch.Tensor, cfg: CNNZooConfig) -> None:
        from torch.func import vmap

        idx = self.batches[step]  # (G, B)
        logits = vmap(self._forward)(self.params(self.p), x_train[idx], self.masks[step] * self.keep_scale)
        loss = F.cross_entropy(logits.flatten(0, 1), y_train[idx].flatten(), reduction="none").view(idx.shape).mean(1)
        (grad,) = torch.autograd.grad(loss.sum(), self.p)
        with torch.no_grad():
            g = grad + self.wd * self.p
            self.t += 1
            # SGD with momentum: the buffer lives in m; Adam: first and second moments in m and v.
            self.m.copy_(torch.where(self.adam, 0.9 * self.m + 0.1 * g, cfg.momentum * self.m + g))
            self.v.mul_(0.999).addcmul_(g, g, value=0.001)
            m_hat = self.m / (1 - 0.9**self.t)
            v_hat = self.v / (1 - 0.999**self.t)
            update = torch.where(self.adam, m_hat / (v_hat.sqrt() + 1e-8), self.m)
            self.p.sub_(self.lr * update)

    @torch.no_grad()
    def evaluate(self, data) -> dict[str, torch.Tensor]:
        from torch.func import vmap

        x_train, y_train, x_test, y_test = data
        f = vmap(self._forward, in_dims=(0, None))
        params = self.params(self.p)
        out = {}
        for name, x, y, mask in (("train", x_train, y_train, self.subset_mask), ("test", x_test, y_test, None)):
            logits = f(params, x)  # (G, n, 10)
            G = len(self.runs)
            loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(G), reduction="none").view(G, -1)
            correct = (logits.argmax(-1) == y).float()
            w = torch.ones_like(loss) if mask is None else mask.float()
            out[f"{name}_loss"] = (loss * w).sum(1) / w.sum(1)
            out[f"{name}_acc"] = (correct * w).sum(1) / w.sum(1)
        return out


def _train_shard(cfg: CNNZooConfig, runs: list[int], data, bar) -> tuple[dict, dict]:
    """Train ``runs``; their finite checkpoints as stacked weights and table rows, by (run, checkpoint)."""
    x_train, y_train = data[0], data[1]
    steps_per_epoch = math.ceil(len(y_train) / cfg.batch_size)
    steps = cfg.epochs * steps_per_epoch
    at = {e * steps_per_epoch: k for k, e in enumerate(cfg.checkpoint_epochs())}
    hps = {r: sample_run(cfg, r) for r in runs}
    groups = [
        _Group(cfg, rs, [hps[r] for r in rs], data, steps)
        for a in cfg.activations
        if (rs := [r for r in runs if hps[r]["activation"] == a])
    ]
    rows: list[tuple[int, int, dict, dict]] = []  # (run, checkpoint, weights, labels)
    for s in range(steps):
        for grp in groups:
            grp.step(s, x_train, y_train, cfg)
        bar.update()
        if s + 1 in at:
            k = at[s + 1]
            for grp in groups:
                labels = grp.evaluate(data)
                weights = grp.params(grp.p.detach().clone())
                for i, r in enumerate(grp.runs):
                    w = {n: t[i] for n, t in weights.items()}
                    if all(torch.isfinite(t).all() for t in w.values()):
                        rows.append((r, k, w, {n: float(v[i]) for n, v in labels.items()}))
    rows.sort(key=lambda row: row[:2])
    ckpt_epochs = cfg.checkpoint_epochs()
    table: dict[str, list] = {c: [] for c in COLUMNS}
    for r, k, _, labels in rows:
        vals = {"run": r, "checkpoint": k, "epoch": ckpt_epochs[k], **{h: hps[r][h] for h in HYPERPARAMETERS}, **labels}
        for c in COLUMNS:
            table[c].append(vals[c])
    names = groups[0].shapes
    weights = {n: torch.stack([row[2][n] for row in rows]) if rows else torch.empty(0, *s) for n, s in names.items()}
    return weights, table


def generate_cnn_zoo(out, *, dataset: str = CNNZooConfig.dataset, runs: int = CNNZooConfig.runs,
                     checkpoints: int = CNNZooConfig.checkpoints, epochs: int = CNNZooConfig.epochs,
                     seed: int = CNNZooConfig.seed, shard_size: int = CNNZooConfig.shard_size, progress: bool = True,
                     threads: int | None = 1, **settings):
    """Generate (or resume) a CNN zoo in directory ``out``; returns the loaded :class:`Zoo`.

    ``dataset``: ``"digits"`` or ``"mnist"``. ``runs`` training runs of ``checkpoints`` checkpoints
    each (``runs · checkpoints`` networks, fewer if some diverge), ``shard_size`` runs per shard.
    ``settings``: any other field of :class:`CNNZooConfig` (hyperparameter ranges, ``channels``,
    ``batch_size``, ...). Rerunning with the same arguments after an interruption continues where
    it stopped and gives the same networks as an uninterrupted run (with the same ``threads``:
    torch threads while training, ``None`` to keep torch's setting; see
    :func:`~wgraph.zoo.threads.torch_threads`).
    """
    from .store import write_run_shards

    cfg = CNNZooConfig(dataset=dataset, runs=runs, checkpoints=checkpoints, epochs=epochs, seed=seed,
                       shard_size=shard_size, **settings)
    return write_run_shards(out, cfg, kind="cnn", columns=COLUMNS, dataset=cfg.dataset, train_shard=_train_shard,
                            progress=progress, threads=threads)
