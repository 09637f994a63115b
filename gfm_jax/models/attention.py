"""Multi-head self-attention with rotary or ALiBi positions, padding masks and an optional
causal mask. Which kernel computes it is `gfm_jax.ops`'s choice. (Learned absolute
positions are added to the embeddings in encoder.py.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gfm_jax import ops
from gfm_jax.models.adapters import NO_ADAPTER, Adapter, Ia3Scale, LoraDelta
from gfm_jax.models.layers import Dtype, dense, fused_projections

RopeTables = tuple[jax.Array, jax.Array]


ROPE_SCALINGS = ("none", "linear", "ntk")


def rope_tables(
    length: int,
    head_dim: int,
    base: float,
    order_BxL: jax.Array | None = None,
    scaling: str = "none",
    factor: float = 1.0,
) -> RopeTables:
    """cos and sin [1, L, 1, H] of the rotary angles of positions 0 .. L-1 (float32), or
    [B, L, 1, H] at the positions `order_BxL` when the tokens are reordered.

    Context extension by `factor` (windows `factor` x longer than in pretraining): `linear`
    divides positions by it (position interpolation, Chen et al. 2023); `ntk` raises the base
    to base * factor^(H / (H - 2)) (NTK-aware scaling), which keeps the fastest frequencies.
    Built with numpy while tracing, so XLA gets constants instead of evaluating cos and sin
    inside every fusion that reads them."""
    if scaling == "ntk":
        base = base * factor ** (head_dim / (head_dim - 2))
    positions_L = np.arange(length, dtype=np.float32)
    if scaling == "linear":
        positions_L = positions_L / np.float32(factor)
    inv_freq_H2 = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    angles_LxH2 = positions_L[:, None] * inv_freq_H2.astype(np.float32)
    angles_LxH = np.concatenate([angles_LxH2, angles_LxH2], axis=-1)
    tables = [jnp.asarray(f(angles_LxH))[:, None, :] for f in (np.cos, np.sin)]
    if order_BxL is None:
        return tables[0][None], tables[1][None]
    return tables[0][order_BxL], tables[1][order_BxL]


def _rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


@jax.custom_vjp
def _rope_f32(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    return x * cos + _rotate_half(x) * sin


def _rope_fwd(x, cos, sin):
    return _rope_f32(x, cos, sin), (cos, sin)


def _rope_bwd(residuals, dy):
    # The rotation is linear and rotate-half antisymmetric: dx = dy cos - rotate_half(dy sin),
    # one pass where autodiff would transpose the split and concatenate into pads and adds.
    cos, sin = residuals
    return dy * cos - _rotate_half(dy * sin), jnp.zeros_like(cos), jnp.zeros_like(sin)


_rope_f32.defvjp(_rope_fwd, _rope_bwd)


def apply_rope(x_BxLxNxH: jax.Array, tables: RopeTables) -> jax.Array:
    """Rotary embedding in the rotate-half layout (as in ESM-2 / Nucleotide Transformer v2)."""
    return _rope_f32(x_BxLxNxH.astype(jnp.float32), *tables).astype(x_BxLxNxH.dtype)


def alibi_slopes(num_heads: int) -> jax.Array:
    """Per-head ALiBi slopes 2^(-8 i / n) (Press et al.), interleaved for non-powers of two."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = [2.0 ** (-8.0 * (i + 1) / closest) for i in range(closest)]
    extra = [2.0 ** (-4.0 * (2 * i + 1) / closest) for i in range(num_heads - closest)]
    return jnp.asarray(base + extra, jnp.float32)


class SelfAttention(nn.Module):
    num_heads: int
    head_dim: int
    hidden_size: int
    position: str = "rope"  # rope | alibi | learned (added before the blocks)
    causal: bool = False
    use_bias: bool = True
    std: float = 0.02
    dtype: Dtype = jnp.float32
    kernels: str = "auto"
    mesh: Any = None
    rules: Sequence = ()
    adapter: Adapter = NO_ADAPTER

    @nn.compact
    def __call__(
        self, x_BxLxD: jax.Array, mask: ops.TokenMask, rope: RopeTables | None
    ) -> jax.Array:
        """`rope`: `rope_tables` of the tokens' positions when `position == "rope"`."""
        common = dict(use_bias=self.use_bias, std=self.std, dtype=self.dtype, kernels=self.kernels)
        qkv_BxLx3xNxH = fused_projections(
            x_BxLxD,
            ("query", "key", "value"),
            (self.num_heads, self.head_dim),
            ("embed", "heads", "kv"),
            **common,
            adapter=self.adapter,
        )
        q, k, v = (qkv_BxLx3xNxH[:, :, i] for i in range(3))
        shape, names = (self.num_heads, self.head_dim), ("heads", "kv")
        if self.adapter.ia3("key"):
            k = Ia3Scale(shape, names, name="key_ia3")(k)
        if self.adapter.ia3("value"):
            v = Ia3Scale(shape, names, name="value_ia3")(v)
        if self.position == "rope":
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        out_BxLxNxH = ops.attend(
            q,
            k,
            v,
            mask,
            kernels=self.kernels,
            alibi_slopes_N=alibi_slopes(self.num_heads) if self.position == "alibi" else None,
            causal=self.causal,
            mesh=self.mesh,
            rules=self.rules,
        )
        out = dense(self.hidden_size, ("heads", "kv", "embed"), name="out", axis=(-2, -1), **common)
        y_BxLxD = out(out_BxLxNxH)
        if self.adapter.lora("out"):
            lora = LoraDelta(self.hidden_size, ("heads", "kv", "embed"), (-2, -1), self.adapter,
                             self.dtype, name="out_lora")  # fmt: skip
            y_BxLxD = y_BxLxD + lora(out_BxLxNxH)
        return y_BxLxD
