"""Blocked attention for CPUs: the scores never exist for the whole batch at once.

`jax.nn.dot_product_attention` on XLA:CPU materialises [B, N, L, L] scores and probabilities
(67 MB each for 8 x 8 heads x 512 tokens) and walks them several times forward and backward;
the time goes into memory traffic, not arithmetic. Here the (batch x head) pairs are cut into
blocks of a few heads, and a `lax.scan` runs the whole softmax attention of one block while its
scores sit in cache. A custom VJP keeps only the output and the per-row log-sum-exp and
recomputes the block's probabilities in the backward pass (as FlashAttention does), so the
backward pass is cache-resident too and memory stays O(B N L H). The blocks are split into
`streams` independent scans, which XLA:CPU runs concurrently on different cores.

Supports key padding masks, causal masking and ALiBi (the bias is rebuilt per block from the
slopes). Numerically it is the same softmax as the XLA reference, in float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

NEG_INF = -1e30  # finite, so fully masked rows stay finite


def _scores(q_GxQxH, k_GxKxH, keep_GxK, slopes_G, causal: bool) -> jax.Array:
    """Masked (and ALiBi-biased) scores of one block, float32 [G, L, L]; q is pre-scaled."""
    s_GxQxK = jnp.einsum("gqh,gkh->gqk", q_GxQxH, k_GxKxH)
    return _mask_scores(s_GxQxK, keep_GxK[:, None, :], slopes_G, causal, keys_axis=2)


def _scores_t(q_GxQxH, k_GxKxH, keep_GxK, slopes_G, causal: bool) -> jax.Array:
    """The same scores transposed, [G, K, Q], for the backward pass (see _backward_block)."""
    s_GxKxQ = jnp.einsum("gkh,gqh->gkq", k_GxKxH, q_GxQxH)
    return _mask_scores(s_GxKxQ, keep_GxK[:, :, None], slopes_G, causal, keys_axis=1)


def _mask_scores(s, keep, slopes_G, causal: bool, keys_axis: int) -> jax.Array:
    length = s.shape[-1]
    pos = jnp.arange(length)
    pos_k = pos[None, :] if keys_axis == 2 else pos[:, None]
    pos_q = pos[:, None] if keys_axis == 2 else pos[None, :]
    if slopes_G is not None:
        s = s - slopes_G[:, None, None] * jnp.abs(pos_q - pos_k).astype(jnp.float32)
    if causal:
        keep = keep & (pos_k <= pos_q)[None]
    return jnp.where(keep, s, NEG_INF)


def _forward_block(causal: bool, q, k, v, keep, slopes):
    s = _scores(q, k, keep, slopes, causal)
    row_max = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - row_max)
    row_sum = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("gqk,gkh->gqh", p, v) / row_sum
    return out, (row_max + jnp.log(row_sum))[..., 0]


def _backward_block(causal: bool, q, k, v, keep, slopes, lse, delta, d_out):
    # Every matmul here contracts the last axis of its left operand, the form XLA:CPU hands
    # to YNNPACK. The textbook order (P, then dV = P^T dO and dK = dS^T Q) contracts over the
    # query axis of P, which XLA:CPU runs as much slower Eigen contractions. So the
    # probabilities are recomputed transposed, P^T [G, K, Q], which makes dV and dK plain
    # products, and dQ comes from dQ^T = K^T dS^T. The barriers keep XLA from folding the two
    # small [G, H, L] transposes back into the dot (tests/test_ops.py checks the compiled form).
    p_t = jnp.exp(_scores_t(q, k, keep, slopes, causal) - lse[:, None, :])
    d_v = jnp.einsum("gkq,gqh->gkh", p_t, d_out)
    d_p_t = jnp.einsum("gkh,gqh->gkq", v, d_out)
    d_s_t = p_t * (d_p_t - delta[:, None, :])
    d_k = jnp.einsum("gkq,gqh->gkh", d_s_t, q)
    k_t = lax.optimization_barrier(jnp.swapaxes(k, 1, 2))
    d_q_t = jnp.einsum("ghk,gkq->ghq", k_t, d_s_t)
    d_q = jnp.swapaxes(lax.optimization_barrier(d_q_t), 1, 2)
    return d_q, d_k, d_v


def _scan_streams(fn, xs: tuple, streams: int) -> tuple:
    """`lax.scan` of fn over the leading (block) axis, as `streams` independent scans."""
    blocks = xs[0].shape[0]
    bounds = [blocks * i // streams for i in range(streams + 1)]
    outs = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        part = tuple(None if x is None else x[lo:hi] for x in xs)
        outs.append(lax.scan(lambda carry, x: (carry, fn(*x)), None, part)[1])
    return tuple(jnp.concatenate([o[i] for o in outs]) for i in range(len(outs[0])))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _blocked_core(causal: bool, streams: int, q, k, v, keep, slopes):
    return _blocked_fwd(causal, streams, q, k, v, keep, slopes)[0]


def _blocked_fwd(causal, streams, q, k, v, keep, slopes):
    fn = functools.partial(_forward_block, causal)
    out, lse = _scan_streams(fn, (q, k, v, keep, slopes), streams)
    return out, (q, k, v, keep, slopes, out, lse)


def _blocked_bwd(causal, streams, residuals, d_out):
    q, k, v, keep, slopes, out, lse = residuals
    delta = jnp.sum(d_out * out, axis=-1)  # rowsum(dO * O) = rowsum(P * dP)
    fn = functools.partial(_backward_block, causal)
    d_q, d_k, d_v = _scan_streams(fn, (q, k, v, keep, slopes, lse, delta, d_out), streams)
    d_slopes = None if slopes is None else jnp.zeros_like(slopes)  # slopes are constants
    return d_q, d_k, d_v, None, d_slopes


_blocked_core.defvjp(_blocked_fwd, _blocked_bwd)


def _heads_per_block(pairs: int, target: int) -> int:
    return max(g for g in range(1, min(target, pairs) + 1) if pairs % g == 0)


def blocked_attention(
    q_BxLxNxH: jax.Array,
    k_BxLxNxH: jax.Array,
    v_BxLxNxH: jax.Array,
    mask_BxL: jax.Array,
    *,
    causal: bool = False,
    alibi_slopes_N: jax.Array | None = None,
    heads_per_block: int = 4,
    streams: int = 2,
) -> jax.Array:
    """Softmax(q k^T / sqrt(H) + alibi) v with keys masked where mask_BxL is False.

    `heads_per_block` (batch x head) pairs form one block: 4 keeps a block's 4 x L x L float32
    scores (4 MB at L = 512) near the cache. Works on the local shard (see ops.attention).
    """
    batch, length, heads, head_dim = q_BxLxNxH.shape
    pairs = batch * heads
    group = _heads_per_block(pairs, heads_per_block)
    blocks = pairs // group
    streams = max(1, min(streams, blocks))

    def to_blocks(x_BxLxNxH: jax.Array) -> jax.Array:
        x = x_BxLxNxH.astype(jnp.float32).transpose(0, 2, 1, 3)
        return x.reshape(blocks, group, length, head_dim)

    q = to_blocks(q_BxLxNxH) * head_dim**-0.5
    keep = jnp.broadcast_to(mask_BxL[:, None, :], (batch, heads, length))
    keep = keep.reshape(blocks, group, length)
    slopes = None
    if alibi_slopes_N is not None:
        slopes = jnp.broadcast_to(alibi_slopes_N.astype(jnp.float32), (batch, heads))
        slopes = slopes.reshape(blocks, group)
    out = _blocked_core(
        causal, streams, q, to_blocks(k_BxLxNxH), to_blocks(v_BxLxNxH), keep, slopes
    )
    out_BxLxNxH = out.reshape(batch, heads, length, head_dim).transpose(0, 2, 1, 3)
    return out_BxLxNxH.astype(q_BxLxNxH.dtype)
