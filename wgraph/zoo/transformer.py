"""A zoo of small transformer encoders trained on digits, in the spirit of the Small Transformer Zoo's
MNIST-Transformers (Tran et al., ICLR 2025, Transformer-NFN).

The network (:class:`RowTransformer`, architecture name ``row_transformer``): the 8 rows of a digit
are 8 tokens of 8 pixels, embedded by a ``Linear(8, D)`` plus a learned position table, then
``blocks`` encoder blocks (LayerNorm without parameters, multi-head self-attention with separate
bias-free q/k/v/o projections and ``scaled_dot_product_attention``, LayerNorm, feed-forward
``Linear(D, ffn_mul D)``, ReLU, ``Linear(ffn_mul D, D)``), a final LayerNorm, the mean token and a
``Linear(D, 10)``. ``residual=False`` is the published zoo's block (skip connections commented out:
the attention output space is then permutable, ``P_D``); ``residual=True`` adds the pre-norm
residual connections ``x + attn(norm(x))`` and ``x + ffn(norm(x))``.

Every run draws its hyperparameters from the published zoo's grid (``numpy.random.default_rng([seed,
run])``): ``optimizer`` in sgd (momentum 0.9) / adam / rmsprop, ``lr`` in {3e-4, 5e-4, 1e-3, 3e-3,
5e-3, 1e-2, 3e-2, 5e-2}, ``init_std`` (every weight and the position table ~ N(0, std^2), biases
0) in {0.1, ..., 0.5}, ``weight_decay`` (an L2 term added to the gradient) in {1e-8, 1e-7, 1e-6,
1e-4, 1e-2}, ``train_fraction`` in {1, 0.9, 0.8, 0.7}, ``dropout`` (on the mean token, training
only) in {0, 0.05, ..., 0.2}. Training is that of :mod:`wgraph.zoo.cnn`: the runs of a shard are
rows of one parameter tensor, trained together through :func:`torch.func.vmap` of
:func:`torch.func.functional_call`, minibatches drawn with replacement from each run's subset,
``checkpoints`` checkpoints per run labelled with test and train accuracy and loss; diverged
checkpoints are not stored; shards are written by :class:`~wgraph.zoo.store.ZooWriter`, so an
interrupted generation resumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ZooError
from .archs import register_arch
from .cnn import unflatten


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads, self.explicit = heads, False  # explicit: softmax(q k^T / sqrt(d)) v written out (vmap-friendly)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape
        q, k, v = (f(x).reshape(b, n, self.heads, e // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        if self.explicit:
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v
        else:
            a = F.scaled_dot_product_attention(q, k, v)
        return self.o(a.transpose(1, 2).reshape(b, n, e))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, residual: bool):
        super().__init__()
        self.residual = residual
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x))
        x = x + a if self.residual else a
        f = self.fc2(torch.relu(self.fc1(self.norm2(x))))
        return x + f if self.residual else f


class RowTransformer(nn.Module):
    """Image rows as tokens -> encoder blocks -> mean token -> classes (module docstring); input
    ``(B, 1, rows, cols)`` or ``(B, rows, cols)``."""

    def __init__(self, dim: int = 16, heads: int = 2, blocks: int = 2, ffn_mul: int = 2, rows: int = 8, cols: int = 8,
                 classes: int = 10, residual: bool = False):
        super().__init__()
        self.rows, self.cols = rows, cols
        self.embed = nn.Linear(cols, dim)
        self.pos = nn.Parameter(torch.zeros(rows, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads, ffn_mul * dim, residual) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.head = nn.Linear(dim, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The mean token ``(B, dim)``, what the classifier reads."""
        x = self.embed(x.reshape(x.shape[0], self.rows, self.cols)) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.norm(x).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _Dropped(nn.Module):
    """Training view: ``net``'s logits with a (scaled) dropout mask ``keep`` on the mean token."""

    def __init__(self, net: RowTransformer):
        super().__init__()
        self.net = net
        for block in net.blocks:  # vmap has no batching rule for the CPU kernels of scaled_dot_product_attention
            block.attn.explicit = True

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        h = self.net.features(x)
        return self.net.head(h if keep is None else h * keep)


register_arch("row_transformer", RowTransformer)


OPTIMIZERS = ("sgd", "adam", "rmsprop")
GRID = {
    "lr": (3e-4, 5e-4, 1e-3, 3e-3, 5e-3, 1e-2, 3e-2, 5e-2),
    "init_std": (0.1, 0.2, 0.3, 0.4, 0.5),
    "weight_decay": (1e-8, 1e-7, 1e-6, 1e-4, 1e-2),
    "train_fraction": (1.0, 0.9, 0.8, 0.7),
    "dropout": (0.0, 0.05, 0.1, 0.15, 0.2),
}
HYPERPARAMETERS = ("lr", "weight_decay", "init_std", "dropout", "optimizer", "train_fraction")
COLUMNS = {
    "run": "int", "checkpoint": "int", "epoch": "int", "lr": "float", "weight_decay": "float", "init_std": "float",
    "dropout": "float", "optimizer": "str", "train_fraction": "float",
    "test_acc": "float", "test_loss": "float", "train_acc": "float", "train_loss": "float",
}


@dataclass(frozen=True)
class TransformerZooConfig:
    """Every setting of a transformer zoo; stored in the manifest (a resumed run must use the same)."""

    runs: int = 100
    checkpoints: int = 4
    epochs: int = 20
    seed: int = 0
    shard_size: int = 25
    dim: int = 16
    heads: int = 2
    blocks: int = 2
    residual: bool = False
    batch_size: int = 32
    test_fraction: float = 0.25
    generator: str = field(default="wgraph.zoo.transformer/1", init=False)

    def __post_init__(self):
        if min(self.runs, self.checkpoints, self.epochs, self.shard_size, self.blocks) < 1:
            raise ZooError("runs, checkpoints, epochs, shard-size and blocks must be at least 1")
        if self.checkpoints > self.epochs:
            raise ZooError(f"{self.checkpoints} checkpoints need at least as many epochs (got {self.epochs})")
        if self.dim % self.heads:
            raise ZooError(f"dim {self.dim} is not a multiple of heads {self.heads}")

    def kwargs(self) -> dict:
        return {"dim": self.dim, "heads": self.heads, "blocks": self.blocks, "residual": self.residual}

    def arch(self) -> dict:
        return {"name": "row_transformer", "kwargs": self.kwargs(), "input_shape": [1, 1, 8, 8]}

    def checkpoint_epochs(self) -> list[int]:
        return [round(self.epochs * (k + 1) / self.checkpoints) for k in range(self.checkpoints)]


def sample_run(cfg: TransformerZooConfig, run: int) -> dict:
    """The hyperparameters of ``run`` (from :data:`GRID`) and a torch seed for its randomness."""
    rng = np.random.default_rng([cfg.seed, run])
    hp = {k: float(v[int(rng.integers(len(v)))]) for k, v in GRID.items()}
    hp["optimizer"] = OPTIMIZERS[int(rng.integers(len(OPTIMIZERS)))]
    hp["torch_seed"] = int(rng.integers(2**62))
    return hp


class _Runs:
    """The G runs of one shard as rows of one ``(G, P)`` parameter tensor."""

    def __init__(self, cfg: TransformerZooConfig, hps: list[dict], n_train: int, steps: int):
        self.model = _Dropped(RowTransformer(**cfg.kwargs()))
        self.shapes = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        inits, batches, keeps, subsets = [], [], [], []
        for hp in hps:
            g = torch.Generator().manual_seed(hp["torch_seed"])
            inits.append(torch.cat([
                (torch.randn(s, generator=g) * hp["init_std"] if not k.endswith("bias") else torch.zeros(s)).reshape(-1)
                for k, s in self.shapes.items()
            ]))
            size = max(1, round(hp["train_fraction"] * n_train))
            subset = torch.randperm(n_train, generator=g)[:size]
            subsets.append(subset)
            batches.append(subset[torch.randint(size, (steps, cfg.batch_size), generator=g)])
            p = 1.0 - hp["dropout"]
            keeps.append((torch.rand(steps, cfg.batch_size, cfg.dim, generator=g) < p).float() / p)
        self.p = torch.stack(inits).requires_grad_(True)
        self.batches, self.keeps = torch.stack(batches, 1), torch.stack(keeps, 1)  # (steps, G, batch[, dim])
        self.subset_mask = torch.zeros(len(hps), n_train, dtype=torch.bool)
        for i, s in enumerate(subsets):
            self.subset_mask[i, s] = True
        col = lambda k: torch.tensor([hp[k] for hp in hps])[:, None]  # noqa: E731
        self.lr, self.wd = col("lr"), col("weight_decay")
        self.opt = [hp["optimizer"] for hp in hps]
        is_opt = lambda name: torch.tensor([o == name for o in self.opt])[:, None]  # noqa: E731
        self.adam, self.rms = is_opt("adam"), is_opt("rmsprop")
        self.m, self.v, self.t = torch.zeros_like(self.p), torch.zeros_like(self.p), 0

    def params(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        return unflatten(p, self.shapes)

    def _forward(self, params, x, keep=None):
        from torch.func import functional_call

        return functional_call(self.model, params, (x, keep))

    def state_dicts(self) -> dict[str, torch.Tensor]:
        """The current ``(G, *shape)`` weights under the architecture's state-dict names."""
        return {k.removeprefix("net."): v for k, v in self.params(self.p.detach().clone()).items()}

    def step(self, step: int, x: torch.Tensor, y: torch.Tensor, momentum: float = 0.9) -> None:
        from torch.func import vmap

        idx = self.batches[step]
        logits = vmap(self._forward)(self.params(self.p), x[idx], self.keeps[step])
        loss = F.cross_entropy(logits.flatten(0, 1), y[idx].flatten(), reduction="none").view(idx.shape).mean(1)
        (grad,) = torch.autograd.grad(loss.sum(), self.p)
        with torch.no_grad():
            g = grad + self.wd * self.p
            self.t += 1
            # sgd: momentum buffer in m; adam: moments in m, v; rmsprop: running mean square in v (alpha 0.99)
            self.m.copy_(torch.where(self.adam, 0.9 * self.m + 0.1 * g, momentum * self.m + g))
            self.v.copy_(torch.where(self.rms, 0.99 * self.v + 0.01 * g * g, 0.999 * self.v + 0.001 * g * g))
            adam = (self.m / (1 - 0.9**self.t)) / ((self.v / (1 - 0.999**self.t)).sqrt() + 1e-8)
            update = torch.where(self.adam, adam, torch.where(self.rms, g / (self.v.sqrt() + 1e-8), self.m))
            self.p.sub_(self.lr * update)

    @torch.no_grad()
    def evaluate(self, data) -> dict[str, torch.Tensor]:
        from torch.func import vmap

        x_train, y_train, x_test, y_test = data
        f, params, out = vmap(self._forward, in_dims=(0, None)), self.params(self.p), {}
        for name, x, y, mask in (("train", x_train, y_train, self.subset_mask), ("test", x_test, y_test, None)):
            logits = f(params, x)
            G = logits.shape[0]
            loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(G), reduction="none").view(G, -1)
            w = torch.ones_like(loss) if mask is None else mask.float()
            out[f"{name}_loss"] = (loss * w).sum(1) / w.sum(1)
            out[f"{name}_acc"] = ((logits.argmax(-1) == y).float() * w).sum(1) / w.sum(1)
        return out


def _train_shard(cfg: TransformerZooConfig, runs: list[int], data, bar) -> tuple[dict, dict]:
    x_train, y_train = data[0], data[1]
    per_epoch = math.ceil(len(y_train) / cfg.batch_size)
    steps = cfg.epochs * per_epoch
    at = {e * per_epoch: k for k, e in enumerate(cfg.checkpoint_epochs())}
    hps = [sample_run(cfg, r) for r in runs]
    group = _Runs(cfg, hps, len(y_train), steps)
    rows = []
    for s in range(steps):
        group.step(s, x_train, y_train)
        bar.update()
        if s + 1 in at:
            labels, weights = group.evaluate(data), group.state_dicts()
            for i, r in enumerate(runs):
                w = {n: t[i] for n, t in weights.items()}
                if all(torch.isfinite(t).all() for t in w.values()):
                    rows.append((r, at[s + 1], w, {n: float(v[i]) for n, v in labels.items()}, hps[i]))
    epochs, table = cfg.checkpoint_epochs(), {c: [] for c in COLUMNS}
    for r, k, _, labels, hp in rows:
        vals = {"run": r, "checkpoint": k, "epoch": epochs[k], **{h: hp[h] for h in HYPERPARAMETERS}, **labels}
        for c in COLUMNS:
            table[c].append(vals[c])
    shapes = {k.removeprefix("net."): s for k, s in group.shapes.items()}
    weights = {n: torch.stack([row[2][n] for row in rows]) if rows else torch.empty(0, *s) for n, s in shapes.items()}
    return weights, table


def generate_transformer_zoo(out, *, progress: bool = True, threads: int | None = 1, **settings):
    """Generate (or resume) a transformer zoo in directory ``out`` (``settings``: fields of
    :class:`TransformerZooConfig`); returns the loaded :class:`~wgraph.zoo.dataset.Zoo`. Rerunning
    with the same settings after an interruption continues where it stopped."""
    from .store import write_run_shards

    return write_run_shards(out, TransformerZooConfig(**settings), kind="transformer", columns=COLUMNS,
                            dataset="digits", train_shard=_train_shard, progress=progress, threads=threads)


def register_transformer(kinds) -> None:
    """``wgraph zoo transformer OUT``: the subcommand, added to ``wgraph zoo``'s subparsers ``kinds``."""
    from ..config import add_arguments

    p = kinds.add_parser("transformer", help="small transformer encoders trained on digits rows (Transformer-NFN zoo)")
    p.add_argument("out", help="output directory")
    helps = {"runs": "training runs", "checkpoints": "checkpoints stored per run", "epochs": "epochs per run",
             "seed": "seed of every run's hyperparameters, initialization and data", "shard_size": "runs per shard",
             "dim": "model width D", "heads": "attention heads", "blocks": "encoder blocks",
             "residual": "pre-norm residual connections (default: none, as the published zoo)",
             "batch_size": "minibatch size", "test_fraction": "held-out fraction of the digits"}
    add_arguments(p, TransformerZooConfig, exclude=("generator",), help=helps)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    def run(args) -> int:
        from ..config import field_values

        zoo = generate_transformer_zoo(args.out, progress=not args.quiet, threads=args.threads,
                                       **field_values(TransformerZooConfig, args))
        acc = zoo.table["test_acc"]
        print(f"wrote {len(zoo)} transformers to {args.out} (test accuracy {acc.min():.2f} .. {acc.max():.2f})")
        return 0

    p.set_defaults(fn=run)
