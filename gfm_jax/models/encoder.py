"""The transformer encoder: token embedding -> pre-LN blocks -> final norm.

One backbone for both objectives: bidirectional attention for masked-LM, or causal attention
(`causal=True`) for next-token prediction. Positions are rotary, ALiBi, or learned absolute
embeddings added to the token embeddings. Layers are a Python loop by default, or one
`nn.scan` over stacked parameters (`scan_layers`: one compiled block, faster compiles for deep
models); remat policies trade memory for recomputation. On the cuDNN attention path each
row's kept tokens are moved first for the layers and put back after them (`partitions_tokens`),
so attention takes the padding mask as key lengths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gfm_jax.errors import UserError
from gfm_jax.models.attention import (
    IMPLEMENTATIONS,
    SelfAttention,
    kept_first_order,
    resolve_implementation,
    rope_tables,
)
from gfm_jax.models.layers import (
    GLU_GRADS,
    NORM_GRADS,
    Mlp,
    Norm,
    constrain,
    dtype_of,
    normal_init,
    resolve_norm_grad,
)
from gfm_jax.models.matmul import MATMULS


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
    norm_grad: str = "auto"  # auto | xla | written | pallas: the norms' kernels (layers.Norm)
    glu_grad: str = "auto"  # auto | xla | pallas | fused: SwiGLU's backward pass (layers.Mlp)
    position: str = "rope"  # rope | alibi | learned
    max_positions: int = 0  # learned positions: table size (longest sequence, CLS included)
    rope_base: float = 10000.0
    dtype: str = "float32"
    attention: str = "auto"  # auto | blocked | xla | cudnn | reference (see attention.py)
    matmul: str = "auto"  # auto | xla | cpu_gemm: dense-layer backward pass (see matmul.py)
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
        """From a `config.model` block; `causal` comes from `train.objective`, not the model."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"vocab_size", "causal"}
        values = {k: v for k, v in model.items() if k in fields}
        cfg = cls(vocab_size=vocab_size, causal=causal, **values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        checks = [
            (self.hidden_size % self.num_heads == 0, "model.hidden_size must divide by num_heads"),
            (
                self.head_dim % 2 == 0 or self.position != "rope",
                "model.hidden_size / num_heads must be even for RoPE",
            ),
            (
                self.position in ("rope", "alibi", "learned"),
                "model.position must be rope, alibi or learned",
            ),
            (
                self.position != "learned" or self.max_positions > 0,
                "model.position='learned' needs model.max_positions > 0",
            ),
            (
                self.remat in REMAT_POLICIES,
                f"model.remat must be one of {sorted(REMAT_POLICIES)}",
            ),
            (
                self.attention in IMPLEMENTATIONS,
                f"model.attention must be one of {', '.join(IMPLEMENTATIONS)}",
            ),
            (self.dtype in ("float32", "bfloat16", "float16"), "model.dtype: float32 / bfloat16"),
            (self.matmul in MATMULS, f"model.matmul must be one of {', '.join(MATMULS)}"),
            (
                self.norm_grad in NORM_GRADS,
                f"model.norm_grad must be one of {', '.join(NORM_GRADS)}",
            ),
            (
                self.glu_grad in GLU_GRADS,
                f"model.glu_grad must be one of {', '.join(GLU_GRADS)}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"{message} (got {self})")


# remat name -> what the backward pass may keep instead of recomputing (None: no remat).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs
}


def on_cudnn(c: EncoderConfig, length: int) -> bool:
    """Whether attention runs on cuDNN (the config's choice, or `auto`'s for this backend)."""
    return resolve_implementation(c.attention, dtype_of(c.dtype), length) == "cudnn"


def partitions_tokens(c: EncoderConfig, length: int) -> bool:
    """Whether the encoder moves each row's kept tokens first, so that cuDNN attention takes
    the padding mask as key lengths with no per-layer check (see `Encoder`). Not for ALiBi,
    whose bias is a function of the original positions, nor off the cuDNN path."""
    return on_cudnn(c, length) and c.position != "alibi"


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    `keys_right_padded`: every mask row keeps a prefix of the tokens (see `attend`); the
    encoder sets it where it has reordered the tokens, never for a mask that may have holes."""

    config: EncoderConfig
    mesh: Any = None
    rules: Sequence = ()
    keys_right_padded: bool = False

    @nn.compact
    def __call__(
        self,
        x_BxLxD: jax.Array,
        mask_BxL: jax.Array,
        rope_cos_sin: tuple[jax.Array, ...] | None,
        pending_BxLxD: jax.Array | None = None,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """The block's output; where blocks hand their MLP output on (`hands_on_mlp_output`),
        (x, the MLP's output) instead, for the next block's first norm to add with x in its
        kernel (`pending_BxLxD`: the previous block's MLP output, None for the first)."""
        c = self.config
        dtype = dtype_of(c.dtype)
        fused = fuses_residual(c, self.mesh)
        hand_on = hands_on_mlp_output(c, self.mesh)
        names = ("batch", "length", "embed")
        attn_norm = Norm(c.norm, c.norm_eps, dtype, c.norm_grad, name="attn_norm")
        if fused:  # the residual passes through the norm's kernels (layers.Norm)
            x_BxLxD, h = attn_norm(x_BxLxD, pending_BxLxD, residual=True)
            x_BxLxD = constrain(x_BxLxD, names, self.mesh, self.rules)
        else:
            h = attn_norm(x_BxLxD)
        h = SelfAttention(
            num_heads=c.num_heads,
            head_dim=c.head_dim,
            hidden_size=c.hidden_size,
            position=c.position,
            causal=c.causal,
            use_bias=c.use_bias_attn,
            implementation=c.attention,
            matmul=c.matmul,
            std=c.init_std,
            dtype=dtype,
            mesh=self.mesh,
            rules=self.rules,
            keys_right_padded=self.keys_right_padded,
            defer_out_bias=fused,
            name="attn",
        )(h, mask_BxL, rope_cos_sin)
        mlp_norm = Norm(c.norm, c.norm_eps, dtype, c.norm_grad, name="mlp_norm")
        if fused:
            h, out_bias = h
            x_BxLxD, h = mlp_norm(x_BxLxD, h, out_bias, residual=True)
            x_BxLxD = constrain(x_BxLxD, names, self.mesh, self.rules)
        else:
            x_BxLxD = constrain(x_BxLxD + h, names, self.mesh, self.rules)
            h = mlp_norm(x_BxLxD)
        h = Mlp(
            c.hidden_size,
            c.mlp_dim,
            c.activation,
            c.use_bias_mlp,
            c.init_std,
            dtype,
            c.matmul,
            c.glu_grad if _one_device(self.mesh) else "xla",
            name="mlp",
        )(h)
        if hand_on:
            return x_BxLxD, h
        return constrain(x_BxLxD + h, names, self.mesh, self.rules)


def fuses_residual(c: EncoderConfig, mesh: Any) -> bool:
    """Whether the blocks take the residual stream through the norms' Pallas kernels
    (`norm_grad="pallas"`). Those kernels are single-device calls that XLA cannot partition
    (that would take a shard_map), so on a mesh of several devices the norms keep the
    written backward pass."""
    return resolve_norm_grad(c.norm_grad) == "pallas" and _one_device(mesh)


def _one_device(mesh: Any) -> bool:
    """No mesh, or one of one device: where the Pallas kernels' calls need no partitioning."""
    return mesh is None or mesh.size == 1


def hands_on_mlp_output(c: EncoderConfig, mesh: Any) -> bool:
    """Whether each block hands its MLP output to the next block's first norm, which adds it
    in its kernel, rather than adding it itself. Not under remat or a scan: there a block's
    input is what the backward pass keeps (or the scan carries), and the pair (x, MLP output)
    would keep one more activation per layer than their sum."""
    return fuses_residual(c, mesh) and c.remat == "none" and not c.scan_layers


class ScannedBlock(nn.Module):
    """A Block with the (carry, output) signature `nn.scan` needs."""

    config: EncoderConfig
    mesh: Any = None
    rules: Sequence = ()
    keys_right_padded: bool = False

    @nn.compact
    def __call__(self, x_BxLxD, mask_BxL, rope_cos_sin):
        block = _remat(Block, self.config)(
            self.config, self.mesh, self.rules, self.keys_right_padded, name="block"
        )
        return block(x_BxLxD, mask_BxL, rope_cos_sin), None


def _remat(cls: type[nn.Module], c: EncoderConfig) -> type[nn.Module]:
    policy = REMAT_POLICIES[c.remat]
    return cls if c.remat == "none" else nn.remat(cls, policy=policy)


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
        length = ids_BxL.shape[1]
        positions_BxL = jnp.broadcast_to(jnp.arange(length), ids_BxL.shape)
        x_BxLxD = nn.Embed(
            c.vocab_size,
            c.hidden_size,
            embedding_init=normal_init(c.init_std, ("vocab", "embed")),
            name="embed",
        )(ids_BxL)
        if c.position == "learned":
            if length > c.max_positions:
                raise UserError(
                    f"sequences of {length} tokens exceed model.max_positions={c.max_positions} "
                    "learned positions; shorten the windows or raise max_positions"
                )
            x_BxLxD = x_BxLxD + nn.Embed(
                c.max_positions,
                c.hidden_size,
                embedding_init=normal_init(c.init_std, (None, "embed")),
                name="position_embed",
            )(positions_BxL)
        x_BxLxD = x_BxLxD.astype(dtype)
        x_BxLxD = constrain(x_BxLxD, ("batch", "length", "embed"), self.mesh, self.rules)
        if length % 2 and on_cudnn(c, length):
            # cuDNN trains only at even lengths (see `at_even_length`): one masked token, here
            # once, where attention would otherwise pad q, k and v in every layer.
            x_BxLxD = jnp.pad(x_BxLxD, ((0, 0), (0, 1), (0, 0)))
            mask_BxL = jnp.pad(mask_BxL, ((0, 0), (0, 1)))  # the new token is masked
        partition = partitions_tokens(c, length)
        hand_on = hands_on_mlp_output(c, self.mesh)
        if partition:
            # cuDNN's padding mask is key lengths, which cannot express a mask with holes;
            # checking for holes in every layer (`lax.cond`) made a GPU step 13.5% slower.
            # Instead each row's kept tokens move to the front, in order, so every mask is
            # right-padded. Exact at kept tokens: only attention mixes tokens, it sees the same
            # kept keys (causal order kept), RoPE takes the tokens' original positions, and the
            # order is undone below. (Outputs at padding are unspecified: a padding token now
            # comes after every kept one.)
            order_BxL = kept_first_order(mask_BxL)
            x_BxLxD = jnp.take_along_axis(x_BxLxD, order_BxL[..., None], axis=1)
            mask_BxL = jnp.take_along_axis(mask_BxL, order_BxL, axis=1)
        rope_cos_sin = None
        if c.position == "rope":  # the same tables for every layer
            rope_cos_sin = rope_tables(x_BxLxD.shape[1], c.head_dim, c.rope_base)
            if partition:  # [1, L, 1, H] -> [B, L, 1, H]: each token's original position
                rope_cos_sin = tuple(table[0][order_BxL] for table in rope_cos_sin)
        if c.scan_layers:
            stack = nn.scan(
                ScannedBlock,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=c.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x_BxLxD, _ = stack(c, self.mesh, self.rules, partition, name="layers")(
                x_BxLxD, mask_BxL, rope_cos_sin
            )
        else:
            block_cls = _remat(Block, c)
            pending = None  # the previous block's MLP output, where blocks hand it on
            for i in range(c.num_layers):
                block = block_cls(c, self.mesh, self.rules, partition, name=f"layer_{i}")
                if hand_on:
                    x_BxLxD, pending = block(x_BxLxD, mask_BxL, rope_cos_sin, pending)
                else:
                    x_BxLxD = block(x_BxLxD, mask_BxL, rope_cos_sin)
            if pending is not None:  # the last block's, added by XLA before the final norm
                x_BxLxD = x_BxLxD + pending
        if partition:
            x_BxLxD = jnp.take_along_axis(x_BxLxD, jnp.argsort(order_BxL)[..., None], axis=1)
        x_BxLxD = x_BxLxD[:, :length]  # without the token an odd length got
        return Norm(c.norm, c.norm_eps, dtype, c.norm_grad, name="final_norm")(x_BxLxD)
