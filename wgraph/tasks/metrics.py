"""Metrics of the tasks: Kendall tau and R^2 for regression, accuracy for classification."""

from __future__ import annotations

import numpy as np


def regression_metrics(pred, target) -> dict[str, float]:
    """Kendall tau (tau-b, :func:`scipy.stats.kendalltau`), R^2 (:func:`sklearn.metrics.r2_score`)
    and mean squared error of predictions ``pred`` against ``target`` (1-D arrays)."""
    from scipy.stats import kendalltau
    from sklearn.metrics import mean_squared_error, r2_score

    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    tau = kendalltau(pred, target).statistic if len(pred) > 1 else float("nan")
    return {
        "kendall_tau": float(tau) if np.isfinite(tau) else 0.0,  # constant predictions rank nothing
        "r2": float(r2_score(target, pred)) if len(pred) > 1 else float("nan"),
        "mse": float(mean_squared_error(target, pred)),
    }


def classification_metrics(logits, labels) -> dict[str, float]:
    """Accuracy (:func:`sklearn.metrics.accuracy_score`) of ``argmax(logits)`` against ``labels``."""
    from sklearn.metrics import accuracy_score

    logits, labels = np.asarray(logits), np.asarray(labels)
    return {"accuracy": float(accuracy_score(labels, logits.argmax(axis=1)))}
