"""Attention: one entry point, `attend`, whatever kernel runs it.

Implementations, chosen by `implementation(kernels, dtype, length)`:
- `xla`, the reference: `jax.nn.dot_product_attention(implementation="xla")`.
- `cudnn` (`kernels="auto"` on a GPU in bf16/fp16): cuDNN's fused attention through the same
  JAX function. It takes padding as key lengths and trains at even lengths only, so the
  encoder hands it tokens in a `TokenMask` layout: each row's kept tokens first, one masked
  token appended to an odd window.
- `blocked` (`kernels="auto"` on a CPU from `BLOCKED_MIN_LENGTH` tokens): ops/blocked_attention.py.
- `chunked` (`kernels="auto"`, no cuDNN, from `CHUNKED_MIN_LENGTH` tokens): query chunks against
  all keys, scores recomputed in the backward pass, so memory stays linear in the length.
- `ring` / `gather`: whenever the mesh shards the length (logical `length` -> the `sequence`
  axis), whatever `kernels` says: ops/context_parallel.py; `CONTEXT_PARALLEL` picks one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from gfm_jax.ops.blocked_attention import blocked_attention
from gfm_jax.ops.context_parallel import local_attention

# On a CPU the blocked kernel pays off once a head's L x L scores outgrow the cache; below
# this length XLA's attention is as fast and compiles quicker.
BLOCKED_MIN_LENGTH = 256
# From here a window's L x L scores (per head group) no longer fit memory comfortably.
CHUNKED_MIN_LENGTH = 8192
# ring or gather for a sharded length, per backend (docs/benchmarks.md, "Long context"); ring
# where nothing was measured, as its memory per device falls with the shard count.
CONTEXT_PARALLEL = {"cpu": "gather"}


def implementation(kernels: str, dtype: Any, length: int, shards: int = 1) -> str:
    """Which implementation runs attention for `model.kernels` on the default backend, for a
    window of `length` tokens split in `shards` along the mesh."""
    if kernels not in ("auto", "xla"):
        raise ValueError(f"unknown kernels {kernels!r}")
    if shards > 1:
        return CONTEXT_PARALLEL.get(jax.default_backend(), "ring")
    if kernels == "xla":
        return "xla"
    backend = jax.default_backend()
    if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    if length >= CHUNKED_MIN_LENGTH:
        return "chunked"
    if backend == "cpu":
        return "blocked" if length >= BLOCKED_MIN_LENGTH else "xla"
    return "xla"


def length_axes(mesh: Any, rules: Sequence) -> tuple[tuple[str, ...], int]:
    """The mesh axes the logical `length` maps to, and how many shards they make."""
    if mesh is None:
        return (), 1
    axes = nn.logical_to_mesh_axes(("length",), rules)[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return axes, math.prod(mesh.shape[a] for a in axes)


@flax.struct.dataclass
class TokenMask:
    """Which tokens are real, in the order and length the attention kernel takes them.

    Exact at real tokens whatever the layout: only attention mixes tokens, it sees the same
    real keys (a stable reorder keeps causal order), and positions travel with the tokens.
    Outputs at padding are unspecified."""

    keep_BxL: jax.Array
    length: int = flax.struct.field(pytree_node=False)  # the tokens' own, before any padding
    order_BxL: jax.Array | None = None  # original index of each token; None: unchanged
    keys_prefix: bool = flax.struct.field(pytree_node=False, default=False)  # kept come first

    @classmethod
    def create(
        cls,
        keep_BxL: jax.Array,
        kernels: str,
        dtype: Any,
        reorder: bool = True,
        mesh: Any = None,
        rules: Sequence = (),
    ) -> TokenMask:
        """The layout for `kernels`: for cuDNN, an even length and (with `reorder`; not for
        ALiBi, whose bias needs the original order) each row's kept tokens first; on a mesh
        that shards the length, a multiple of its shard count (added tokens are masked)."""
        length = keep_BxL.shape[1]
        shards = length_axes(mesh, rules)[1]
        if shards > 1:
            return cls(jnp.pad(keep_BxL, ((0, 0), (0, -length % shards))), length)
        if implementation(kernels, dtype, length) != "cudnn":
            return cls(keep_BxL, length)
        keep_BxL = jnp.pad(keep_BxL, ((0, 0), (0, length % 2)))  # an added token is masked
        if not reorder:
            return cls(keep_BxL, length)
        order_BxL = jnp.argsort(~keep_BxL, axis=-1, stable=True)
        return cls(jnp.take_along_axis(keep_BxL, order_BxL, axis=1), length, order_BxL, True)

    def enter(self, x_BxLxD: jax.Array) -> jax.Array:
        """Token features into this layout."""
        pad = self.keep_BxL.shape[1] - x_BxLxD.shape[1]
        x_BxLxD = jnp.pad(x_BxLxD, ((0, 0), (0, pad), (0, 0)))
        if self.order_BxL is None:
            return x_BxLxD
        return jnp.take_along_axis(x_BxLxD, self.order_BxL[..., None], axis=1)

    def exit(self, x_BxLxD: jax.Array) -> jax.Array:
        """Token features back in their original order and length."""
        if self.order_BxL is not None:
            inverse_BxL = jnp.argsort(self.order_BxL, axis=-1)
            x_BxLxD = jnp.take_along_axis(x_BxLxD, inverse_BxL[..., None], axis=1)
        return x_BxLxD[:, : self.length]


def alibi_bias(slopes_N: jax.Array, length: int) -> jax.Array:
    """[1, N, L, L] float32: -slope * |i - j|, symmetric (bidirectional, as in DNABERT-2)."""
    pos = jnp.arange(length)
    distance_LxL = jnp.abs(pos[:, None] - pos[None, :]).astype(jnp.float32)
    return -slopes_N[None, :, None, None] * distance_LxL[None, None]


def attend(
    q_BxLxNxH: jax.Array,
    k_BxLxNxH: jax.Array,
    v_BxLxNxH: jax.Array,
    mask: TokenMask | jax.Array,
    *,
    kernels: str = "xla",
    alibi_slopes_N: jax.Array | None = None,
    causal: bool = False,
    mesh: Any = None,
    rules: Sequence = (),
) -> jax.Array:
    """softmax(q k^T / sqrt(H) - ALiBi) v over the kept keys, in q's dtype.

    `mask`: a `TokenMask`, or a [B, L] boolean array of kept keys. cuDNN runs at even lengths
    only; the encoder's `TokenMask` pads odd windows, and other odd inputs take XLA's path."""
    if not isinstance(mask, TokenMask):
        mask = TokenMask(mask, mask.shape[1])
    length = q_BxLxNxH.shape[1]
    impl = implementation(kernels, q_BxLxNxH.dtype, length, length_axes(mesh, rules)[1])
    if impl in ("chunked", "ring", "gather"):
        return _context_parallel(
            q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, mask.keep_BxL, alibi_slopes_N, causal, mesh, rules,
            impl,
        )  # fmt: skip
    if impl == "blocked":
        return _sharded_blocked(
            q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, mask.keep_BxL, alibi_slopes_N, causal, mesh, rules
        )
    bias = None
    if alibi_slopes_N is not None:
        bias = alibi_bias(alibi_slopes_N, length).astype(q_BxLxNxH.dtype)
    by = functools.partial(jax.nn.dot_product_attention, bias=bias, is_causal=causal)
    qkv = (q_BxLxNxH, k_BxLxNxH, v_BxLxNxH)
    if impl == "cudnn" and length % 2 == 0:
        if mask.keys_prefix:
            # A row without keys (all padding) attends to its first: finite, and unused.
            lengths_B = jnp.maximum(jnp.sum(mask.keep_BxL, axis=-1, dtype=jnp.int32), 1)
            return by(*qkv, key_value_seq_lengths=lengths_B, implementation="cudnn")
        return _by_lengths_or_mask(by, *qkv, mask.keep_BxL)
    return by(*qkv, mask=mask.keep_BxL[:, None, None, :], implementation="xla")


def _by_lengths_or_mask(by, q, k, v, keep_BxL: jax.Array) -> jax.Array:
    """cuDNN with key lengths where every row keeps a prefix of its keys (checked on the
    device), else XLA with the dense mask, rematerialised so the cuDNN branch does not carry
    that branch's residuals through the step."""
    lengths_B = jnp.sum(keep_BxL, axis=-1, dtype=jnp.int32)
    prefix_BxL = jnp.arange(keep_BxL.shape[-1])[None, :] < lengths_B[:, None]
    is_prefix = jnp.all(prefix_BxL == keep_BxL) & jnp.all(lengths_B > 0)

    def dense(q, k, v):
        return by(q, k, v, mask=keep_BxL[:, None, None, :], implementation="xla")

    def lengths(q, k, v):
        return by(q, k, v, key_value_seq_lengths=lengths_B, implementation="cudnn")

    return jax.lax.cond(is_prefix, lengths, jax.checkpoint(dense), q, k, v)


def _divides(shape: tuple[int, ...], spec: Any, mesh: Any) -> bool:
    for size, axes in zip(shape, spec, strict=False):
        names = () if axes is None else (axes,) if isinstance(axes, str) else axes
        if size % math.prod(mesh.shape[a] for a in names):
            return False
    return True


def _per_shard(run, q, k, v, keep_BxL, slopes_N, mesh: Any, rules: Sequence, whole=None):
    """`run(q, k, v, keep, slopes)` on each device's (batch, length, head) shard; without a
    mesh, or at shapes the mesh does not divide (model.init's batch of 1), one call of
    `whole` (default `run`) on the global arrays."""
    qkv = (
        None if mesh is None else nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"), rules)
    )
    if qkv is None or not _divides(q.shape, qkv, mesh):
        return (whole or run)(q, k, v, keep_BxL, slopes_N)
    keep = nn.logical_to_mesh_axes(("batch", "length"), rules)
    slopes = None if slopes_N is None else nn.logical_to_mesh_axes(("heads",), rules)
    return jax.shard_map(
        run, mesh=mesh, in_specs=(qkv, qkv, qkv, keep, slopes), out_specs=qkv, check_vma=False
    )(q, k, v, keep_BxL, slopes_N)


def _sharded_blocked(q, k, v, keep_BxL, slopes_N, causal: bool, mesh: Any, rules: Sequence):
    """The blocked kernel per (batch, head) shard: attention mixes neither axis, so it needs
    no communication (the length is not sharded on this path)."""
    run = lambda q, k, v, m, s: blocked_attention(q, k, v, m, causal=causal, alibi_slopes_N=s)
    return _per_shard(run, q, k, v, keep_BxL, slopes_N, mesh, rules)


def _context_parallel(q, k, v, keep_BxL, slopes_N, causal: bool, mesh, rules, mode: str):
    """ops/context_parallel.py per (batch, length, head) shard, the length shards talking
    over their mesh axes; with one length shard, one call on the global arrays."""
    axes, shards = length_axes(mesh, rules)

    def whole(q, k, v, m, s):
        return local_attention(q, k, v, m, causal=causal, alibi_slopes_N=s)

    def run(q, k, v, m, s):
        axis = axes[0] if len(axes) == 1 else axes
        return local_attention(
            q, k, v, m, causal=causal, alibi_slopes_N=s, axis=axis, axis_size=shards, mode=mode
        )

    if shards == 1:
        return whole(q, k, v, keep_BxL, slopes_N)
    return _per_shard(run, q, k, v, keep_BxL, slopes_N, mesh, rules, whole)
