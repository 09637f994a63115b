"""Heads on the encoder: masked-LM and sequence classification.

The full models keep the encoder under the parameter name `encoder`, so a pretrained encoder's
parameters drop into a classifier unchanged (see gfm_jax/evaluate/finetune.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfm_jax.models.encoder import Encoder, EncoderConfig
from gfm_jax.models.layers import Norm, dense, dtype_of, exact_gelu, zeros_init


class MlmHead(nn.Module):
    """dense -> GELU -> norm -> vocabulary logits (float32), as in ESM / Nucleotide Transformer.

    With `embedding_VxD` (tied embeddings, as ESM-1b and BERT), the decoder is the token
    embedding matrix transposed plus a bias; otherwise it has its own kernel.
    """

    config: EncoderConfig

    @nn.compact
    def __call__(self, h_BxLxD: jax.Array, embedding_VxD: jax.Array | None = None) -> jax.Array:
        c = self.config
        dtype = dtype_of(c.dtype)
        common = dict(std=c.init_std, dtype=dtype, kernels=c.kernels)
        h = dense(c.hidden_size, ("embed", "mlp"), name="dense", **common)(h_BxLxD)
        h = Norm(c.norm, c.norm_eps, dtype, name="norm")(exact_gelu(h))
        if embedding_VxD is None:
            decoder = dense(c.vocab_size, ("embed", "vocab"), name="decoder", **common)
            return decoder(h).astype(jnp.float32)
        bias_V = self.param("decoder_bias", zeros_init(("vocab",)), (c.vocab_size,), jnp.float32)
        logits_BxLxV = jnp.einsum("bld,vd->blv", h, embedding_VxD.astype(dtype))
        return logits_BxLxV.astype(jnp.float32) + bias_V


class MaskedLM(nn.Module):
    """Encoder + MLM head; with `config.causal` the same model predicts the next token."""

    config: EncoderConfig
    mesh: Any = None
    rules: Sequence = ()

    @nn.compact
    def __call__(
        self,
        ids_BxL: jax.Array,
        mask_BxL: jax.Array | None = None,
        positions_BxK: jax.Array | None = None,
    ) -> jax.Array:
        """Logits [B, L, V], or [B, K, V] at `positions_BxK` only: the vocabulary projection
        is the costliest matmul of a small model, and masked-LM needs it at the targets only."""
        encoder = Encoder(self.config, self.mesh, self.rules, name="encoder")
        h = encoder(ids_BxL, mask_BxL)
        if positions_BxK is not None:
            h = jnp.take_along_axis(h, positions_BxK[..., None], axis=1)
        embedding = None
        if self.config.tie_embeddings:
            embedding = nn.meta.unbox(encoder.variables["params"]["embed"]["embedding"])
        head = MlmHead(self.config, name="mlm_head")
        if not self.config.rc_equivariant:
            return head(h, embedding)
        # One head on both strands' halves; the reverse half predicts complements, so the
        # logits stay equivariant: reverse-complemented input -> reversed, complemented logits.
        forward, reverse = jnp.split(h, 2, axis=-1)
        complement_V = jnp.asarray(self.config.complement, jnp.int32)
        return 0.5 * (head(forward, embedding) + head(reverse, embedding)[..., complement_V])


def masked_mean(h_BxLxD: jax.Array, mask_BxL: jax.Array) -> jax.Array:
    """Mean over the non-padding positions, in float32."""
    w_BxLx1 = mask_BxL[..., None].astype(jnp.float32)
    total_BxD = jnp.sum(h_BxLxD.astype(jnp.float32) * w_BxLx1, axis=1)
    return total_BxD / jnp.maximum(jnp.sum(w_BxLx1, axis=1), 1.0)


def pool(h_BxLxD: jax.Array, mask_BxL: jax.Array, pooling: str) -> jax.Array:
    """[B, D] float32: `cls` the first position, `mean` / `max` over the positions `mask_BxL`
    (a row without any: zeros); `flatten` [B, L * D]: every position in order, those outside
    `mask_BxL` zeroed (position-aware, for fixed-length windows)."""
    if pooling == "cls":
        return h_BxLxD[:, 0].astype(jnp.float32)
    if pooling == "flatten":
        h = jnp.where(mask_BxL[..., None], h_BxLxD.astype(jnp.float32), 0.0)
        return h.reshape(h.shape[0], -1)
    if pooling == "mean":
        return masked_mean(h_BxLxD, mask_BxL)
    if pooling == "max":
        h = jnp.where(mask_BxL[..., None], h_BxLxD.astype(jnp.float32), -jnp.inf)
        return jnp.where(jnp.any(mask_BxL, axis=1)[:, None], jnp.max(h, axis=1), 0.0)
    raise ValueError(f"unknown pooling {pooling!r}")


class SequenceClassifier(nn.Module):
    """Encoder -> pooling -> linear layer to class logits (float32).

    `pooling="mean"` / `"max"` pool the sequence's tokens (not CLS, not padding), as `embed`
    and `probe` do; `"cls"` takes the first position (the CLS token every sequence starts with).
    """

    config: EncoderConfig
    num_classes: int
    pooling: str = "mean"
    mesh: Any = None
    rules: Sequence = ()

    @nn.compact
    def __call__(self, ids_BxL: jax.Array, mask_BxL: jax.Array) -> jax.Array:
        h = Encoder(self.config, self.mesh, self.rules, name="encoder")(ids_BxL, mask_BxL)
        pooled_BxD = pool(h, jnp.asarray(mask_BxL).at[:, 0].set(False), self.pooling)
        return dense(self.num_classes, ("embed", "classes"), name="head")(pooled_BxD)


class TokenClassifier(nn.Module):
    """Encoder -> linear layer at every position: per-token class logits [B, L, C] (float32)."""

    config: EncoderConfig
    num_classes: int
    mesh: Any = None
    rules: Sequence = ()

    @nn.compact
    def __call__(self, ids_BxL: jax.Array, mask_BxL: jax.Array) -> jax.Array:
        h = Encoder(self.config, self.mesh, self.rules, name="encoder")(ids_BxL, mask_BxL)
        return dense(self.num_classes, ("embed", "classes"), name="head")(h.astype(jnp.float32))
