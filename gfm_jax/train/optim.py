"""Learning-rate schedules and the AdamW optimizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from gfm_jax.errors import UserError


def make_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warm-up to `learning_rate`, then cosine / constant / inverse square root."""
    peak, warmup = float(optim.learning_rate), int(optim.warmup_steps)
    end = peak * float(optim.end_lr_fraction)
    if optim.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup, max(num_steps, warmup + 1), end_value=end
        )
    if optim.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup]
        )
    if optim.schedule == "inv_sqrt":
        # Nucleotide Transformer style: lr = peak * sqrt(warmup / step) after warm-up.
        def decay(count: jax.Array) -> jax.Array:
            return peak * jnp.sqrt(max(warmup, 1) / jnp.maximum(count + warmup, 1))

        return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])
    raise UserError(f"optim.schedule={optim.schedule!r}: choose one of cosine, constant, inv_sqrt")


def decay_mask(params: object) -> object:
    """Weight decay on matrices only: no decay on biases and norm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    optim: ml_collections.ConfigDict, num_steps: int
) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(float(optim.grad_clip)),
        optax.adamw(
            make_schedule(optim, num_steps),
            b1=float(optim.b1),
            b2=float(optim.b2),
            eps=float(optim.eps),
            weight_decay=float(optim.weight_decay),
            mask=decay_mask,
        ),
    )
