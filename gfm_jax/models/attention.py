"""Multi-head self-attention: rotary or ALiBi positions, padding masks, optional causal mask.

The attention itself is chosen by config: `jax.nn.dot_product_attention` (`xla`, or `cudnn`
on GPU with bf16/fp16), `blocked` (blocked_attention.py: cache-sized blocks with a recomputing
backward pass, the fast path on CPU), or `auto` (blocked on CPU from 256 tokens, cuDNN for
bf16/fp16 on GPU, otherwise xla). `reference_attention` is the plain einsum version tests
compare against. (Learned absolute positions are added to the embeddings in encoder.py, so
attention sees no positions then.)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gfm_jax.models.blocked_attention import blocked_attention
from gfm_jax.models.layers import Dtype, ProjectionParams, dense
from gfm_jax.models.matmul import dot_general_for

IMPLEMENTATIONS = ("auto", "blocked", "xla", "cudnn", "reference")


def rope_tables(length: int, head_dim: int, base: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin [1, L, 1, H] of the rotary angles of positions 0 .. L-1 (float32).

    Computed with numpy while tracing: they depend only on the window length, so XLA gets them
    as constants and evaluates no cos/sin at run time. Computed in the graph, XLA fused the
    cos/sin into each consumer and evaluated them again for every (head, q/k) element, forward
    and backward, even behind an optimization barrier (XLA:CPU removes barriers before fusion);
    the constants made the CPU benchmark's step about 10% faster."""
    inv_freq_H2 = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    angles_LxH2 = np.arange(length, dtype=np.float32)[:, None] * inv_freq_H2.astype(np.float32)
    angles_1xLx1xH = np.concatenate([angles_LxH2, angles_LxH2], axis=-1)[None, :, None, :]
    return jnp.asarray(np.cos(angles_1xLx1xH)), jnp.asarray(np.sin(angles_1xLx1xH))


def _rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


@jax.custom_vjp
def _rope_f32(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    return x * cos + _rotate_half(x) * sin


def _rope_fwd(x, cos, sin):
    return _rope_f32(x, cos, sin), (cos, sin)


def _rope_bwd(residuals, dy):
    # The rotation is linear in x: dx = R^T dy, and rotate-half is antisymmetric, so
    # R^T dy = dy cos - rotate_half(dy sin): one pass, where autodiff would transpose the
    # split / concatenate of rotate_half into pads and adds. The tables are constants of the
    # window length, so they get no gradient.
    cos, sin = residuals
    return dy * cos - _rotate_half(dy * sin), jnp.zeros_like(cos), jnp.zeros_like(sin)


_rope_f32.defvjp(_rope_fwd, _rope_bwd)


def apply_rope(x_BxLxNxH: jax.Array, cos_1xLx1xH: jax.Array, sin_1xLx1xH: jax.Array) -> jax.Array:
    """Rotary embedding in the rotate-half layout (as in ESM-2 / Nucleotide Transformer v2)."""
    out = _rope_f32(x_BxLxNxH.astype(jnp.float32), cos_1xLx1xH, sin_1xLx1xH)
    return out.astype(x_BxLxNxH.dtype)


def alibi_slopes(num_heads: int) -> jax.Array:
    """Per-head ALiBi slopes 2^(-8 i / n) (Press et al.), interleaved for non-powers of two."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = [2.0 ** (-8.0 * (i + 1) / closest) for i in range(closest)]
    extra = [2.0 ** (-4.0 * (2 * i + 1) / closest) for i in range(num_heads - closest)]
    return jnp.asarray(base + extra, jnp.float32)


def alibi_bias(num_heads: int, length: int) -> jax.Array:
    """[1, N, L, L] float32: -slope * |i - j|, symmetric (bidirectional, as in DNABERT-2)."""
    pos = jnp.arange(length)
    distance_LxL = jnp.abs(pos[:, None] - pos[None, :]).astype(jnp.float32)
    return -alibi_slopes(num_heads)[None, :, None, None] * distance_LxL[None, None]


def reference_attention(
    q_BxLxNxH: jax.Array,
    k_BxLxNxH: jax.Array,
    v_BxLxNxH: jax.Array,
    mask_BxL: jax.Array,
    bias: jax.Array | None = None,
    causal: bool = False,
) -> jax.Array:
    """Softmax(q k^T / sqrt(H) + bias) v in float32, keys masked where mask_BxL is False."""
    scale = q_BxLxNxH.shape[-1] ** -0.5
    logits_BxNxLxL = jnp.einsum(
        "bqnh,bknh->bnqk", q_BxLxNxH.astype(jnp.float32), k_BxLxNxH.astype(jnp.float32)
    )
    logits_BxNxLxL = logits_BxNxLxL * scale
    if bias is not None:
        logits_BxNxLxL = logits_BxNxLxL + bias
    keep = mask_BxL[:, None, None, :]
    if causal:
        length = q_BxLxNxH.shape[1]
        keep = keep & jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]
    logits_BxNxLxL = jnp.where(keep, logits_BxNxLxL, -1e30)
    probs = jax.nn.softmax(logits_BxNxLxL, axis=-1)
    out = jnp.einsum("bnqk,bknh->bqnh", probs, v_BxLxNxH.astype(jnp.float32))
    return out.astype(q_BxLxNxH.dtype)


# On CPU, blocked attention pays off once a head's L x L scores outgrow the cache; below this
# length XLA's fused attention is as fast and compiles quicker.
BLOCKED_MIN_LENGTH = 256


def resolve_implementation(implementation: str, dtype: Any, length: int) -> str:
    """`auto` -> the fastest implementation for the default backend, dtype and length."""
    if implementation != "auto":
        return implementation
    backend = jax.default_backend()
    if backend == "cpu":
        return "blocked" if length >= BLOCKED_MIN_LENGTH else "xla"
    if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return "xla"


def right_padded_lengths(mask_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each row's count of kept keys, and whether every row keeps exactly that prefix and at
    least one key (what key lengths can express)."""
    lengths_B = jnp.sum(mask_BxL, axis=-1, dtype=jnp.int32)
    prefix_BxL = jnp.arange(mask_BxL.shape[-1])[None, :] < lengths_B[:, None]
    return lengths_B, jnp.all(prefix_BxL == mask_BxL) & jnp.all(lengths_B > 0)


def kept_first_order(mask_BxL: jax.Array) -> jax.Array:
    """Per row, the token indices with the kept ones first, each group in its order: gathering
    by it turns any mask into a right-padded one, and keeps causal order among kept tokens."""
    return jnp.argsort(~mask_BxL, axis=-1, stable=True)


def attend_by_lengths(
    by_lengths: Callable[..., jax.Array],
    by_mask: Callable[..., jax.Array],
    q_BxLxNxH: jax.Array,
    k_BxLxNxH: jax.Array,
    v_BxLxNxH: jax.Array,
    mask_BxL: jax.Array,
) -> jax.Array:
    """`by_lengths(q, k, v, key_value_seq_lengths=)` when the mask is right-padded, as every
    pipeline here pads; else `by_mask(q, k, v, mask=)`, recomputed in the backward pass.

    For cuDNN: a dense mask becomes a B x 1 x L x L bias that it materialises and reads for
    every head, forward and backward, while key lengths are its native padding mask. The
    check runs on the device, so a mask with holes still gets the exact path. That branch is
    rematerialised: differentiating `lax.cond` keeps the residuals of both branches, and the
    fast one would otherwise carry zero-filled copies of the slow one's (its mask or scores)
    through every step. The `lax.cond` itself is not cheap on a GPU: one per layer made the
    train step of 4 nt_v2_500m layers 13.5% slower on an H200 than key lengths alone, which is
    why the encoder partitions tokens instead wherever it can (`keys_right_padded`)."""
    lengths_B, right_padded = right_padded_lengths(mask_BxL)

    def exact(q, k, v):
        return by_mask(q, k, v, mask=mask_BxL[:, None, None, :])

    return jax.lax.cond(
        right_padded,
        lambda q, k, v: by_lengths(q, k, v, key_value_seq_lengths=lengths_B),
        jax.checkpoint(exact),
        q_BxLxNxH,
        k_BxLxNxH,
        v_BxLxNxH,
    )


def attend(
    q_BxLxNxH: jax.Array,
    k_BxLxNxH: jax.Array,
    v_BxLxNxH: jax.Array,
    mask_BxL: jax.Array,
    implementation: str,
    bias: jax.Array | None = None,
    causal: bool = False,
    keys_right_padded: bool = False,
) -> jax.Array:
    """Attention by `implementation`; `blocked` takes ALiBi slopes instead (see SelfAttention).

    `keys_right_padded`: the caller guarantees every mask row keeps a prefix of the keys (the
    encoder moves kept tokens first for cuDNN), so cuDNN gets key lengths with no check on
    the device; otherwise each call checks, and a mask with holes takes XLA's path."""
    if implementation == "reference":
        return reference_attention(q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, mask_BxL, bias, causal)
    if implementation not in ("xla", "cudnn"):
        raise ValueError(f"unknown attention implementation {implementation!r}")
    if bias is not None:
        bias = bias.astype(q_BxLxNxH.dtype)
    if implementation == "cudnn":
        # The fallback for masks with holes is XLA's: cuDNN would take such a mask only as a
        # full-size bias, and the fallback is rare and rematerialised anyway.
        def cudnn(q, k, v, mask, bias):
            by = functools.partial(jax.nn.dot_product_attention, bias=bias, is_causal=causal)
            if keys_right_padded:
                # A row without keys (all padding) attends to its first: finite, and unused.
                lengths_B = jnp.maximum(jnp.sum(mask, axis=-1, dtype=jnp.int32), 1)
                return by(q, k, v, key_value_seq_lengths=lengths_B, implementation="cudnn")
            return attend_by_lengths(
                functools.partial(by, implementation="cudnn"),
                functools.partial(by, implementation="xla"),
                q,
                k,
                v,
                mask,
            )

        return at_even_length(cudnn, q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, mask_BxL, bias)
    return jax.nn.dot_product_attention(
        q_BxLxNxH,
        k_BxLxNxH,
        v_BxLxNxH,
        bias=bias,
        mask=mask_BxL[:, None, None, :],
        is_causal=causal,
        implementation="xla",
    )


def at_even_length(
    attention: Callable[..., jax.Array],
    q_BxLxNxH: jax.Array,
    k_BxLxNxH: jax.Array,
    v_BxLxNxH: jax.Array,
    mask_BxL: jax.Array,
    bias: jax.Array | None,
) -> jax.Array:
    """`attention(q, k, v, mask, bias)` with one masked key and one dropped query appended
    when the length is odd.

    cuDNN trains only at even lengths once a bias is present, and JAX hands it a placeholder
    bias even without one, so it refuses every odd length in training (a GPU run showed it),
    while real windows are CLS + 2^n tokens. The padded key is masked out (a right-padded mask
    stays right-padded, so cuDNN still gets key lengths) and comes after every query, so
    causal attention is unchanged; the padded query's output is dropped."""
    length = q_BxLxNxH.shape[1]
    if length % 2 == 0:
        return attention(q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, mask_BxL, bias)
    pad_length = ((0, 0), (0, 1), (0, 0), (0, 0))
    q, k, v = (jnp.pad(x, pad_length) for x in (q_BxLxNxH, k_BxLxNxH, v_BxLxNxH))
    mask = jnp.pad(mask_BxL, ((0, 0), (0, 1)))  # the new key is masked (False)
    if bias is not None:
        bias = jnp.pad(bias, [(0, 0)] * (bias.ndim - 2) + [(0, 1), (0, 1)])
    return attention(q, k, v, mask, bias)[:, :length]


def _divides(shape: tuple[int, ...], spec: Any, mesh: Any) -> bool:
    for size, axes in zip(shape, spec, strict=False):
        names = () if axes is None else (axes,) if isinstance(axes, str) else axes
        if size % math.prod(mesh.shape[a] for a in names):
            return False
    return True


def sharded_blocked_attention(
    q_BxLxNxH: jax.Array,
    k_BxLxNxH: jax.Array,
    v_BxLxNxH: jax.Array,
    mask_BxL: jax.Array,
    slopes_N: jax.Array | None,
    causal: bool,
    mesh: Any,
    rules: Sequence,
) -> jax.Array:
    """blocked_attention on each device's (batch, head) shard: attention never mixes either
    axis, so no communication is needed; without a mesh it runs on the whole arrays."""
    run = lambda q, k, v, m, s: blocked_attention(  # noqa: E731
        q, k, v, m, causal=causal, alibi_slopes_N=s
    )
    qkv = (
        None if mesh is None else nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"), rules)
    )
    if qkv is None or not _divides(q_BxLxNxH.shape, qkv, mesh):
        # No mesh, or shapes the mesh does not divide (model.init's batch of 1): one call on
        # the global arrays, which XLA partitions as it sees fit.
        return run(q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, mask_BxL, slopes_N)
    mask = nn.logical_to_mesh_axes(("batch", "length"), rules)
    slopes = None if slopes_N is None else nn.logical_to_mesh_axes(("heads",), rules)
    return jax.shard_map(
        run,
        mesh=mesh,
        in_specs=(qkv, qkv, qkv, mask, slopes),
        out_specs=qkv,
        check_vma=False,
    )(q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, mask_BxL, slopes_N)


class SelfAttention(nn.Module):
    num_heads: int
    head_dim: int
    hidden_size: int
    position: str = "rope"  # rope | alibi | learned (added before the blocks) | none
    causal: bool = False
    use_bias: bool = True
    implementation: str = "auto"
    matmul: str = "auto"
    std: float = 0.02
    dtype: Dtype = jnp.float32
    mesh: Any = None
    rules: Sequence = ()
    keys_right_padded: bool = False  # see `attend`
    # Return (output without the output projection's bias, that bias), for the caller to add
    # with the residual (layers.Norm's `residual`).
    defer_out_bias: bool = False

    @nn.compact
    def __call__(
        self, x_BxLxD: jax.Array, mask_BxL: jax.Array, rope_cos_sin: tuple[jax.Array, ...] | None
    ) -> jax.Array | tuple[jax.Array, jax.Array | None]:
        """`rope_cos_sin`: `rope_tables` of the positions when `position == "rope"`."""
        # One matmul for q, k and v (a 3x wider one runs faster than three on CPU and GPU);
        # the parameters stay three DenseGeneral-style kernels, as checkpoints name them.
        kernels, biases = zip(
            *(
                ProjectionParams(
                    x_BxLxD.shape[-1],
                    (self.num_heads, self.head_dim),
                    ("embed", "heads", "kv"),
                    self.use_bias,
                    self.std,
                    name=n,
                )()
                for n in ("query", "key", "value")
            ),
            strict=True,
        )
        kernel_Dx3xNxH = jnp.stack(kernels, axis=1).astype(self.dtype)
        contract_d = (((2,), (0,)), ((), ()))
        qkv_BxLx3xNxH = dot_general_for(self.matmul)(
            x_BxLxD.astype(self.dtype), kernel_Dx3xNxH, contract_d
        )
        if self.use_bias:
            qkv_BxLx3xNxH = qkv_BxLx3xNxH + jnp.stack(biases).astype(self.dtype)
        q, k, v = (qkv_BxLx3xNxH[:, :, i] for i in range(3))
        if self.position == "rope":
            q = apply_rope(q, *rope_cos_sin)
            k = apply_rope(k, *rope_cos_sin)
        implementation = resolve_implementation(self.implementation, self.dtype, x_BxLxD.shape[1])
        if implementation == "blocked":
            slopes = alibi_slopes(self.num_heads) if self.position == "alibi" else None
            out_BxLxNxH = sharded_blocked_attention(
                q, k, v, mask_BxL, slopes, self.causal, self.mesh, self.rules
            )
        else:
            bias = None
            if self.position == "alibi":
                bias = alibi_bias(self.num_heads, x_BxLxD.shape[1])
            out_BxLxNxH = attend(
                q, k, v, mask_BxL, implementation, bias, self.causal, self.keys_right_padded
            )
        if not self.defer_out_bias:
            return dense(
                self.hidden_size,
                ("heads", "kv", "embed"),
                name="out",
                axis=(-2, -1),
                use_bias=self.use_bias,
                std=self.std,
                dtype=self.dtype,
                matmul=self.matmul,
            )(out_BxLxNxH)
        # The same parameters as the `dense` above (ProjectionParams draws them alike).
        kernel_NxHxD, bias_D = ProjectionParams(
            (self.num_heads, self.head_dim),
            (self.hidden_size,),
            ("heads", "kv", "embed"),
            self.use_bias,
            self.std,
            name="out",
        )()
        y_BxLxD = dot_general_for(self.matmul)(
            out_BxLxNxH.astype(self.dtype),
            kernel_NxHxD.astype(self.dtype),
            (((2, 3), (0, 1)), ((), ())),
        )
        return y_BxLxD, bias_D
