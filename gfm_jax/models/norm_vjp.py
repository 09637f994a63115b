"""LayerNorm / RMSNorm with a written-out backward pass: one pass over x and dy for every
row sum it needs, then one for the gradients.

Under JAX's own differentiation of a norm, XLA's GPU compiler recomputes each row's mean and
1/std in the backward pass inside a fused kernel that also writes a float32 [tokens, features]
product for the scale's gradient, which a second kernel reads back: about 370 MB per norm of
nt_v2_500m at batch 16 x 1,024 (scripts/step_traffic.py). Here the backward pass takes the
statistics and the two sums of the gradient formula together, reading x and dy once, and the
scale and bias gradients are column sums of what the gradient's own pass reads. The forward
pass is `normalize`, the same function the default path differentiates, so the values are
the same; only the backward pass is written out.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

Dtype = Any  # a jnp scalar type, as layers.Norm takes


def normalize(
    x: jax.Array, scale: jax.Array, bias: jax.Array | None, kind: str, eps: float, dtype: Dtype
) -> jax.Array:
    """`kind` ("layernorm", with a bias, or "rmsnorm", bias None) of x over its last axis,
    computed in float32, output in `dtype`."""
    x = x.astype(jnp.float32)
    if kind == "layernorm":
        x = x - jnp.mean(x, axis=-1, keepdims=True)
    y = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale
    return (y if bias is None else y + bias).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def norm_written_grad(
    x: jax.Array, scale: jax.Array, bias: jax.Array | None, kind: str, eps: float, dtype: Dtype
) -> jax.Array:
    """`normalize`, whose backward pass is `_backward` below rather than JAX's."""
    return normalize(x, scale, bias, kind, eps, dtype)


def _forward(x, scale, bias, kind, eps, dtype):
    return normalize(x, scale, bias, kind, eps, dtype), (x, scale)


def _backward(kind, eps, dtype, residuals, dy):
    del dtype
    x, scale = residuals
    x_f32, dy_f32 = x.astype(jnp.float32), dy.astype(jnp.float32)
    g = dy_f32 * scale
    # Every row sum in one pass over x and dy. LayerNorm's are sums of d = x - (the row's
    # first element), whose mean is small next to its spread (no element lies more than
    # sqrt(features - 1) standard deviations from the row mean), so E[d^2] - E[d]^2 does not
    # cancel as E[x^2] - E[x]^2 does for rows whose mean is far larger than their spread.
    # RMSNorm's are sums of x itself: it has no mean to take out.
    centered = kind == "layernorm"
    d = x_f32 - x_f32[..., :1] if centered else x_f32
    var = jnp.mean(d * d, axis=-1, keepdims=True)
    mean_g = jnp.mean(g, axis=-1, keepdims=True)
    e_g_centered = jnp.mean(g * d, axis=-1, keepdims=True)  # E[g (x - mean)]
    if centered:
        mean_d = jnp.mean(d, axis=-1, keepdims=True)
        var = jnp.maximum(var - mean_d * mean_d, 0.0)
        e_g_centered = e_g_centered - mean_d * mean_g
        d = d - mean_d
    rstd = jax.lax.rsqrt(var + eps)
    xhat = d * rstd
    # d/dx of (x - mean) * rstd: the projection out of xhat's own direction, and (LayerNorm)
    # out of the row mean.
    dx = g - xhat * (e_g_centered * rstd)
    if centered:
        dx = dx - mean_g
    dx = (dx * rstd).astype(x.dtype)
    rows = tuple(range(x.ndim - 1))
    if not centered:
        return dx, jnp.sum(dy_f32 * xhat, axis=rows).astype(scale.dtype), None
    # One reduction for both column sums, so XLA takes them in the kernel that makes dx
    # instead of reading dy again for the bias.
    dscale, dbias = jax.lax.reduce(
        (dy_f32 * xhat, dy_f32),
        (jnp.float32(0), jnp.float32(0)),
        lambda a, b: (a[0] + b[0], a[1] + b[1]),
        rows,
    )
    return dx, dscale.astype(scale.dtype), dbias.astype(scale.dtype)


norm_written_grad.defvjp(_forward, _backward)
