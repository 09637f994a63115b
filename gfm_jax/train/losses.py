"""Losses and their metrics, in float32. Metrics are sums, so batches and shards add up exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def masked_lm_sums(
    logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array
) -> dict[str, jax.Array]:
    """Cross-entropy and accuracy summed over the weighted (masked) positions."""
    logits_BxLxV = logits_BxLxV.astype(jnp.float32)
    ce_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
    correct_BxL = jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL
    return {
        "loss_sum": jnp.sum(ce_BxL * weights_BxL),
        "correct_sum": jnp.sum(correct_BxL * weights_BxL),
        "weight_sum": jnp.sum(weights_BxL),
    }


def classification_sums(logits_BxC: jax.Array, labels_B: jax.Array, weights_B: jax.Array):
    """The same sums for one label per sequence (weights 0 mark padding examples)."""
    return masked_lm_sums(logits_BxC[:, None, :], labels_B[:, None], weights_B[:, None])


def mean_loss(sums: dict[str, jax.Array]) -> jax.Array:
    return sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1.0)
