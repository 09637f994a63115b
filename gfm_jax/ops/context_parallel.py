"""Attention over a window whose length is sharded over devices (context parallelism), and
memory-efficient attention over one long window.

Each device holds a contiguous slice of the queries, keys and values; positions are global
(slice index x slice length + offset), so causal masks and ALiBi see the whole window.
- `ring`: P steps around the mesh axis; at each, a device attends its queries to the key/value
  block it holds, merges the result by online softmax (a running log-sum-exp), and passes the
  block on with `ppermute`. The backward pass is a second ring: key/value gradients travel with
  their block and are home after P hops. Memory per device is O(L / P).
- `gather`: keys and values all-gathered once, then one local pass (O(L) keys per device).
Within a device the queries run in chunks, so scores are [B, N, C, K] at most and are
recomputed in the backward pass (as FlashAttention does): memory never grows with L^2. With no
mesh axis (`axis=None`) the same code is memory-efficient attention on one device. Blocks that
a causal mask hides entirely are skipped. Float32 inside.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

NEG_INF = -1e30  # finite, so fully masked rows stay finite
SCORE_BUDGET = 1 << 22  # float32 scores per query chunk (16 MB)

Axis = str | tuple[str, ...] | None


def _chunk(batch: int, heads: int, queries: int, keys: int) -> int:
    """Queries per chunk: the largest divisor of `queries` whose scores fit SCORE_BUDGET
    (local_attention pads the queries to a multiple of the budget's chunk)."""
    most = max(1, SCORE_BUDGET // (batch * heads * keys))
    return max(c for c in range(1, min(most, queries) + 1) if queries % c == 0)


def _scores(q, k, keep_BxK, q_pos, k_pos, slopes_N, causal: bool) -> jax.Array:
    """Masked, ALiBi-biased scores [B, N, C, K] of a query chunk against a key block."""
    s = jnp.einsum("bqnh,bknh->bnqk", q, k)
    if slopes_N is not None:
        distance_QxK = jnp.abs(q_pos[:, None] - k_pos[None, :]).astype(jnp.float32)
        s = s - slopes_N[None, :, None, None] * distance_QxK
    keep = keep_BxK[:, None, None, :]
    if causal:
        keep = keep & (k_pos[None, :] <= q_pos[:, None])[None, None]
    return jnp.where(keep, s, NEG_INF)


def _chunks(x_BxQx: jax.Array, size: int) -> jax.Array:
    """[B, Q, ...] -> [Q / size, B, size, ...]."""
    b, q = x_BxQx.shape[:2]
    return jnp.moveaxis(x_BxQx.reshape(b, q // size, size, *x_BxQx.shape[2:]), 1, 0)


def _unchunk(x: jax.Array) -> jax.Array:
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])


def _block_forward(q, k, v, keep, q_pos, k_pos, slopes, causal):
    """(out [B, Q, N, H], lse [B, Q, N]) of the queries against one key block, chunked."""
    size = _chunk(q.shape[0], q.shape[2], q.shape[1], k.shape[1])

    def one(args):
        q_c, pos_c = args
        s = _scores(q_c, k, keep, pos_c, k_pos, slopes, causal)
        # A row with no kept key in the block: max at NEG_INF / 2 makes its p exactly 0, so it
        # contributes nothing here or in the backward pass (output 0 where no key is kept).
        m = jnp.maximum(jnp.max(s, axis=-1, keepdims=True), NEG_INF / 2)
        p = jnp.exp(s - m)
        total = jnp.maximum(jnp.sum(p, axis=-1, keepdims=True), 1e-30)
        out = jnp.einsum("bnqk,bknh->bqnh", p / total, v)
        return out, jnp.moveaxis((m + jnp.log(total))[..., 0], 1, 2)

    out, lse = lax.map(one, (_chunks(q, size), q_pos.reshape(-1, size)))
    return _unchunk(out), _unchunk(lse)


def _block_backward(q, k, v, keep, q_pos, k_pos, slopes, causal, lse, delta, d_out):
    """(dq, dk, dv) of one key block, the query chunks scanned with dk, dv accumulated."""
    size = _chunk(q.shape[0], q.shape[2], q.shape[1], k.shape[1])

    def one(carry, args):
        q_c, pos_c, lse_c, delta_c, d_out_c = args
        s = _scores(q_c, k, keep, pos_c, k_pos, slopes, causal)
        p = jnp.exp(s - jnp.moveaxis(lse_c, 1, 2)[..., None])
        d_v = jnp.einsum("bnqk,bqnh->bknh", p, d_out_c)
        d_p = jnp.einsum("bqnh,bknh->bnqk", d_out_c, v)
        d_s = p * (d_p - jnp.moveaxis(delta_c, 1, 2)[..., None])
        d_k = jnp.einsum("bnqk,bqnh->bknh", d_s, q_c)
        d_q = jnp.einsum("bnqk,bknh->bqnh", d_s, k)
        return (carry[0] + d_k, carry[1] + d_v), d_q

    per_query = (_chunks(x, size) for x in (lse, delta, d_out))
    xs = (_chunks(q, size), q_pos.reshape(-1, size), *per_query)
    (d_k, d_v), d_q = lax.scan(one, (jnp.zeros_like(k), jnp.zeros_like(v)), xs)
    return _unchunk(d_q), d_k, d_v


def _merge(out, lse, out_s, lse_s):
    """Online softmax: two partial results over disjoint keys -> the result over both."""
    new = jnp.logaddexp(lse, lse_s)
    return out * jnp.exp(lse - new)[..., None] + out_s * jnp.exp(lse_s - new)[..., None], new


class _Ring:
    """Where this device sits: its query positions, and the key positions of step s's block."""

    def __init__(self, axis: Axis, size: int, ring: bool, queries: int, padded: int, keys: int):
        self.axis, self.size, self.ring, self.keys = axis, size, ring, keys
        self.index = 0 if axis is None else lax.axis_index(axis)
        self.q_pos = self.index * queries + jnp.arange(padded)  # padding queries go last
        self.last = self.index * queries + queries - 1
        self.steps = size if ring else 1

    def k_pos(self, step: jax.Array) -> jax.Array:
        source = (self.index - step) % self.size if self.ring else 0
        return source * self.keys + jnp.arange(self.keys)

    def visible(self, k_pos: jax.Array) -> jax.Array:
        """Whether any key of the block is at or before the last query (causal)."""
        return k_pos[0] <= self.last

    def shift(self, xs: tuple) -> tuple:
        """Each device's blocks to the next device on the ring (a no-op without one)."""
        if not self.ring:
            return xs
        perm = [(j, (j + 1) % self.size) for j in range(self.size)]
        return tuple(lax.ppermute(x, self.axis, perm) for x in xs)

    def loop(self, body, carry):
        """`body(step, carry)` for each ring step, in a scan: one step's scores live at a time."""
        return lax.scan(lambda c, step: (body(step, c), None), carry, jnp.arange(self.steps))[0]


def _when(visible: jax.Array | None, compute, zeros):
    """compute() where the block is visible (always when `visible` is None), else zeros()."""
    return compute() if visible is None else lax.cond(visible, compute, zeros)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _core(axis: Axis, size: int, ring: bool, causal: bool, queries: int, q, k, v, keep, slopes):
    """`queries`: this device's query count before padding (the stride of its positions)."""
    return _core_fwd(axis, size, ring, causal, queries, q, k, v, keep, slopes)[0]


def _core_fwd(axis, size, ring, causal, queries, q, k, v, keep, slopes):
    where = _Ring(axis, size, ring, queries, q.shape[1], k.shape[1])

    def hidden():
        return jnp.zeros_like(q), jnp.full(q.shape[:3], NEG_INF, jnp.float32)

    def step(i, carry):
        out, lse, kv = carry
        k_pos = where.k_pos(i)
        out_s, lse_s = _when(
            where.visible(k_pos) if causal else None,
            lambda: _block_forward(q, *kv, where.q_pos, k_pos, slopes, causal),
            hidden,
        )
        return (*_merge(out, lse, out_s, lse_s), where.shift(kv))

    out, lse, _ = where.loop(step, (*hidden(), (k, v, keep)))
    return out, (q, k, v, keep, slopes, out, lse)


def _core_bwd(axis, size, ring, causal, queries, residuals, d_out):
    q, k, v, keep, slopes, out, lse = residuals
    where = _Ring(axis, size, ring, queries, q.shape[1], k.shape[1])
    delta = jnp.sum(d_out * out, axis=-1)  # rowsum(dO * O) = rowsum(P * dP)

    def hidden():
        return jnp.zeros_like(q), jnp.zeros_like(k), jnp.zeros_like(v)

    def step(i, carry):
        d_q, (k_s, v_s, keep_s, d_k, d_v) = carry
        k_pos = where.k_pos(i)
        args = (where.q_pos, k_pos, slopes, causal, lse, delta, d_out)
        g_q, g_k, g_v = _when(
            where.visible(k_pos) if causal else None,
            lambda: _block_backward(q, k_s, v_s, keep_s, *args),
            hidden,
        )
        # Gradients travel with their block; after a full ring they are home.
        return d_q + g_q, where.shift((k_s, v_s, keep_s, d_k + g_k, d_v + g_v))

    zeros = hidden()
    d_q, travel = where.loop(step, (zeros[0], (k, v, keep, zeros[1], zeros[2])))
    d_slopes = None if slopes is None else jnp.zeros_like(slopes)  # slopes are constants
    return d_q, travel[3], travel[4], None, d_slopes


_core.defvjp(_core_fwd, _core_bwd)


def local_attention(
    q_BxLxNxH: jax.Array,
    k_BxLxNxH: jax.Array,
    v_BxLxNxH: jax.Array,
    keep_BxL: jax.Array,
    *,
    causal: bool = False,
    alibi_slopes_N: jax.Array | None = None,
    axis: Axis = None,
    axis_size: int = 1,
    mode: str = "ring",
) -> jax.Array:
    """softmax(q k^T / sqrt(H) - ALiBi) v over kept keys, for this device's slice of a window
    sharded along `axis` (inside `shard_map`), or of a whole window with `axis=None`."""
    dtype = q_BxLxNxH.dtype
    q, k, v = (x.astype(jnp.float32) for x in (q_BxLxNxH, k_BxLxNxH, v_BxLxNxH))
    q = q * q.shape[-1] ** -0.5
    ring = mode == "ring" and axis is not None and axis_size > 1
    if mode == "gather" and axis is not None and axis_size > 1:
        k, v, keep_BxL = (lax.all_gather(x, axis, axis=1, tiled=True) for x in (k, v, keep_BxL))
    slopes = None if alibi_slopes_N is None else alibi_slopes_N.astype(jnp.float32)
    # Queries padded to a whole number of budget-sized chunks (their outputs are dropped).
    batch, queries, heads = q.shape[:3]
    chunk = min(queries, max(1, SCORE_BUDGET // (batch * heads * k.shape[1])))
    q = jnp.pad(q, ((0, 0), (0, -queries % chunk), (0, 0), (0, 0)))
    out = _core(axis, axis_size, ring, causal, queries, q, k, v, keep_BxL, slopes)
    return out[:, :queries].astype(dtype)
