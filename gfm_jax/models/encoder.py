"""The transformer encoder: token embedding -> pre-LN blocks -> final norm.

One backbone for both objectives: bidirectional attention for masked-LM, or causal attention
(`causal=True`) for next-token prediction. Positions are rotary, ALiBi, or learned absolute
embeddings added to the token embeddings. Layers are a Python loop, or one `nn.scan` over
stacked parameters (`scan_layers`: one compiled block, faster compiles for deep models); remat
policies trade memory for recomputation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gfm_jax import ops
from gfm_jax.errors import UserError
from gfm_jax.models.attention import RopeTables, SelfAttention, rope_tables
from gfm_jax.models.layers import Mlp, Norm, constrain, dtype_of, normal_init

# remat name -> what the backward pass may keep instead of recomputing (None: no remat).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs
}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The model hyperparameters, hashable (Flax module attribute) and typed."""

    vocab_size: int
    num_layers: int
    hidden_size: int
    num_heads: int
    mlp_dim: int
    activation: str = "swiglu"  # swiglu | geglu | gelu
    use_bias_attn: bool = True
    use_bias_mlp: bool = False
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    position: str = "rope"  # rope | alibi | learned
    max_positions: int = 0  # learned positions: table size (longest sequence, CLS included)
    rope_base: float = 10000.0
    dtype: str = "float32"
    kernels: str = "auto"  # auto | xla: how ops run (gfm_jax/ops)
    remat: str = "none"  # none | full | save_dots
    scan_layers: bool = False
    causal: bool = False
    tie_embeddings: bool = False  # MLM decoder = token embeddings transposed (+ bias)
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_config(
        cls, model: ml_collections.ConfigDict, vocab_size: int, causal: bool = False
    ) -> EncoderConfig:
        """From a `config.model` block; `causal` comes from `train.objective`, not the model.
        Keys that are not fields (such as a saved config's retired kernel settings) are
        ignored."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"vocab_size", "causal"}
        values = {k: v for k, v in model.items() if k in fields}
        cfg = cls(vocab_size=vocab_size, causal=causal, **values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def one_of(key: str, choices: Sequence[str]) -> tuple[bool, str]:
            return getattr(self, key) in choices, f"model.{key} must be one of {', '.join(choices)}"

        checks = [
            (self.hidden_size % self.num_heads == 0, "model.hidden_size must divide by num_heads"),
            (
                self.head_dim % 2 == 0 or self.position != "rope",
                "model.hidden_size / num_heads must be even for RoPE",
            ),
            one_of("position", ("rope", "alibi", "learned")),
            (
                self.position != "learned" or self.max_positions > 0,
                "model.position='learned' needs model.max_positions > 0",
            ),
            one_of("activation", ("swiglu", "geglu", "gelu")),
            one_of("norm", ("layernorm", "rmsnorm")),
            one_of("remat", tuple(REMAT_POLICIES)),
            one_of("kernels", ops.KERNELS),
            one_of("dtype", ("float32", "bfloat16", "float16")),
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
    def __call__(
        self, x_BxLxD: jax.Array, mask: ops.TokenMask, rope: RopeTables | None
    ) -> jax.Array:
        c = self.config
        dtype = dtype_of(c.dtype)
        h = Norm(c.norm, c.norm_eps, dtype, name="attn_norm")(x_BxLxD)
        h = SelfAttention(
            num_heads=c.num_heads,
            head_dim=c.head_dim,
            hidden_size=c.hidden_size,
            position=c.position,
            causal=c.causal,
            use_bias=c.use_bias_attn,
            std=c.init_std,
            dtype=dtype,
            kernels=c.kernels,
            mesh=self.mesh,
            rules=self.rules,
            name="attn",
        )(h, mask, rope)
        x_BxLxD = self._constrain(x_BxLxD + h)
        h = Norm(c.norm, c.norm_eps, dtype, name="mlp_norm")(x_BxLxD)
        h = Mlp(
            c.hidden_size,
            c.mlp_dim,
            c.activation,
            c.use_bias_mlp,
            c.init_std,
            dtype,
            c.kernels,
            name="mlp",
        )(h)
        return self._constrain(x_BxLxD + h)

    def _constrain(self, x_BxLxD: jax.Array) -> jax.Array:
        return constrain(x_BxLxD, ("batch", "length", "embed"), self.mesh, self.rules)


class ScannedBlock(nn.Module):
    """A Block with the (carry, output) signature `nn.scan` needs."""

    config: EncoderConfig
    mesh: Any = None
    rules: Sequence = ()

    @nn.compact
    def __call__(self, x_BxLxD, mask, rope):
        block = _remat(Block, self.config)(self.config, self.mesh, self.rules, name="block")
        return block(x_BxLxD, mask, rope), None


def _remat(cls: type[nn.Module], c: EncoderConfig) -> type[nn.Module]:
    return cls if c.remat == "none" else nn.remat(cls, policy=REMAT_POLICIES[c.remat])


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
        x_BxLxD = self._embed(ids_BxL).astype(dtype)
        x_BxLxD = constrain(x_BxLxD, ("batch", "length", "embed"), self.mesh, self.rules)
        # The tokens in the layout the attention kernel takes (see ops.TokenMask).
        mask = ops.TokenMask.create(mask_BxL, c.kernels, dtype, reorder=c.position != "alibi")
        x_BxLxD = mask.enter(x_BxLxD)
        rope = None
        if c.position == "rope":
            rope = rope_tables(x_BxLxD.shape[1], c.head_dim, c.rope_base, mask.order_BxL)
        if c.scan_layers:
            stack = nn.scan(
                ScannedBlock,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=c.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x_BxLxD, _ = stack(c, self.mesh, self.rules, name="layers")(x_BxLxD, mask, rope)
        else:
            for i in range(c.num_layers):
                block = _remat(Block, c)(c, self.mesh, self.rules, name=f"layer_{i}")
                x_BxLxD = block(x_BxLxD, mask, rope)
        x_BxLxD = mask.exit(x_BxLxD)
        return Norm(c.norm, c.norm_eps, dtype, name="final_norm")(x_BxLxD)

    def _embed(self, ids_BxL: jax.Array) -> jax.Array:
        """Token embeddings, plus learned position embeddings where the model has them."""
        c = self.config
        x_BxLxD = nn.Embed(
            c.vocab_size,
            c.hidden_size,
            embedding_init=normal_init(c.init_std, ("vocab", "embed")),
            name="embed",
        )(ids_BxL)
        if c.position != "learned":
            return x_BxLxD
        length = ids_BxL.shape[1]
        if length > c.max_positions:
            raise UserError(
                f"sequences of {length} tokens exceed model.max_positions={c.max_positions} "
                "learned positions; shorten the windows or raise max_positions"
            )
        positions = nn.Embed(
            c.max_positions,
            c.hidden_size,
            embedding_init=normal_init(c.init_std, (None, "embed")),
            name="position_embed",
        )
        return x_BxLxD + positions(jnp.arange(length)[None, :])
