"""A dense layer's matmul for XLA:CPU (`model.kernels="auto"` on a CPU).

A dense layer's weight gradient x^T dy contracts over the token axis, which XLA:CPU runs as an
Eigen contraction on transposed operands beside the next matmul, the two contending for the
cores. Here the narrower operand is transposed instead, behind an optimization barrier, so the
weight gradient is one more row-major GEMM like those of the forward pass. GPU BLAS takes
transposed operands natively, so only the CPU gets this.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def _materialize(x: jax.Array) -> jax.Array:
    # The barrier keeps XLA from folding the transpose back into the dot's dimension numbers.
    return lax.optimization_barrier(x)


@jax.custom_vjp
def _matmul(x_MxK: jax.Array, w_KxN: jax.Array) -> jax.Array:
    return jnp.matmul(x_MxK, w_KxN)


def _matmul_fwd(x_MxK: jax.Array, w_KxN: jax.Array):
    return jnp.matmul(x_MxK, w_KxN), (x_MxK, w_KxN)


def _matmul_bwd(residuals, dy_MxN: jax.Array):
    x_MxK, w_KxN = residuals
    k, n = w_KxN.shape
    dy_MxN = dy_MxN.astype(x_MxK.dtype)
    dx_MxK = lax.dot_general(dy_MxN, w_KxN, (((1,), (1,)), ((), ())))
    if k <= n:
        dw_KxN = jnp.matmul(_materialize(x_MxK.T), dy_MxN)
    else:
        # The product is materialised too: XLA otherwise folds the final transpose into the
        # dot by swapping its operands, which contracts the token axis of x again.
        dw_KxN = _materialize(jnp.matmul(_materialize(dy_MxN.T), x_MxK)).T
    return dx_MxK, dw_KxN.astype(w_KxN.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def cpu_gemm_dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers: Any,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`lax.dot_general` for a dense layer (lhs's trailing axes against rhs's leading ones, no
    batch axes) as one 2-D matmul with the backward pass above; anything else falls through."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    n_contract = len(lhs_contract)
    dense_like = (
        not lhs_batch
        and not rhs_batch
        and tuple(lhs_contract) == tuple(range(lhs.ndim - n_contract, lhs.ndim))
        and tuple(rhs_contract) == tuple(range(n_contract))
        and precision is None
        and preferred_element_type is None
    )
    if not dense_like:
        return lax.dot_general(
            lhs, rhs, dimension_numbers, precision, preferred_element_type=preferred_element_type
        )
    batch_shape = lhs.shape[: lhs.ndim - n_contract]
    out_shape = rhs.shape[n_contract:]
    contract = math.prod(rhs.shape[:n_contract])
    y = _matmul(lhs.reshape(-1, contract), rhs.reshape(contract, -1))
    return y.reshape(*batch_shape, *out_shape)
