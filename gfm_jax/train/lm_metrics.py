"""Language-model metrics from summed step outputs, and the unigram baseline to read them by.

Shared by the training loop's held-out evaluation and `evaluate perplexity`, so both report the
same numbers the same way.
"""

from __future__ import annotations

import math

import numpy as np

from gfm_jax.errors import UserError


def unigram_baseline(targets: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """The best context-free predictor of the targets (their token distribution): its loss,
    the entropy in nats, and its accuracy, the frequency of the commonest token."""
    ids = targets[weights > 0]
    if ids.size == 0:
        raise UserError(
            "the held-out windows hold no targets (every base N or padding); "
            "check data.genomes, data.max_n_fraction and data.val_fraction"
        )
    p = np.bincount(ids).astype(np.float64)
    p = p[p > 0] / p.sum()
    return {"unigram_entropy": float(-(p * np.log(p)).sum()), "unigram_accuracy": float(p.max())}


def summarize(sums: dict[str, float], bases_per_token: float) -> dict[str, float]:
    """Loss, accuracy, perplexity and bits per base from `loss_sum`, `correct_sum` and
    `weight_sum` added up over steps."""
    loss = sums["loss_sum"] / max(sums["weight_sum"], 1.0)
    return {
        "loss": loss,
        "accuracy": sums["correct_sum"] / max(sums["weight_sum"], 1.0),
        "perplexity": math.exp(min(loss, 50.0)),
        "bits_per_base": loss / math.log(2) / bases_per_token,
    }
