"""Losses and their metrics, in float32. Metrics are sums, so batches and shards add up exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def masked_lm_sums(
    logits_BxLxV: jax.Array,
    targets_BxL: jax.Array,
    weights_BxL: jax.Array,
    z_loss: float = 0.0,
) -> dict[str, jax.Array]:
    """Cross-entropy and accuracy summed over the weighted (masked) positions.

    `z_loss` > 0 adds z_loss * logsumexp(logits)^2 per position (as in PaLM): it keeps the
    softmax normaliser near 1, which steadies bf16 training; it is reported separately and
    only the training loss includes it.
    """
    logits_BxLxV = logits_BxLxV.astype(jnp.float32)
    ce_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
    correct_BxL = jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL
    sums = {
        "loss_sum": jnp.sum(ce_BxL * weights_BxL),
        "correct_sum": jnp.sum(correct_BxL * weights_BxL),
        "weight_sum": jnp.sum(weights_BxL),
    }
    if z_loss:
        log_z_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
        sums["z_loss_sum"] = z_loss * jnp.sum(jnp.square(log_z_BxL) * weights_BxL)
    return sums


def classification_sums(logits_BxC: jax.Array, labels_B: jax.Array, weights_B: jax.Array):
    """The same sums for one label per sequence (weights 0 mark padding examples)."""
    return masked_lm_sums(logits_BxC[:, None, :], labels_B[:, None], weights_B[:, None])


def training_loss_sum(sums: dict[str, jax.Array]) -> jax.Array:
    """What the gradient is taken of (divided by the batch's weight sum): CE plus z-loss."""
    return sums["loss_sum"] + sums.get("z_loss_sum", 0.0)


def regression_sums(y_hat_B: jax.Array, y_B: jax.Array, weights_B: jax.Array):
    """Squared error summed over the weighted examples (`correct_sum` is not defined: 0)."""
    err_B = (y_hat_B.astype(jnp.float32) - y_B) ** 2
    return {
        "loss_sum": jnp.sum(err_B * weights_B),
        "correct_sum": jnp.zeros((), jnp.float32),
        "weight_sum": jnp.sum(weights_B),
    }
