r"""A zoo of (initialization, winning-ticket mask) pairs: ``wgraph zoo ticket OUT``, the data of the
``ticket-mask`` task (the winning-ticket experiment of Zhou et al., "Permutation Equivariant Neural
Functionals", 2023; tickets as in Frankle & Carbin, "The Lottery Ticket Hypothesis", 2019).

**Networks.** Every run draws an MLP ``sizes = (d, *hidden, 10)`` with ReLU (``d`` = 64 pixels for
``digits``, 784 for ``mnist``): weights of layer :math:`\ell` are
:math:`W^\ell_{ij} \sim \mathcal N(0, (g / \sqrt{n_{\ell-1}})^2)`, the gain :math:`g` log-uniform in
``init_gain_range`` per run, biases 0. Every draw (gain, weights, minibatches, random masks) comes
from ``numpy.random.default_rng([seed, run])`` and a torch generator it seeds.

**Masked training** (:func:`train_masked`): the network with weights :math:`W \odot M` is trained
with Adam (``lr``, no weight decay) on the stacked weights of many networks at once (batched matrix
products, one backward pass; Adam is elementwise, so each network follows its own Adam), for
``epochs`` epochs of :math:`\lceil n_{train} / B \rceil` minibatches of ``batch_size`` images
drawn with replacement from the training split (:func:`~wgraph.zoo.data.image_split`, fixed by
``seed``); pruned weights get no gradient. The result's accuracy is measured on the test split.

**Iterative magnitude pruning with rewinding** (``rounds`` :math:`R`): start from the dense mask
:math:`M_0 = 1`; round :math:`r = 1..R` trains :math:`W_0 \odot M_{r-1}` from the initialization
:math:`W_0` and keeps, in every weight matrix of :math:`n` entries, the
:math:`k_r = \mathrm{round}(n \cdot \kappa^{r/R})` largest trained magnitudes among the weights
:math:`M_{r-1}` kept (:func:`kept_count`, :math:`\kappa` = ``keep``; the last round keeps exactly
:math:`\mathrm{round}(\kappa n)`); ties go to the lower flat index. Biases are never pruned. The
ticket :math:`M_R` is then trained once more from :math:`W_0` (``ticket_acc``), next to two masks of
the same per-layer counts: the largest initial magnitudes (``magnitude_acc``) and a uniformly random
one (``random_acc``); ``dense_acc`` is round 1 (no mask).

**Storage**: each run is two rows of the zoo (architecture ``mlp``): checkpoint 0, ``role =
"init"``, holds :math:`W_0`; checkpoint 1, ``role = "ticket"``, holds the ticket :math:`W_0 \odot
M_R` (the sparse network at initialization, biases kept). A mask is read back as the nonzero weights
of the ticket row (:func:`ticket_masks`; an initial weight drawn exactly 0, an event of probability
about zero, is stored as the smallest positive float so that it stays distinguishable). The
accuracy columns are repeated on both rows of a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ZooError
from .data import DATASETS, SIDES

COLUMNS = {
    "run": "int", "checkpoint": "int", "role": "str", "init_gain": "float", "keep": "float",
    "dense_acc": "float", "ticket_acc": "float", "magnitude_acc": "float", "random_acc": "float",
}
ROLES = ("init", "ticket")


@dataclass(frozen=True)
class TicketZooConfig:
    """Every setting of a ticket zoo (stored in the manifest; a resumed run must use the same)."""

    dataset: str = "digits"  # "digits" (8×8) or "mnist" (28×28); see wgraph.zoo.data
    runs: int = 500
    keep: float = 0.1  # fraction of every weight matrix the ticket keeps
    rounds: int = 5  # pruning rounds (each trains from the initialization)
    epochs: int = 20  # epochs of every training
    seed: int = 0
    shard_size: int = 100  # runs per shard, trained together
    hidden: tuple[int, ...] = (32, 32)
    batch_size: int = 64
    lr: float = 3e-3
    init_gain_range: tuple[float, float] = (0.5, 2.0)
    test_fraction: float = 0.25
    generator: str = field(default="wgraph.zoo.ticket/1", init=False)

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ZooError(f"dataset must be one of {', '.join(map(repr, DATASETS))}, got {self.dataset!r}")
        if min(self.runs, self.rounds, self.epochs, self.shard_size, self.batch_size, *self.hidden) < 1:
            raise ZooError("runs, rounds, epochs, shard-size, batch-size and hidden sizes must be at least 1")
        if not 0 < self.keep < 1:
            raise ZooError(f"keep must be a fraction in (0, 1), got {self.keep}")

    @property
    def sizes(self) -> list[int]:
        return [SIDES[self.dataset] ** 2, *self.hidden, 10]

    def arch(self) -> dict:
        return {"name": "mlp", "kwargs": {"sizes": self.sizes, "activation": "relu"},
                "input_shape": [1, self.sizes[0]]}

    #: The settings :func:`train_masked` reads (also what the ``ticket-mask`` task retrains with).
    recipe_keys = ("dataset", "seed", "test_fraction", "epochs", "batch_size", "lr")

    def recipe(self) -> dict:
        return {k: getattr(self, k) for k in self.recipe_keys}


def kept_count(n: int, keep: float, r: int = 1, rounds: int = 1) -> int:
    """Weights of a matrix of ``n`` kept after round ``r`` of ``rounds``: ``round(n keep^(r/rounds))``, at least 1."""
    return max(1, round(n * keep ** (r / rounds)))


def is_pruned(name: str, shape) -> bool:
    """Weight matrices are pruned; biases (vectors) never are."""
    return len(shape) >= 2


def top_masks(scores: dict[str, torch.Tensor], keep: float, masks: dict[str, torch.Tensor] | None = None,
              r: int = 1, rounds: int = 1) -> dict[str, torch.Tensor]:
    """The masks that keep, per network and weight matrix of ``n`` entries, the :func:`kept_count`
    highest ``scores`` (``{name: (G, *shape)}``) among the entries ``masks`` keeps (default: all);
    ties go to the lower flat index. Biases: all kept."""
    out = {}
    for name, w in scores.items():
        if not is_pruned(name, w.shape[1:]):
            out[name] = torch.ones_like(w, dtype=torch.bool)
            continue
        flat = w.flatten(1)
        if masks is not None:
            flat = flat.masked_fill(~masks[name].flatten(1), -math.inf)
        order = torch.sort(flat, dim=1, descending=True, stable=True).indices
        k = kept_count(flat.shape[1], keep, r, rounds)
        out[name] = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order[:, :k], True).view_as(w)
    return out


def magnitude_masks(weights: dict[str, torch.Tensor], keep: float, masks: dict[str, torch.Tensor] | None = None,
                    r: int = 1, rounds: int = 1) -> dict[str, torch.Tensor]:
    """:func:`top_masks` of the magnitudes ``|weights|``: magnitude pruning."""
    return top_masks({k: w.abs() for k, w in weights.items()}, keep, masks, r, rounds)


def random_masks(weights: dict[str, torch.Tensor], keep: float, generators: list[torch.Generator]):
    """Masks keeping ``kept_count(n, keep)`` uniformly random entries of every weight matrix, network ``g``
    drawing from ``generators[g]``."""
    out = {}
    for name, w in weights.items():
        if not is_pruned(name, w.shape[1:]):
            out[name] = torch.ones_like(w, dtype=torch.bool)
            continue
        n = w[0].numel()
        k = kept_count(n, keep)
        rows = [torch.zeros(n, dtype=torch.bool).index_fill_(0, torch.randperm(n, generator=g)[:k], True)
                for g in generators]
        out[name] = torch.stack(rows).view_as(w)
    return out


def mlp_forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits ``(G, B, classes)`` of G stacked :func:`~wgraph.zoo.archs.mlp` networks
    (``{"0.weight": (G, o, i), "0.bias": (G, o), "2.weight": ...}``, ReLU between layers) on
    inputs ``x`` of shape ``(G, B, i)``."""
    names = [n.removesuffix(".weight") for n in params if n.endswith(".weight")]
    h = x
    for i, n in enumerate(names):
        h = torch.baddbmm(params[f"{n}.bias"][:, None, :], h, params[f"{n}.weight"].transpose(1, 2))
        if i < len(names) - 1:
            h = torch.relu(h)
    return h


def minibatches(seeds: list[int], n: int, steps: int, batch_size: int) -> torch.Tensor:
    """``(steps, G, batch_size)`` indices into ``n`` training images, network ``g``'s drawn with
    replacement by a generator seeded with ``seeds[g]``."""
    rows = [torch.randint(n, (steps, batch_size), generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(rows, 1)


def train_masked(init: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], recipe: dict, seeds: list[int],
                 data=None, bar=None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Train G stacked networks ``init`` ``{name: (G, *shape)}`` with weights ``W ⊙ masks`` (module
    docstring); network ``g`` draws its minibatches from ``seeds[g]``. Returns the trained weights
    (masked) and the test accuracies ``(G,)``. ``data``: ``image_split``'s tensors (default: from ``recipe``)."""
    from .data import image_split

    if data is None:
        data = image_split(recipe["dataset"], recipe["seed"], recipe["test_fraction"])
    x_train, y_train, x_test, y_test = data
    dtype = next(iter(init.values())).dtype
    x_train, x_test = x_train.flatten(1).to(dtype), x_test.flatten(1).to(dtype)
    m = {k: v.to(dtype) for k, v in masks.items()}
    p = {k: (v * m[k]).detach().clone().requires_grad_(True) for k, v in init.items()}
    steps = recipe["epochs"] * math.ceil(len(y_train) / recipe["batch_size"])
    batches = minibatches(seeds, len(y_train), steps, recipe["batch_size"])
    opt = torch.optim.Adam(p.values(), lr=recipe["lr"])
    with torch.enable_grad():  # also when called for a metric, under no_grad
        for s in range(steps):
            idx = batches[s]  # (G, B)
            logits = mlp_forward({k: v * m[k] for k, v in p.items()}, x_train[idx])
            loss = F.cross_entropy(logits.flatten(0, 1), y_train[idx].flatten(), reduction="none").view(idx.shape)
            opt.zero_grad(set_to_none=True)
            loss.mean(1).sum().backward()
            opt.step()
            if bar is not None:
                bar.update()
    with torch.no_grad():
        trained = {k: v.detach() * m[k] for k, v in p.items()}
        G = len(seeds)
        logits = mlp_forward(trained, x_test.expand(G, -1, -1))
        acc = (logits.argmax(-1) == y_test).to(dtype).mean(1)
    return trained, acc


def init_weights(cfg: TicketZooConfig, run: int) -> tuple[dict[str, torch.Tensor], float, int]:
    """Run ``run``'s initialization ``{name: tensor}``, its gain and a torch seed for the rest of its draws."""
    rng = np.random.default_rng([cfg.seed, run])
    lo, hi = cfg.init_gain_range
    gain = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    g = torch.Generator().manual_seed(int(rng.integers(2**62)))
    weights = {}
    for i, (a, b) in enumerate(zip(cfg.sizes[:-1], cfg.sizes[1:])):
        w = torch.randn(b, a, generator=g) * (gain / math.sqrt(a))
        # a ticket row's zeros are its pruned weights: an (improbable) exact zero draw becomes the tiniest float
        weights[f"{2 * i}.weight"] = torch.where(w == 0, torch.finfo(w.dtype).tiny, w)
        weights[f"{2 * i}.bias"] = torch.zeros(b)
    return weights, gain, int(torch.randint(2**62, (1,), generator=g))


def _ticket_shard(cfg: TicketZooConfig, runs: list[int], data, bar) -> tuple[dict, dict]:
    """IMP for ``runs`` (module docstring): stacked weights of their two rows each, and the table."""
    drawn = [init_weights(cfg, r) for r in runs]
    init = {k: torch.stack([d[0][k] for d in drawn]) for k in drawn[0][0]}
    seeds = [d[2] for d in drawn]
    recipe = cfg.recipe()
    masks = {k: torch.ones_like(v, dtype=torch.bool) for k, v in init.items()}
    for r in range(1, cfg.rounds + 1):
        trained, acc = train_masked(init, masks, recipe, seeds, data, bar)
        if r == 1:
            dense = acc
        masks = magnitude_masks(trained, cfg.keep, masks, r, cfg.rounds)
    gens = [torch.Generator().manual_seed(s + 1) for s in seeds]
    compared = [masks, magnitude_masks(init, cfg.keep), random_masks(init, cfg.keep, gens)]
    G = len(runs)
    stacked_init = {k: v.repeat(3, *[1] * (v.dim() - 1)) for k, v in init.items()}
    stacked = {k: torch.cat([c[k] for c in compared]) for k in init}
    _, acc = train_masked(stacked_init, stacked, recipe, seeds * 3, data, bar)
    ticket, magnitude, random = acc[:G], acc[G : 2 * G], acc[2 * G :]
    weights = {k: torch.stack([init[k], init[k] * masks[k]], 1).flatten(0, 1) for k in init}
    table: dict[str, list] = {c: [] for c in COLUMNS}
    for i, (run, d) in enumerate(zip(runs, drawn)):
        for checkpoint, role in enumerate(ROLES):
            row = {"run": run, "checkpoint": checkpoint, "role": role, "init_gain": d[1], "keep": cfg.keep,
                   "dense_acc": float(dense[i]), "ticket_acc": float(ticket[i]),
                   "magnitude_acc": float(magnitude[i]), "random_acc": float(random[i])}
            for c in COLUMNS:
                table[c].append(row[c])
    return weights, table


def ticket_masks(zoo, rows=None) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """The ``init`` rows of a ticket zoo (``rows``, default every one, in the zoo's order) and the
    masks of their runs' tickets ``{name: bool (N, *shape)}`` (biases all True)."""
    if getattr(zoo, "kind", None) != "ticket":
        raise ZooError(f"expected a ticket zoo (wgraph zoo ticket), got a zoo of kind {getattr(zoo, 'kind', '?')!r}")
    role, run = np.asarray(zoo.table["role"]), np.asarray(zoo.table["run"])
    rows = np.flatnonzero(role == "init") if rows is None else np.asarray(rows)
    if (role[rows] != "init").any():
        raise ZooError(f"rows {rows[role[rows] != 'init'][:5].tolist()} of the ticket zoo are not initializations")
    where = {int(r): i for i, r in enumerate(run) if role[i] == "ticket"}
    missing = [int(r) for r in run[rows] if int(r) not in where]
    if missing:
        raise ZooError(f"{zoo.path or 'the ticket zoo'}: runs {missing[:5]} have no ticket row")
    tickets = torch.as_tensor([where[int(r)] for r in run[rows]], dtype=torch.long)
    masks = {k: w[tickets] != 0 if is_pruned(k, w.shape[1:]) else torch.ones_like(w[tickets], dtype=torch.bool)
             for k, w in zoo.weights.items()}
    return rows, masks


def generate_ticket_zoo(out, *, progress: bool = True, threads: int | None = 1, **settings):
    """Generate (or resume) a ticket zoo in directory ``out`` (``settings``: fields of
    :class:`TicketZooConfig`); returns the loaded :class:`~wgraph.zoo.Zoo`. A rerun after an
    interruption continues with the shards not yet written, and gives the same zoo."""
    from .store import write_run_shards

    cfg = TicketZooConfig(**settings)
    return write_run_shards(out, cfg, kind="ticket", columns=COLUMNS, dataset=cfg.dataset, train_shard=_ticket_shard,
                            trainings=cfg.rounds + 1, progress=progress, threads=threads)
