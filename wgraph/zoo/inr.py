"""A zoo of SIREN implicit neural representations (INRs) of the images of a dataset.

One INR per image of ``dataset`` (:mod:`wgraph.zoo.data`: ``"digits"``, 8×8, or ``"mnist"``,
28×28): a :func:`~wgraph.zoo.archs.siren` ``2-32-32-1`` (``w0 = 30``, SIREN initialization) maps a
pixel's coordinates ``(row, col)``, each on ``linspace(-1, 1, side)``, to its intensity in [0, 1].
Table: ``run`` (= ``image``; every INR is its own run, ``checkpoint`` 0), ``image`` (index into
:func:`~wgraph.zoo.data.images` of the dataset), ``label`` (the digit) and ``recon_mse`` (mean
squared error over the ``side²`` pixels after fitting).

Fitting: full-batch Adam (``lr``) for ``steps`` steps on the sum over INRs of each INR's MSE.
The INRs of one shard are fitted together: their parameters are stacked ``(G, *shape)`` and
:func:`torch.func.vmap` over :func:`torch.func.functional_call` of the very module
:meth:`Zoo.model` builds evaluates all of them at once. Each INR's gradient depends only on its
own loss and Adam is elementwise, so this is exactly G independent fits.

The default (300 steps, ``lr`` 1e-3) fits both datasets. Measured on 16 MNIST images spread over
the digits (shared start, PSNR = 10 log10(1 / MSE), mean and worst of the 16): 50 steps 27.0 dB
(worst 25.0), 100 steps 36.8 (33.1), 200 steps 50.7 (43.2), 300 steps 64.1 (50.7); with
``lr`` 1e-4 the fits need longer (300 steps 23.8 dB, 500 steps 30.2, 1000 steps 40.5), which is
why the literature's MNIST INRs (fitted with smaller learning rates) take more steps. The SIREN
has 1,185 parameters for the 784 pixels of an MNIST image (64 of a digits image), so an exact fit
exists.

Initialization (``init``): ``"shared"`` (the default) starts every INR from one SIREN
initialization, drawn with the seed ``(seed,)``; ``"independent"`` draws each image's own with the
seed ``(seed, image)``. Either way it does not depend on the shard an image falls in. Shared is
the usual protocol for classifying small INRs from their weights: a 2-32-32-1 SIREN fitted to 64
pixels moves its first layer only about 5 % from its start, so with independent starts the image
is encoded relative to a random first layer that differs from network to network (the NFNs of
``docs/results.md`` classified such INRs by digit at or near chance).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data import DATASETS, SIDES

INITS = ("shared", "independent")
COLUMNS = {"run": "int", "checkpoint": "int", "image": "int", "label": "int", "recon_mse": "float"}


@dataclass(frozen=True)
class INRZooConfig:
    """Every setting of an INR zoo; stored in the manifest (a resumed run must use the same)."""

    dataset: str = "digits"  # "digits" (8×8) or "mnist" (28×28); see wgraph.zoo.data
    images: int | None = None  # the first `images` images of the dataset; None: all (1,797 or 5,000)
    steps: int = 300
    seed: int = 0
    shard_size: int = 600  # INRs per shard
    hidden: int = 32
    w0: float = 30.0
    lr: float = 1e-3
    init: str = "shared"  # "shared": one initialization for every INR; "independent": one per image
    generator: str = field(default="wgraph.zoo.inr/2", init=False)

    def __post_init__(self):
        from ..errors import ZooError

        if self.dataset not in DATASETS:
            raise ZooError(f"dataset must be one of {', '.join(map(repr, DATASETS))}, got {self.dataset!r}")
        if self.steps < 0 or self.shard_size < 1 or (self.images is not None and self.images < 1):
            raise ZooError("steps must be >= 0, shard-size >= 1 and images >= 1")
        if self.init not in INITS:
            raise ZooError(f"init must be one of {', '.join(map(repr, INITS))}, got {self.init!r}")

    @property
    def side(self) -> int:
        """The images' side length in pixels (8 or 28)."""
        return SIDES[self.dataset]

    def arch(self) -> dict:
        sizes = [2, self.hidden, self.hidden, 1]
        return {"name": "siren", "kwargs": {"sizes": sizes, "w0": self.w0}, "input_shape": [self.side**2, 2]}


def pixel_coordinates(size: int = 8) -> torch.Tensor:
    """``(size², 2)``: ``(row, col)`` of every pixel in row-major order, each on ``linspace(-1, 1, size)``."""
    axis = torch.linspace(-1, 1, size)
    return torch.cartesian_prod(axis, axis)


def initialization(cfg: INRZooConfig, image: int) -> dict[str, torch.Tensor]:
    """The state dict image ``image``'s SIREN starts from: seeded by ``(seed,)`` when ``cfg.init``
    is ``"shared"`` (the same for every image), by ``(seed, image)`` when ``"independent"``. (numpy
    seeds ``(seed,)`` and ``(seed, 0)`` alike: the shared start is image 0's independent one.)"""
    from .archs import siren

    key = [cfg.seed] if cfg.init == "shared" else [cfg.seed, image]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(np.random.default_rng(key).integers(2**62)))
        return siren(**cfg.arch()["kwargs"]).state_dict()


def fit_inrs(cfg: INRZooConfig, images: list[int], bar=None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Fit one SIREN per image in ``images``: stacked weights ``{name: (G, *shape)}`` and each
    INR's final reconstruction MSE ``(G,)``."""
    from torch.func import functional_call, vmap

    from .archs import siren
    from .data import images as dataset_images

    pixels, _ = dataset_images(cfg.dataset)
    target = pixels[images].reshape(len(images), -1, 1)  # (G, side², 1)
    coords = pixel_coordinates(cfg.side)
    model = siren(**cfg.arch()["kwargs"])
    if cfg.init == "shared":
        start = initialization(cfg, images[0])
        params = {k: v.expand(len(images), *v.shape).clone().requires_grad_(True) for k, v in start.items()}
    else:
        inits = [initialization(cfg, i) for i in images]
        params = {k: torch.stack([sd[k] for sd in inits]).requires_grad_(True) for k in inits[0]}
    f = vmap(lambda p, x: functional_call(model, p, (x,)), in_dims=(0, None))
    opt = torch.optim.Adam(params.values(), lr=cfg.lr)
    for _ in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        mse = ((f(params, coords) - target) ** 2).mean((1, 2))
        mse.sum().backward()
        opt.step()
        if bar is not None:
            bar.update()
    with torch.no_grad():
        mse = ((f(params, coords) - target) ** 2).mean((1, 2))
    return {k: v.detach() for k, v in params.items()}, mse


def generate_inr_zoo(out, *, dataset: str = INRZooConfig.dataset, images: int | None = INRZooConfig.images,
                     steps: int = INRZooConfig.steps, seed: int = INRZooConfig.seed,
                     shard_size: int = INRZooConfig.shard_size,
                     init: str = INRZooConfig.init, progress: bool = True, threads: int | None = 1, **settings):
    """Generate (or resume) an INR zoo in directory ``out``; returns the loaded :class:`Zoo`.

    ``dataset``: ``"digits"`` or ``"mnist"``. ``images``: fit the first ``images`` images of the
    dataset (``None``: all, 1,797 or 5,000; MNIST's are sorted by digit). ``init``:
    ``"shared"`` (one initialization for every INR, drawn from ``seed``) or ``"independent"`` (one
    per image); see the module's docstring. ``settings``: any other field of
    :class:`INRZooConfig` (``hidden``, ``w0``, ``lr``). Rerunning with the same arguments after
    an interruption continues where it stopped, with the same result (with the same ``threads``:
    torch threads while fitting, ``None`` to keep torch's setting).
    """
    from tqdm.auto import tqdm

    from .data import images as dataset_images
    from .store import ZooWriter, load_zoo
    from .threads import torch_threads

    cfg = INRZooConfig(dataset=dataset, images=images, steps=steps, seed=seed, shard_size=shard_size, init=init,
                       **settings)
    _, labels = dataset_images(cfg.dataset)
    n = len(labels) if cfg.images is None else min(cfg.images, len(labels))
    shards = [list(range(a, min(a + cfg.shard_size, n))) for a in range(0, n, cfg.shard_size)]
    writer = ZooWriter(Path(out), kind="inr", arch=cfg.arch(), columns=COLUMNS, config=asdict(cfg))
    with writer, torch_threads(threads):
        todo = [i for i in range(len(shards)) if not writer.has_shard(i)]
        with tqdm(total=len(todo) * cfg.steps, desc="inr zoo", unit="step", disable=not progress) as bar:
            for i in todo:
                bar.set_postfix_str(f"shard {i + 1}/{len(shards)}: images {shards[i][0]}..{shards[i][-1]}")
                weights, mse = fit_inrs(cfg, shards[i], bar)
                ids = shards[i]
                table = {"run": ids, "checkpoint": [0] * len(ids), "image": ids,
                         "label": labels[ids].tolist(), "recon_mse": mse.tolist()}
                writer.write_shard(i, weights, table)
        writer.finish()
    return load_zoo(out)
