"""The transformer encoder: token embedding -> pre-LN blocks -> final norm (or, BERT-style,
embedding norm -> post-LN blocks).

One backbone for both objectives: bidirectional attention for masked-LM, or causal attention
(`causal=True`) for next-token prediction. Positions are rotary, ALiBi, or learned absolute
embeddings added to the token embeddings. `token_dropout` is ESM's embedding rescaling (the
mask token's embedding is zeroed and the rest scaled by 0.88 / (1 - the row's mask fraction)),
which ESM-2, Nucleotide Transformer v1 and OmniGenome apply in training and at inference.
Layers are a Python loop, or one `nn.scan` over
stacked parameters (`scan_layers`: one compiled block, faster compiles for deep models); remat
policies trade memory for recomputation.

`rc_equivariant` (one-base-per-token vocabularies): the blocks run on the sequence and on its
reverse complement with the same weights, and the output concatenates the forward stream with
the reverse stream mapped back to forward positions, [B, L, 2D]. Reverse complementing the
input then reverses the output's positions and swaps its two halves (the complement map on
channels), exactly, by construction: the two-strand parameter sharing of Caduceus-PS, with
attention blocks in place of Mamba.
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
from gfm_jax.models.adapters import NO_ADAPTER, Adapter
from gfm_jax.models.attention import ROPE_SCALINGS, RopeTables, SelfAttention, rope_tables
from gfm_jax.models.layers import (
    Mlp,
    Norm,
    constrain,
    dtype_of,
    normal_init,
    token_dropout,
    zeros_init,
)

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
    use_bias_mlp_in: bool = True  # with use_bias_mlp: bias on the gate / up projections too
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    norm_placement: str = "pre"  # pre: x + f(norm(x)), final norm | post: norm(x + f(x))
    embed_norm: bool = False  # a norm on the embeddings before the blocks (BERT, some ESM)
    token_type_embed: bool = False  # a learned vector added to every token (BERT's type 0)
    token_dropout: bool = False  # ESM's mask-ratio rescaling of the embeddings
    position: str = "rope"  # rope | alibi | learned
    max_positions: int = 0  # learned positions: table size (longest sequence, CLS included)
    rope_base: float = 10000.0
    # Context extension: windows `rope_factor` x the pretraining length (models/attention.py).
    rope_scaling: str = "none"  # none | linear (position interpolation) | ntk
    rope_factor: float = 1.0
    dtype: str = "float32"
    kernels: str = "auto"  # auto | xla: how ops run (gfm_jax/ops)
    remat: str = "none"  # none | full | save_dots
    scan_layers: bool = False
    causal: bool = False
    tie_embeddings: bool = False  # MLM decoder = token embeddings transposed (+ bias)
    init_std: float = 0.02
    rc_equivariant: bool = False
    complement: tuple[int, ...] | None = None  # token id -> its complement's (tokenizer's)
    mask_id: int = -1  # the tokenizer's mask token (token_dropout)
    adapter: Adapter = NO_ADAPTER  # LoRA / IA3 for fine-tuning (models/adapters.py)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_config(
        cls,
        model: ml_collections.ConfigDict,
        vocab_size: int,
        causal: bool = False,
        complement: tuple[int, ...] | None = None,
        mask_id: int = -1,
    ) -> EncoderConfig:
        """From a `config.model` block; `causal` comes from `train.objective`, not the model,
        `complement` and `mask_id` from the tokenizer. Keys that are not fields (such as a
        saved config's retired kernel settings) are ignored."""
        derived = {"vocab_size", "causal", "complement", "mask_id", "adapter"}
        fields = {f.name for f in dataclasses.fields(cls)} - derived
        values = {k: v for k, v in model.items() if k in fields}
        cfg = cls(
            vocab_size=vocab_size, causal=causal, complement=complement, mask_id=mask_id, **values
        )
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
            one_of("rope_scaling", ROPE_SCALINGS),
            (self.rope_factor >= 1.0, "model.rope_factor must be >= 1 (1: no extension)"),
            one_of("activation", ("swiglu", "geglu", "gelu")),
            one_of("norm", ("layernorm", "rmsnorm")),
            one_of("norm_placement", ("pre", "post")),
            (not self.token_dropout or self.mask_id >= 0, "model.token_dropout needs a mask token"),
            one_of("remat", tuple(REMAT_POLICIES)),
            one_of("kernels", ops.KERNELS),
            one_of("dtype", ("float32", "bfloat16", "float16")),
            (
                not self.rc_equivariant or self.complement is not None,
                "model.rc_equivariant needs a one-token-per-base tokenizer (char, char_rna)",
            ),
            (
                not (self.rc_equivariant and self.causal),
                "model.rc_equivariant needs train.objective='mlm' (a causal model has a strand)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"{message} (got {self})")


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(norm(x)), then x + mlp(norm(x)); post-LN (BERT):
    norm(x + attn(x)), then norm(x + mlp(x))."""

    config: EncoderConfig
    mesh: Any = None
    rules: Sequence = ()

    @nn.compact
    def __call__(
        self, x_BxLxD: jax.Array, mask: ops.TokenMask, rope: RopeTables | None
    ) -> jax.Array:
        c = self.config
        dtype = dtype_of(c.dtype)
        post = c.norm_placement == "post"
        attn_norm = Norm(c.norm, c.norm_eps, dtype, name="attn_norm")
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
            adapter=c.adapter,
            name="attn",
        )(x_BxLxD if post else attn_norm(x_BxLxD), mask, rope)
        x_BxLxD = self._constrain(attn_norm(x_BxLxD + h) if post else x_BxLxD + h)
        mlp_norm = Norm(c.norm, c.norm_eps, dtype, name="mlp_norm")
        h = Mlp(
            c.hidden_size,
            c.mlp_dim,
            c.activation,
            c.use_bias_mlp,
            c.init_std,
            dtype,
            c.kernels,
            c.adapter,
            use_bias_in=c.use_bias_mlp_in,
            name="mlp",
        )(x_BxLxD if post else mlp_norm(x_BxLxD))
        return self._constrain(mlp_norm(x_BxLxD + h) if post else x_BxLxD + h)

    def _constrain(self, x_BxLxD: jax.Array) -> jax.Array:
        return constrain(x_BxLxD, ("batch", "length", "embed"), self.mesh, self.rules)


class ScannedBlock(nn.Module):
    """A Block with the (carry, output) signature `nn.scan` needs."""

    config: EncoderConfig
    mesh: Any = None
    rules: Sequence = ()

    emit: bool = False  # also return each layer's output (stacked by the scan)

    @nn.compact
    def __call__(self, x_BxLxD, mask, rope):
        block = _remat(Block, self.config)(self.config, self.mesh, self.rules, name="block")
        x_BxLxD = block(x_BxLxD, mask, rope)
        return x_BxLxD, x_BxLxD if self.emit else None


def _remat(cls: type[nn.Module], c: EncoderConfig) -> type[nn.Module]:
    return cls if c.remat == "none" else nn.remat(cls, policy=REMAT_POLICIES[c.remat])


def reversal_index(mask_BxL: jax.Array) -> jax.Array:
    """Per row, the position each position maps to when the bases are reversed: the first
    token (CLS) and the padding stay, positions 1 .. n-1 of the n real tokens swap ends."""
    n_Bx1 = jnp.sum(mask_BxL, axis=1, keepdims=True, dtype=jnp.int32)
    j_1xL = jnp.arange(mask_BxL.shape[1], dtype=jnp.int32)[None, :]
    return jnp.where((j_1xL >= 1) & (j_1xL < n_Bx1), n_Bx1 - j_1xL, j_1xL)


def reverse_complement_ids(
    ids_BxL: jax.Array, mask_BxL: jax.Array, complement: Sequence[int]
) -> jax.Array:
    """The token ids of each row's reverse complement (CLS first, padding last, as before)."""
    reversed_BxL = jnp.take_along_axis(ids_BxL, reversal_index(mask_BxL), axis=1)
    return jnp.asarray(complement, jnp.int32)[reversed_BxL]


class Encoder(nn.Module):
    """ids [B, L] (+ padding mask) -> hidden states [B, L, D] after the final norm (post-LN:
    the last block's output; [B, L, 2D] with `rc_equivariant`). With `all_layers`, a list: the
    embeddings, then each block's output, the last one the usual output."""

    config: EncoderConfig
    mesh: Any = None
    rules: Sequence = ()

    @nn.compact
    def __call__(
        self, ids_BxL: jax.Array, mask_BxL: jax.Array | None = None, all_layers: bool = False
    ) -> jax.Array | list[jax.Array]:
        c = self.config
        if mask_BxL is None:
            mask_BxL = jnp.ones(ids_BxL.shape, jnp.bool_)
        if not c.rc_equivariant:
            return self._stream(ids_BxL, mask_BxL, all_layers)
        # Both strands as one batch through the same weights; the reverse strand's outputs go
        # back to forward positions and sit beside the forward ones.
        rc_ids_BxL = reverse_complement_ids(ids_BxL, mask_BxL, c.complement)
        both = self._stream(
            jnp.concatenate([ids_BxL, rc_ids_BxL]), jnp.concatenate([mask_BxL, mask_BxL]),
            all_layers,
        )  # fmt: skip
        index_BxLx1 = reversal_index(mask_BxL)[..., None]

        def join(h_2BxLxD: jax.Array) -> jax.Array:
            forward, reverse = jnp.split(h_2BxLxD, 2)
            reverse = jnp.take_along_axis(reverse, index_BxLx1, axis=1)
            return jnp.concatenate([forward, reverse], axis=-1)

        return [join(h) for h in both] if all_layers else join(both)

    def _stream(
        self, ids_BxL: jax.Array, mask_BxL: jax.Array, all_layers: bool
    ) -> jax.Array | list[jax.Array]:
        c = self.config
        dtype = dtype_of(c.dtype)
        x_BxLxD = self._constrain(self._embed(ids_BxL, mask_BxL).astype(dtype))
        # The tokens in the layout the attention kernel takes (see ops.TokenMask).
        mask = ops.TokenMask.create(
            mask_BxL, c.kernels, dtype, c.position != "alibi", self.mesh, self.rules
        )
        x_BxLxD = self._constrain(mask.enter(x_BxLxD))
        rope = None
        if c.position == "rope":
            rope = rope_tables(
                x_BxLxD.shape[1], c.head_dim, c.rope_base, mask.order_BxL, c.rope_scaling,
                c.rope_factor,
            )  # fmt: skip
        states = [x_BxLxD]
        if c.scan_layers:
            stack = nn.scan(
                ScannedBlock,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=c.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            scanned = stack(c, self.mesh, self.rules, all_layers, name="layers")
            x_BxLxD, per_layer = scanned(x_BxLxD, mask, rope)
            if all_layers:
                states += list(per_layer)
        else:
            for i in range(c.num_layers):
                block = _remat(Block, c)(c, self.mesh, self.rules, name=f"layer_{i}")
                x_BxLxD = block(x_BxLxD, mask, rope)
                states.append(x_BxLxD)
        out_BxLxD = mask.exit(x_BxLxD)
        if c.norm_placement == "pre":  # post-LN blocks end normalised
            out_BxLxD = Norm(c.norm, c.norm_eps, dtype, name="final_norm")(out_BxLxD)
        if not all_layers:
            return out_BxLxD
        return [mask.exit(h) for h in states[:-1]] + [out_BxLxD]

    def _constrain(self, x_BxLxD: jax.Array) -> jax.Array:
        return constrain(x_BxLxD, ("batch", "length", "embed"), self.mesh, self.rules)

    def _embed(self, ids_BxL: jax.Array, mask_BxL: jax.Array) -> jax.Array:
        """Token embeddings (rescaled with `token_dropout`), plus learned position embeddings
        where the model has them, then the embedding norm where it has one."""
        c = self.config
        x_BxLxD = nn.Embed(
            c.vocab_size,
            c.hidden_size,
            embedding_init=normal_init(c.init_std, ("vocab", "embed")),
            name="embed",
        )(ids_BxL)
        if c.token_dropout:
            x_BxLxD = token_dropout(x_BxLxD, ids_BxL, mask_BxL, c.mask_id)
        if c.token_type_embed:
            x_BxLxD = x_BxLxD + self.param(
                "token_type", zeros_init(("embed",)), (c.hidden_size,), jnp.float32
            )
        if c.position == "learned":
            x_BxLxD = x_BxLxD + self._positions(ids_BxL.shape[1])
        if c.embed_norm:
            x_BxLxD = Norm(c.norm, c.norm_eps, jnp.float32, name="embed_norm")(x_BxLxD)
        return x_BxLxD

    def _positions(self, length: int) -> jax.Array:
        """[1, L, D] learned position embeddings of positions 0 .. L-1."""
        c = self.config
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
        return positions(jnp.arange(length)[None, :])
