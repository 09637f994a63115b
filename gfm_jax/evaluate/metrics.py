"""Task metrics (scikit-learn and SciPy), their directions, and choosing the best of several.

`for_kind` computes a task kind's metrics; `DIRECTIONS` says for every metric whether higher
or lower is better, so `best_index` / `is_better` can pick an epoch or an L2 strength by any
of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.special
import scipy.stats
from sklearn import metrics as skm

from gfm_jax.errors import UserError

CLASSIFICATION = ("accuracy", "mcc", "macro_f1", "auroc")
REGRESSION = ("spearman", "pearson", "r2", "mse", "mae")

# +1: higher is better; -1: lower is better. Every metric `for_kind` returns has an entry.
DIRECTIONS = {
    "accuracy": +1,
    "mcc": +1,
    "macro_f1": +1,
    "auroc": +1,
    "spearman": +1,
    "pearson": +1,
    "r2": +1,
    "mse": -1,
    "mae": -1,
}


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    return float(skm.accuracy_score(labels, preds))


def mcc(labels: np.ndarray, preds: np.ndarray) -> float:
    """Matthews correlation coefficient, multiclass form (Gorodkin 2004); 0 when undefined."""
    if len(np.union1d(labels, preds)) < 2:  # one class in all: undefined (sklearn warns)
        return 0.0
    return float(skm.matthews_corrcoef(labels, preds))


def macro_f1(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    """F1 averaged over all `num_classes` classes; a class never true nor predicted scores 0."""
    return float(
        skm.f1_score(labels, preds, labels=np.arange(num_classes), average="macro", zero_division=0)
    )


def auroc_binary(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); nan if only one class is present."""
    pos = np.asarray(is_positive, bool)
    if pos.all() or not pos.any():
        return float("nan")
    return float(skm.roc_auc_score(pos, np.asarray(scores, np.float64)))


def auroc_ovr(labels: np.ndarray, probs_NxC: np.ndarray) -> float:
    """One-vs-rest AUROC averaged over the classes present in `labels` (macro).

    Classes absent from `labels` (or the only one present) are left out, where sklearn's
    multiclass form refuses the whole set."""
    onehot = np.asarray(labels)[:, None] == np.arange(probs_NxC.shape[1])[None, :]
    keep = onehot.any(axis=0) & ~onehot.all(axis=0)
    if not keep.any():
        return float("nan")
    return float(skm.roc_auc_score(onehot[:, keep], probs_NxC[:, keep], average="macro"))


def _varies(*arrays: np.ndarray) -> bool:
    return all(len(a) > 1 and np.ptp(a) > 0 for a in arrays)


def pearson(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Pearson's r; 0 when either side is constant (SciPy gives nan and a warning)."""
    y, y_hat = np.asarray(y, np.float64), np.asarray(y_hat, np.float64)
    return float(scipy.stats.pearsonr(y, y_hat).statistic) if _varies(y, y_hat) else 0.0


def spearman(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Spearman's rho (ties take their average rank); 0 when either side is constant."""
    y, y_hat = np.asarray(y, np.float64), np.asarray(y_hat, np.float64)
    return float(scipy.stats.spearmanr(y, y_hat).statistic) if _varies(y, y_hat) else 0.0


def classification(labels: np.ndarray, logits_NxC: np.ndarray) -> dict[str, float]:
    """Accuracy, MCC, macro-F1 and one-vs-rest AUROC from labels and logits."""
    preds = np.argmax(logits_NxC, axis=1)
    probs = scipy.special.softmax(np.asarray(logits_NxC, np.float64), axis=1)
    return {
        "accuracy": accuracy(labels, preds),
        "mcc": mcc(labels, preds),
        "macro_f1": macro_f1(labels, preds, logits_NxC.shape[1]),
        "auroc": auroc_ovr(labels, probs),
    }


def regression(y: np.ndarray, y_hat: np.ndarray) -> dict[str, float]:
    y, y_hat = np.asarray(y, np.float64), np.asarray(y_hat, np.float64)
    return {
        "spearman": spearman(y, y_hat),
        "pearson": pearson(y, y_hat),
        "r2": float(skm.r2_score(y, y_hat)) if len(y) > 1 else float("nan"),
        "mse": float(skm.mean_squared_error(y, y_hat)),
        "mae": float(skm.mean_absolute_error(y, y_hat)),
    }


def for_kind(kind: str, labels: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """The metrics of a task kind; token labels arrive flattened with ignored positions removed."""
    if kind == "regression":
        return regression(labels, outputs.reshape(-1))
    return classification(labels, outputs)


def names(kind: str) -> tuple[str, ...]:
    """The metrics `for_kind(kind, ...)` returns, in order."""
    return REGRESSION if kind == "regression" else CLASSIFICATION


def select_metric(kind: str, chosen: str, key: str = "finetune.select_metric") -> str:
    """The metric that picks the best epoch or L2 strength: `chosen`, or the kind's default."""
    metric = chosen or ("spearman" if kind == "regression" else "accuracy")
    if metric not in names(kind):
        raise UserError(f"{key}={metric!r} for a {kind} task: choose one of {names(kind)}")
    return metric


def is_better(metric: str, candidate: float, incumbent: float | None) -> bool:
    """Whether `candidate` beats `incumbent` (None: nothing yet) in `metric`'s direction.

    A non-finite value is the worst possible; ties keep the incumbent (the earlier one)."""
    if incumbent is None:
        return True
    worst = -DIRECTIONS[metric] * np.inf
    c = candidate if np.isfinite(candidate) else worst
    i = incumbent if np.isfinite(incumbent) else worst
    return bool(DIRECTIONS[metric] * (c - i) > 0)


def best_index(metric: str, values: Sequence[float]) -> int:
    """Index of the best of `values` in `metric`'s direction (the first of equals)."""
    best = 0
    for i, v in enumerate(values):
        if is_better(metric, v, values[best]):
            best = i
    return best
