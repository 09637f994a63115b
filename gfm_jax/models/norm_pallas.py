"""LayerNorm / RMSNorm fused with the residual stream, as Pallas (Triton) kernels for GPUs.

What XLA's own kernels cannot do (docs/benchmarks.md, the H100 profiles of nt_v2_500m):

- Forward, `add_norm`: s = x + h + h_bias, then y = norm(s), in one pass: reads x and h,
  writes s and y. XLA keeps the residual add out of the norm's Triton kernel, so s is written
  by one kernel and read back by the next.
- Backward, both functions: the residual gradient plus the norm's input gradient, and the
  column sums for the scale, the bias and (for `add_norm`) h_bias, in one pass over s, dy and
  the residual gradient. XLA needs two passes (the row statistics, then the gradient with its
  column sums), reading s and dy twice.

Each returns the residual stream as well as the norm, so that its backward pass receives the
residual gradient and adds it in the same kernel. The row statistics are recomputed in the
backward pass from the stored s (two-pass, in float32 registers), not saved. The kernels take
the rows in blocks of power-of-two shape; `supported` says whether an array fits them, and the
caller (layers.Norm) falls back to XLA's kernels where it does not. `interpret=True` runs them
through Pallas's interpreter (CPU tests).

In bfloat16, s here is x + h + h_bias summed in float32 and rounded once, where XLA's path
(the fallback, and the other `norm_grad` settings) rounds h + h_bias, then the sum: the same
checkpoint gives values that differ by bfloat16 rounding between the two.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from gfm_jax.models.norm_vjp import normalize

Dtype = Any

# Elements of one tensor a kernel holds per step, on 8 warps: 32 per thread forward (x, h, s
# and y live at once) and 16 backward (s, dy, the residual gradient and five temporaries),
# so that float32 registers do not spill; XLA's Triton kernel for nt_v2_500m's LayerNorm,
# which holds only x, took 16 x 1,024. Untuned: an H100 has timed them in the step only
# (docs/benchmarks.md), not tile by tile.
_FORWARD_TILE_ELEMENTS = 8192
_BACKWARD_TILE_ELEMENTS = 4096
_NUM_WARPS = 8
_MAX_ROWS_PER_PROGRAM = 64  # backward: rows one program walks, keeping its column sums


def _tile_rows(features: int, elements: int) -> int:
    return max(1, elements // features)


def supported(rows: int, features: int) -> bool:
    """Whether [rows, features] fits the kernels' power-of-two blocks."""
    power_of_two = features & (features - 1) == 0
    tile = _tile_rows(features, _FORWARD_TILE_ELEMENTS)  # the larger: a multiple of the other
    return power_of_two and features >= 16 and rows % tile == 0


def _stats(s, centered: bool, eps: float):
    """xhat and 1/std of float32 rows s (two-pass: the mean first, as XLA's norm does)."""
    d = s - jnp.mean(s, axis=-1, keepdims=True) if centered else s
    rstd = jax.lax.rsqrt(jnp.mean(d * d, axis=-1, keepdims=True) + eps)
    return d * rstd, rstd


def _forward_kernel(x_ref, h_ref, hb_ref, scale_ref, bias_ref, s_ref, y_ref, *, centered, eps):
    s = x_ref[...].astype(jnp.float32) + h_ref[...].astype(jnp.float32)
    s = (s + hb_ref[...][None, :]).astype(s_ref.dtype)
    s_ref[...] = s
    xhat, _ = _stats(s.astype(jnp.float32), centered, eps)
    y = xhat * scale_ref[...][None, :] + bias_ref[...][None, :]
    y_ref[...] = y.astype(y_ref.dtype)


def _backward_kernel(
    s_ref,
    dy_ref,
    dres_ref,
    scale_ref,
    dx_ref,
    dscale_ref,
    dbias_ref,
    dsum_ref,
    *,
    centered,
    eps,
    tile_rows,
    steps,
):
    scale = scale_ref[...][None, :]

    def step(i, sums):
        rows = pl.ds(i * tile_rows, tile_rows)
        xhat, rstd = _stats(s_ref[rows, :].astype(jnp.float32), centered, eps)
        dy = dy_ref[rows, :].astype(jnp.float32)
        g = dy * scale
        dn = g - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True)
        if centered:
            dn = dn - jnp.mean(g, axis=-1, keepdims=True)
        dx = dres_ref[rows, :].astype(jnp.float32) + dn * rstd
        dx_ref[rows, :] = dx.astype(dx_ref.dtype)
        dscale, dbias, dsum = sums
        return (
            dscale + jnp.sum(dy * xhat, axis=0),
            dbias + jnp.sum(dy, axis=0),
            dsum + jnp.sum(dx, axis=0),
        )

    zeros = jnp.zeros((scale_ref.shape[0],), jnp.float32)
    dscale, dbias, dsum = jax.lax.fori_loop(0, steps, step, (zeros, zeros, zeros))
    dscale_ref[...] = dscale[None, :]
    dbias_ref[...] = dbias[None, :]
    dsum_ref[...] = dsum[None, :]


def _params() -> plgpu.CompilerParams:
    return plgpu.CompilerParams(num_warps=_NUM_WARPS, num_stages=1)


def _forward(x, h, h_bias, scale, bias, centered, eps, dtype, interpret):
    rows, features = x.shape
    tile = _tile_rows(features, _FORWARD_TILE_ELEMENTS)
    block = pl.BlockSpec((tile, features), lambda i: (i, 0))
    vector = pl.BlockSpec((features,), lambda i: (0,))
    out = (
        jax.ShapeDtypeStruct((rows, features), x.dtype),
        jax.ShapeDtypeStruct((rows, features), dtype),
    )
    return pl.pallas_call(
        functools.partial(_forward_kernel, centered=centered, eps=eps),
        out_shape=out,
        grid=(rows // tile,),
        in_specs=[block, block, vector, vector, vector],
        out_specs=[block, block],
        compiler_params=_params(),
        interpret=interpret,
        name="add_norm_forward",
    )(x, h, h_bias, scale, bias)


def _backward(s, dy, dres, scale, kind, eps, interpret):
    """The backward kernel on [..., features] arrays: (dres + the norm's input gradient, in
    s's dtype and shape; the column sums of dy * xhat, dy and that gradient)."""
    shape = s.shape
    s, dy, dres = (_flat(a.astype(s.dtype)) for a in (s, dy, dres))
    rows, features = s.shape
    centered = kind == "layernorm"
    tile = _tile_rows(features, _BACKWARD_TILE_ELEMENTS)
    per_program = tile
    while per_program * 2 <= _MAX_ROWS_PER_PROGRAM and rows % (per_program * 2) == 0:
        per_program *= 2
    programs = rows // per_program
    block = pl.BlockSpec((per_program, features), lambda i: (i, 0))
    vector = pl.BlockSpec((features,), lambda i: (0,))
    partial = pl.BlockSpec((1, features), lambda i: (i, 0))
    sums = jax.ShapeDtypeStruct((programs, features), jnp.float32)
    dx, dscale, dbias, dsum = pl.pallas_call(
        functools.partial(
            _backward_kernel,
            centered=centered,
            eps=eps,
            tile_rows=tile,
            steps=per_program // tile,
        ),
        out_shape=(jax.ShapeDtypeStruct(s.shape, s.dtype), sums, sums, sums),
        grid=(programs,),
        in_specs=[block, block, block, vector],
        out_specs=[block, partial, partial, partial],
        compiler_params=_params(),
        interpret=interpret,
        name="norm_backward",
    )(s, dy, dres, scale.astype(jnp.float32))
    return dx.reshape(shape), dscale.sum(0), dbias.sum(0), dsum.sum(0)


def _flat(x: jax.Array) -> jax.Array:
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def _zeros_or(v: jax.Array | None, features: int) -> jax.Array:
    return jnp.zeros((features,), jnp.float32) if v is None else v.astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def add_norm(
    x: jax.Array,
    h: jax.Array,
    h_bias: jax.Array | None,
    scale: jax.Array,
    bias: jax.Array | None,
    kind: str,
    eps: float,
    dtype: Dtype,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """(s, norm(s)) for s = x + h (+ h_bias), s in x's dtype; `kind` "layernorm" (with `bias`)
    or "rmsnorm" (`bias` None). Forward and backward pass one kernel each."""
    return _add_norm_forward(x, h, h_bias, scale, bias, kind, eps, dtype, interpret)[0]


def _add_norm_forward(x, h, h_bias, scale, bias, kind, eps, dtype, interpret):
    features = x.shape[-1]
    s, y = _forward(
        _flat(x),
        _flat(h.astype(x.dtype)),
        _zeros_or(h_bias, features),
        scale.astype(jnp.float32),
        _zeros_or(bias, features),
        kind == "layernorm",
        eps,
        dtype,
        interpret,
    )
    s, y = s.reshape(x.shape), y.reshape(x.shape)
    # h's dtype travels as an empty array of it: residuals must be arrays.
    return (s, y), (s, scale, h_bias, bias, jnp.zeros((0,), h.dtype))


def _add_norm_backward(kind, eps, dtype, interpret, residuals, cotangents):
    s, scale, h_bias, bias, h_like = residuals
    ds, dy = cotangents
    dx, dscale, dbias, dsum = _backward(s, dy, ds, scale, kind, eps, interpret)
    return (
        dx,
        dx.astype(h_like.dtype),
        None if h_bias is None else dsum.astype(h_bias.dtype),
        dscale.astype(scale.dtype),
        None if bias is None else dbias.astype(bias.dtype),
    )


add_norm.defvjp(_add_norm_forward, _add_norm_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def norm_with_residual(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array | None,
    kind: str,
    eps: float,
    dtype: Dtype,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """(x, norm(x)): x passes through, so the backward pass takes its gradient and adds the
    norm's in one kernel. The forward pass is `normalize` (XLA's kernel, one pass already)."""
    return x, normalize(x, scale, bias, kind, eps, dtype)


def _norm_with_residual_forward(x, scale, bias, kind, eps, dtype, interpret):
    return (x, normalize(x, scale, bias, kind, eps, dtype)), (x, scale, bias)


def _norm_with_residual_backward(kind, eps, dtype, interpret, residuals, cotangents):
    del dtype
    x, scale, bias = residuals
    dres, dy = cotangents
    dx, dscale, dbias, _ = _backward(x, dy, dres, scale, kind, eps, interpret)
    dbias = None if bias is None else dbias.astype(bias.dtype)
    return dx, dscale.astype(scale.dtype), dbias


norm_with_residual.defvjp(_norm_with_residual_forward, _norm_with_residual_backward)
