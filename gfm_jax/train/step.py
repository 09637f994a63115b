"""The pure train and eval steps, and their compilation with shardings and donation.

A step is a pure function of (state, batch). `objective(params, batch)` returns metric sums
(see losses.py); the loss is their weighted mean, so it is the same on any mesh. With
`micro_batches` = k the batch is cut into k slices whose gradients of the summed loss are added
in a `lax.scan` and divided by the whole batch's weight once: exactly the gradient of one batch
(up to float summation order), in 1/k of the activation memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from gfm_jax.errors import UserError
from gfm_jax.train.losses import masked_lm_sums, training_loss_sum
from gfm_jax.train.state import TrainState

Batch = dict[str, jax.Array]
Objective = Callable[[Any, Batch], dict[str, jax.Array]]


def target_slots(weights_BxL: jax.Array, capacity: int) -> jax.Array:
    """Positions [B, capacity] of each row's targets (weight > 0) in order, then filler positions
    (weight 0). Rows with more targets than `capacity` lose the last ones (counted by
    mlm_objective as `dropped_targets`)."""
    length = weights_BxL.shape[1]
    pos_L = jnp.arange(length, dtype=jnp.int32)
    score_BxL = jnp.where(weights_BxL > 0, 2 * length, length) - pos_L  # targets first, in order
    return jax.lax.top_k(score_BxL, capacity)[1]


def mlm_objective(
    model: nn.Module, pad_id: int, z_loss: float = 0.0, max_targets: int | None = None
) -> Objective:
    """Masked-LM: predict the original tokens at the masked positions; padding is not attended.

    With `max_targets` (< the window length), the MLM head runs only at that many positions per
    sequence, the targets first (see target_slots): the same loss at a fraction of the head's
    cost. `dropped_targets` counts targets beyond the capacity (0 when it is large enough).
    """

    def objective(params: Any, batch: Batch) -> dict[str, jax.Array]:
        inputs_BxL, targets_BxL, weights_BxL = batch["inputs"], batch["targets"], batch["weights"]
        length = inputs_BxL.shape[1]
        if max_targets is None or max_targets >= length:
            logits_BxLxV = model.apply({"params": params}, inputs_BxL, inputs_BxL != pad_id)
            return masked_lm_sums(logits_BxLxV, targets_BxL, weights_BxL, z_loss)
        slots_BxK = target_slots(weights_BxL, max_targets)
        logits_BxKxV = model.apply({"params": params}, inputs_BxL, inputs_BxL != pad_id, slots_BxK)
        weights_BxK = jnp.take_along_axis(weights_BxL, slots_BxK, axis=1)
        targets_BxK = jnp.take_along_axis(targets_BxL, slots_BxK, axis=1)
        sums = masked_lm_sums(logits_BxKxV, targets_BxK, weights_BxK, z_loss)
        sums["dropped_targets"] = jnp.sum(weights_BxL > 0) - jnp.sum(weights_BxK > 0)
        return sums

    return objective


def causal_targets(ids_BxL: Any, pad_id: int, maskable: tuple[int, int]) -> Any:
    """[B, L - 1] bool: whether position t predicts token t + 1, i.e. that token is a nucleotide
    (ids in `maskable`) and position t holds a token, not padding. Works on numpy and jax
    arrays alike, so the held-out baseline (host) counts the objective's (device) targets."""
    next_BxL = ids_BxL[:, 1:]
    return (next_BxL >= maskable[0]) & (next_BxL < maskable[1]) & (ids_BxL[:, :-1] != pad_id)


def causal_objective(
    model: nn.Module, pad_id: int, maskable: tuple[int, int], z_loss: float = 0.0
) -> Objective:
    """Next-token prediction on the unmasked tokens (`targets`), with a causal encoder.

    Position t predicts token t + 1; every nucleotide token (ids in `maskable`) is a target, so
    the accuracy is over the same kind of tokens as masked-LM's. Only from a token that is not
    padding: the encoder's outputs at padding are unspecified (on the cuDNN path a padding
    token inside a row is moved after the kept ones and sees all of them, later ones too).
    """

    def objective(params: Any, batch: Batch) -> dict[str, jax.Array]:
        ids_BxL = batch["targets"]
        logits_BxLxV = model.apply({"params": params}, ids_BxL, ids_BxL != pad_id)
        weights_BxL = causal_targets(ids_BxL, pad_id, maskable).astype(jnp.float32)
        return masked_lm_sums(logits_BxLxV[:, :-1], ids_BxL[:, 1:], weights_BxL, z_loss)

    return objective


def _sum_gradients(
    objective: Objective,
    params: Any,
    batch: Batch,
    micro_batches: int,
    batch_sharding: NamedSharding | None = None,
):
    """(metric sums, gradient of the summed training loss) over `micro_batches` slices.

    With `batch_sharding`, every slice is laid out as a whole batch is: spread over all the
    batch's devices rather than over a block of them (a bare reshape leaves each slice on
    1/micro_batches of the devices, and cuDNN attention's partitioner refuses that layout).
    """

    def sums_and_grads(batch_slice: Batch) -> tuple[dict[str, jax.Array], Any]:
        def total(p: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
            sums = objective(p, batch_slice)
            return training_loss_sum(sums), sums

        (_, sums), grads = jax.value_and_grad(total, has_aux=True)(params)
        return sums, grads

    if micro_batches == 1:
        return sums_and_grads(batch)
    size = next(iter(batch.values())).shape[0]
    if size % micro_batches:
        raise UserError(
            f"train.micro_batches={micro_batches} does not divide the batch of {size}; "
            "choose a divisor of train.global_batch_size"
        )
    sliced = jax.tree.map(lambda x: x.reshape(micro_batches, -1, *x.shape[1:]), batch)
    if batch_sharding is not None:
        spec = NamedSharding(batch_sharding.mesh, PartitionSpec(None, *batch_sharding.spec))
        sliced = jax.lax.with_sharding_constraint(sliced, spec)
    zero = jax.eval_shape(sums_and_grads, jax.tree.map(lambda x: x[0], sliced))
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)

    def add(acc, batch_slice):
        return jax.tree.map(jnp.add, acc, sums_and_grads(batch_slice)), None

    (sums, grads), _ = jax.lax.scan(add, zero, sliced)
    return sums, grads


def make_train_step(
    objective: Objective,
    tx: optax.GradientTransformation,
    micro_batches: int = 1,
    batch_sharding: NamedSharding | None = None,
):
    """The pure train step; `batch_sharding` (the step's input layout) lays out micro-batches."""

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        sums, grad_sums = _sum_gradients(
            objective, state.params, batch, micro_batches, batch_sharding
        )
        scale = 1.0 / jnp.maximum(sums["weight_sum"], 1.0)
        grads = jax.tree.map(lambda g: g * scale, grad_sums)
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
