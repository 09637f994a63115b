"""The transformer encoder: token embedding -> pre-LN blocks -> final norm."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gfm_jax.errors import UserError
from gfm_jax.models.attention import SelfAttention
from gfm_jax.models.layers import Mlp, Norm, constrain, dtype_of, normal_init


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The model hyperparameters, hashable (Flax module attribute) and typed."""

    vocab_size: int
    num_layers: int
    hidden_size: int
    num_heads: int
    mlp_dim: int
    activation: str = "swiglu"
    use_bias_attn: bool = True
    use_bias_mlp: bool = False
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    position: str = "rope"
    rope_base: float = 10000.0
    dtype: str = "float32"
    attention: str = "xla"
    remat: str = "none"
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_config(cls, model: ml_collections.ConfigDict, vocab_size: int) -> EncoderConfig:
        fields = {f.name for f in dataclasses.fields(cls)} - {"vocab_size"}
        values = {k: v for k, v in model.items() if k in fields}
        cfg = cls(vocab_size=vocab_size, **values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        checks = [
            (self.hidden_size % self.num_heads == 0, "model.hidden_size must divide by num_heads"),
            (self.head_dim % 2 == 0, "model.hidden_size / num_heads must be even for RoPE"),
            (self.position == "rope", "model.position: only 'rope' is implemented"),
            (self.remat in ("none", "full"), "model.remat must be 'none' or 'full'"),
            (
                self.attention in ("xla", "cudnn", "reference"),
                "model.attention must be xla, cudnn or reference",
            ),
            (self.dtype in ("float32", "bfloat16", "float16"), "model.dtype: float32 / bfloat16"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"{message} (got {self})")


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    config: EncoderConfig
    mesh: Any = None
    rules: Sequence = ()

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, mask_BxL: jax.Array, positions_BxL: jax.Array):
        c = self.config
        dtype = dtype_of(c.dtype)
        h = Norm(c.norm, c.norm_eps, dtype, name="attn_norm")(x_BxLxD)
        h = SelfAttention(
            num_heads=c.num_heads,
            head_dim=c.head_dim,
            hidden_size=c.hidden_size,
            rope_base=c.rope_base,
            use_bias=c.use_bias_attn,
            implementation=c.attention,
            std=c.init_std,
            dtype=dtype,
            name="attn",
        )(h, mask_BxL, positions_BxL)
        x_BxLxD = constrain(x_BxLxD + h, ("batch", "length", "embed"), self.mesh, self.rules)
        h = Norm(c.norm, c.norm_eps, dtype, name="mlp_norm")(x_BxLxD)
        h = Mlp(
            c.hidden_size, c.mlp_dim, c.activation, c.use_bias_mlp, c.init_std, dtype, name="mlp"
        )(h)
        return constrain(x_BxLxD + h, ("batch", "length", "embed"), self.mesh, self.rules)


class Encoder(nn.Module):
    """ids [B, L] (+ padding mask) -> hidden states [B, L, D] after the final norm."""

    config: EncoderConfig
    mesh: Any = None
    rules: Sequence = ()

    @nn.compact
    def __call__(self, ids_BxL: jax.Array, mask_BxL: jax.Array | None = None) -> jax.Array:
        c = self.config
        dtype = dtype_of(c.dtype)
        if mask_BxL is None:
            mask_BxL = jnp.ones(ids_BxL.shape, jnp.bool_)
        positions_BxL = jnp.broadcast_to(jnp.arange(ids_BxL.shape[1]), ids_BxL.shape)
        x_BxLxD = nn.Embed(
            c.vocab_size,
            c.hidden_size,
            embedding_init=normal_init(c.init_std, ("vocab", "embed")),
            name="embed",
        )(ids_BxL).astype(dtype)
        x_BxLxD = constrain(x_BxLxD, ("batch", "length", "embed"), self.mesh, self.rules)
        block_cls = nn.remat(Block) if c.remat == "full" else Block
        for i in range(c.num_layers):
            x_BxLxD = block_cls(c, self.mesh, self.rules, name=f"layer_{i}")(
                x_BxLxD, mask_BxL, positions_BxL
            )
        return Norm(c.norm, c.norm_eps, dtype, name="final_norm")(x_BxLxD)
