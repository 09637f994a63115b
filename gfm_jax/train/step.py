"""The pure train and eval steps, and their compilation with shardings and donation.

A step is a pure function of (state, batch). `objective(params, batch)` returns metric sums
(see losses.py); the loss is their weighted mean, so it is the same on any mesh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec

from gfm_jax.train.losses import masked_lm_sums, mean_loss
from gfm_jax.train.state import TrainState

Batch = dict[str, jax.Array]
Objective = Callable[[Any, Batch], dict[str, jax.Array]]


def mlm_objective(model: nn.Module, pad_id: int) -> Objective:
    """Masked-LM: predict the original tokens at the masked positions; padding is not attended."""

    def objective(params: Any, batch: Batch) -> dict[str, jax.Array]:
        inputs_BxL = batch["inputs"]
        logits_BxLxV = model.apply({"params": params}, inputs_BxL, inputs_BxL != pad_id)
        return masked_lm_sums(logits_BxLxV, batch["targets"], batch["weights"])

    return objective


def make_train_step(objective: Objective, tx: optax.GradientTransformation):
    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        def loss_fn(params: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
            sums = objective(params, batch)
            return mean_loss(sums), sums

        (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**sums, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, opt_state), metrics

    return train_step


def compile_train_step(
    train_step: Callable, state_shardings: Any, batch_sharding: NamedSharding
) -> Callable:
    """jit with the state's shardings in and out; the input state is donated (updated in place)."""
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )


def compile_eval_step(
    objective: Objective, params_shardings: Any, batch_sharding: NamedSharding
) -> Callable:
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(
        objective, in_shardings=(params_shardings, batch_sharding), out_shardings=replicated
    )
