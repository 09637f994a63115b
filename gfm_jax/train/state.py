"""The train state pytree, and creating it already sharded on the mesh."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from gfm_jax import sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of optimizer updates applied
    params: Any
    opt_state: Any


def abstract_state(
    init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation, rng: jax.Array
) -> Any:
    """Shapes of the state, with the logical-axis boxes of the parameters kept (no compute).

    `init_params(rng)` returns boxed parameters (`nn.LogicallyPartitioned` leaves); the optimizer
    state built from them inherits the boxes, so its moments shard like the parameters.
    """

    def init(rng: jax.Array) -> TrainState:
        params = init_params(rng)
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    return jax.eval_shape(init, rng)


def create_sharded_state(
    init_params: Callable[[jax.Array], Any],
    tx: optax.GradientTransformation,
    rng: jax.Array,
    mesh: Mesh,
    rules: sharding.Rules,
) -> tuple[TrainState, Any]:
    """Initialises the state directly into its shardings; returns (state, state_shardings).

    The full model never exists on one device: `jax.jit(..., out_shardings=...)` makes XLA
    compute each shard where it lives.
    """
    boxed = abstract_state(init_params, tx, rng)
    shardings = sharding.tree_shardings(boxed, mesh, rules)

    def init(rng: jax.Array) -> TrainState:
        params = nn.meta.unbox(init_params(rng))
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    state = jax.jit(init, out_shardings=shardings)(rng)
    return state, shardings


def abstract_arrays(boxed_or_plain: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings: what a sharded restore fills in."""
    plain = nn.meta.unbox(boxed_or_plain)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), plain, shardings
    )
