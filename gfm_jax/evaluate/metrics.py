"""Classification metrics computed from integer labels and predictions."""

from __future__ import annotations

import numpy as np


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """C[i, j] = number of examples of true class i predicted as class j."""
    c = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(c, (labels, preds), 1)
    return c


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    return float(np.mean(labels == preds))


def mcc(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    """Matthews correlation coefficient, multiclass form (Gorodkin 2004); 0 when undefined."""
    c = confusion(labels, preds, num_classes).astype(np.float64)
    n, correct = c.sum(), np.trace(c)
    true_k, pred_k = c.sum(axis=1), c.sum(axis=0)
    num = correct * n - true_k @ pred_k
    den = np.sqrt(n**2 - pred_k @ pred_k) * np.sqrt(n**2 - true_k @ true_k)
    return float(num / den) if den > 0 else 0.0


def macro_f1(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    c = confusion(labels, preds, num_classes).astype(np.float64)
    tp = np.diag(c)
    precision = np.divide(tp, c.sum(axis=0), out=np.zeros_like(tp), where=c.sum(axis=0) > 0)
    recall = np.divide(tp, c.sum(axis=1), out=np.zeros_like(tp), where=c.sum(axis=1) > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())
