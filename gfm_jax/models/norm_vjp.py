"""LayerNorm / RMSNorm with a written-out backward pass that reuses the forward statistics.

Under JAX's own differentiation of `Norm`, XLA's GPU compiler recomputes each row's mean and
1/std in the backward pass, inside a fused kernel that also writes a float32 [tokens, features]
product for the scale's gradient, which a second kernel reads back: about 370 MB per norm of
nt_v2_500m at batch 16 x 1,024, against about 200 that the backward pass needs to read and
write (scripts/step_traffic.py). Here the forward pass keeps the statistics ([tokens] float32
each) behind an optimization barrier, so the backward pass cannot recompute them, and the
scale and bias gradients are column sums of elementwise products of what it reads anyway.

The forward pass then runs as a reduction and an elementwise pass (the barrier keeps the
statistics a kernel output), so the program has more, smaller kernels; whether that nets out
faster is a GPU measurement (`model.norm_grad`, scripts/bench_mfu.py variants).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Dtype = jnp.dtype


def _statistics(x_f32: jax.Array, kind: str, eps: float) -> tuple[jax.Array, jax.Array]:
    """Each row's mean (zero for RMSNorm) and 1/std, [..., 1] float32. One pass, E[x^2] -
    E[x]^2 (as Flax's LayerNorm by default): both sums read x in one kernel, where the
    two-pass form needs a second reduction over x after the first."""
    mean_sq = jnp.mean(x_f32 * x_f32, axis=-1, keepdims=True)
    if kind == "layernorm":
        mean = jnp.mean(x_f32, axis=-1, keepdims=True)
        var = jnp.maximum(mean_sq - mean * mean, 0.0)
    else:
        mean, var = jnp.zeros_like(mean_sq), mean_sq
    return mean, jax.lax.rsqrt(var + eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def norm_saved_stats(
    x: jax.Array, scale: jax.Array, bias: jax.Array | None, kind: str, eps: float, dtype: Dtype
) -> jax.Array:
    """`kind` ("layernorm" or "rmsnorm") of x over its last axis, in float32, output in
    `dtype`: the same values as `layers.Norm`'s, with the backward pass below. LayerNorm takes
    a bias, RMSNorm None."""
    x_f32 = x.astype(jnp.float32)
    return _normalize(x_f32, _statistics(x_f32, kind, eps), scale, bias, dtype)


def _normalize(x_f32, statistics, scale, bias, dtype):
    mean, rstd = statistics
    y = (x_f32 - mean) * rstd * scale
    return (y if bias is None else y + bias).astype(dtype)


def _forward(x, scale, bias, kind, eps, dtype):
    x_f32 = x.astype(jnp.float32)
    # The barrier keeps the statistics a value of their own: without it XLA fuses their
    # reductions into the output's kernel and recomputes them in the backward pass. (Only
    # here: a forward pass that is not differentiated keeps its one fused kernel.)
    mean, rstd = jax.lax.optimization_barrier(_statistics(x_f32, kind, eps))
    return _normalize(x_f32, (mean, rstd), scale, bias, dtype), (x, mean, rstd, scale)


def _backward(kind, eps, dtype, residuals, dy):
    del eps, dtype
    x, mean, rstd, scale = residuals
    xhat = (x.astype(jnp.float32) - mean) * rstd
    dy_f32 = dy.astype(jnp.float32)
    g = dy_f32 * scale
    # d/dx of (x - mean) * rstd: the projection out of the row mean (LayerNorm only) and out
    # of xhat's own direction.
    dx = g - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True)
    if kind == "layernorm":
        dx = dx - jnp.mean(g, axis=-1, keepdims=True)
    dx = (dx * rstd).astype(x.dtype)
    rows = tuple(range(x.ndim - 1))
    dscale = jnp.sum(dy_f32 * xhat, axis=rows)
    dbias = jnp.sum(dy_f32, axis=rows) if kind == "layernorm" else None
    return dx, dscale, dbias


norm_saved_stats.defvjp(_forward, _backward)
