"""The non-pretrained baseline every evaluation reports beside the language models.

A small residual 1-D CNN on single-base tokens, trained from scratch in the same harness
(same splits, seeds, optimizer and model selection): token embedding -> `layers` x (conv ->
GELU -> LayerNorm, residual) -> pooling -> linear, or a linear layer at every position for
per-token tasks. Pooling `meanmax` (masked mean and max over positions) takes any length;
`flatten` (max-pool by `pool` then flatten -> dense -> GELU) keeps where a motif sits, which
fixed-length tasks such as splice junctions (the junction is always mid-window) need; all splits
are padded to one length for it. It answers "how much does pretraining add over a plain supervised
model on this task?".
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gfm_jax.errors import UserError
from gfm_jax.models.heads import masked_mean
from gfm_jax.models.layers import Norm, dense, exact_gelu, normal_init, zeros_init


class CnnClassifier(nn.Module):
    """ids [B, L] + mask -> logits [B, C], or [B, L, C] with `per_token`."""

    vocab_size: int
    num_outputs: int
    embed_dim: int = 64
    channels: int = 128
    kernel_size: int = 9
    layers: int = 3
    pooling: str = "meanmax"
    pool: int = 3
    per_token: bool = False

    @classmethod
    def from_config(
        cls, cnn: ml_collections.ConfigDict, vocab_size: int, num_outputs: int, per_token: bool
    ) -> CnnClassifier:
        return cls(
            vocab_size,
            num_outputs,
            int(cnn.embed_dim),
            int(cnn.channels),
            int(cnn.kernel_size),
            int(cnn.layers),
            str(cnn.pooling),
            int(cnn.pool),
            per_token,
        )

    @nn.compact
    def __call__(self, ids_BxL: jax.Array, mask_BxL: jax.Array) -> jax.Array:
        w_BxLx1 = mask_BxL[..., None].astype(jnp.float32)
        x = nn.Embed(
            self.vocab_size, self.embed_dim, embedding_init=normal_init(0.1, ("vocab", None))
        )(ids_BxL)
        x = dense(self.channels, (None, "mlp"), name="proj")(x) * w_BxLx1
        for i in range(self.layers):
            conv = nn.Conv(
                self.channels,
                (self.kernel_size,),
                padding="SAME",
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.lecun_normal(), (None, None, "mlp")
                ),
                bias_init=zeros_init(("mlp",)),
                name=f"conv{i}",
            )
            h = Norm("layernorm", 1e-5, jnp.float32, name=f"norm{i}")(exact_gelu(conv(x)))
            x = (x + h) * w_BxLx1  # padding stays zero, so it never leaks into the convolutions
        if self.per_token:
            return dense(self.num_outputs, ("mlp", "classes"), name="head")(x)
        if self.pooling == "flatten":
            b, length, c = x.shape
            x = nn.max_pool(x, (self.pool,), strides=(self.pool,), padding="SAME")
            h = dense(self.channels, (None, "mlp"), name="hidden")(x.reshape(b, -1))
            return dense(self.num_outputs, ("mlp", "classes"), name="head")(exact_gelu(h))
        if self.pooling != "meanmax":
            raise UserError(f"cnn.pooling={self.pooling!r}: choose meanmax or flatten")
        neg = jnp.finfo(jnp.float32).min
        pooled_max_BxC = jnp.max(jnp.where(mask_BxL[..., None], x, neg), axis=1)
        pooled = jnp.concatenate([masked_mean(x, mask_BxL), pooled_max_BxC], axis=-1)
        return dense(self.num_outputs, ("mlp", "classes"), name="head")(pooled)
