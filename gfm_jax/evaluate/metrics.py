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


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), np.float64)
    # Runs of equal values share the mean of their positions.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def auroc_binary(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U form, ties count one half); nan if one class."""
    pos = np.asarray(is_positive, bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _ranks(np.asarray(scores, np.float64))
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc_ovr(labels: np.ndarray, probs_NxC: np.ndarray) -> float:
    """One-vs-rest AUROC averaged over the classes present in `labels` (macro)."""
    values = [
        auroc_binary(labels == c, probs_NxC[:, c])
        for c in range(probs_NxC.shape[1])
        if 0 < np.sum(labels == c) < len(labels)
    ]
    return float(np.mean(values)) if values else float("nan")


def pearson(y: np.ndarray, y_hat: np.ndarray) -> float:
    y, y_hat = np.asarray(y, np.float64), np.asarray(y_hat, np.float64)
    dy, dh = y - y.mean(), y_hat - y_hat.mean()
    den = np.sqrt((dy * dy).sum() * (dh * dh).sum())
    return float((dy * dh).sum() / den) if den > 0 else 0.0


def spearman(y: np.ndarray, y_hat: np.ndarray) -> float:
    return pearson(_ranks(np.asarray(y, np.float64)), _ranks(np.asarray(y_hat, np.float64)))


def classification(labels: np.ndarray, logits_NxC: np.ndarray) -> dict[str, float]:
    """Accuracy, MCC, macro-F1 and one-vs-rest AUROC from labels and logits."""
    num_classes = logits_NxC.shape[1]
    preds = np.argmax(logits_NxC, axis=1)
    shifted = logits_NxC - logits_NxC.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    return {
        "accuracy": accuracy(labels, preds),
        "mcc": mcc(labels, preds, num_classes),
        "macro_f1": macro_f1(labels, preds, num_classes),
        "auroc": auroc_ovr(labels, probs),
    }


def regression(y: np.ndarray, y_hat: np.ndarray) -> dict[str, float]:
    y, y_hat = np.asarray(y, np.float64), np.asarray(y_hat, np.float64)
    return {
        "spearman": spearman(y, y_hat),
        "pearson": pearson(y, y_hat),
        "mse": float(np.mean((y - y_hat) ** 2)),
    }


def for_kind(kind: str, labels: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """The metrics of a task kind; token labels arrive flattened with ignored positions removed."""
    if kind == "regression":
        return regression(labels, outputs.reshape(-1))
    return classification(labels, outputs)


def default_select_metric(kind: str) -> str:
    return "spearman" if kind == "regression" else "accuracy"
