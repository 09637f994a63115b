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


def scale_by_depth(decay: float, num_layers: int) -> optax.GradientTransformation:
    """Layer-wise learning-rate decay for fine-tuning: the updates of encoder block i are scaled
    by decay ** (num_layers - i), the token embeddings' by decay ** (num_layers + 1); the final
    norm, the head and anything outside the encoder keep the full rate. decay = 1 is a no-op."""

    def depth_scale(path: tuple, update: jax.Array) -> jax.Array:
        names = [str(getattr(k, "key", k)) for k in path]
        if "encoder" not in names or "final_norm" in names:
            return update
        if "layers" in names:  # scanned blocks: stacked along the leading axis
            scale = decay ** (num_layers - jnp.arange(num_layers, dtype=update.dtype))
            return update * scale.reshape((num_layers,) + (1,) * (update.ndim - 1))
        for name in names:
            if name.startswith("layer_"):
                return update * decay ** (num_layers - int(name.removeprefix("layer_")))
        return update * decay ** (num_layers + 1)

    def update_fn(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(depth_scale, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
