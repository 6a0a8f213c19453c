"""The embedded real data of the zoos: scikit-learn's bundled ``digits`` (1,797 images of 8×8
pixels, 16 gray levels, 10 classes), read from the copy inside scikit-learn (no download)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """All images as ``(1797, 8, 8)`` floats in [0, 1] and their labels ``(1797,)``, in
    scikit-learn's order (an INR zoo's ``image`` column indexes this order)."""
    x, y = _digits()
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


def digits_split(seed: int, test_fraction: float = 0.25) -> tuple[torch.Tensor, ...]:
    """A stratified train/test split fixed by ``seed``: ``x_train (n, 1, 8, 8), y_train, x_test, y_test``.

    Pixels are standardized with the training split's mean and standard deviation (two scalars)."""
    from sklearn.model_selection import train_test_split

    x, y = _digits()
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y)
    mean, std = x[idx_train].mean(), x[idx_train].std()
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    z = lambda i: t((x[i, None] - mean) / std)  # noqa: E731
    return z(idx_train), t(y[idx_train]), z(idx_test), t(y[idx_test])
