"""Building blocks: norms, embeddings, dense layers and the (gated) MLP.

Every parameter is created through `nn.with_logical_partitioning` with logical axis names
(`vocab`, `embed`, `mlp`, `heads`, `kv`, `norm`, `classes`); `gfm_jax.sharding` maps them to mesh
axes. Parameters are float32; compute runs in `dtype`, norms in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfm_jax.models.matmul import dot_general_for

Dtype = Any
LogicalNames = tuple[str | None, ...]


def dtype_of(name: str) -> Dtype:
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def normal_init(std: float, names: LogicalNames) -> nn.initializers.Initializer:
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), names)


def zeros_init(names: LogicalNames) -> nn.initializers.Initializer:
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def constrain(x: jax.Array, names: LogicalNames, mesh: Any, rules: Sequence) -> jax.Array:
    """Activation sharding constraint by logical names (a no-op without a mesh)."""
    if mesh is None:
        return x
    return nn.with_logical_constraint(x, names, rules=rules, mesh=mesh)


class Norm(nn.Module):
    """LayerNorm or RMSNorm over the last axis, computed in float32, output in `dtype`."""

    kind: str = "layernorm"
    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale_init = nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",))
        scale = self.param("scale", scale_init, (features,), jnp.float32)
        x = x.astype(jnp.float32)
        if self.kind == "layernorm":
            bias = self.param("bias", zeros_init(("norm",)), (features,), jnp.float32)
            x = x - jnp.mean(x, axis=-1, keepdims=True)
            y = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
            y = y * scale + bias
        elif self.kind == "rmsnorm":
            y = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps) * scale
        else:
            raise ValueError(f"unknown norm {self.kind!r}")
        return y.astype(self.dtype)


def dense(
    features: int | tuple[int, ...],
    names: LogicalNames,
    *,
    name: str,
    axis: int | tuple[int, ...] = -1,
    use_bias: bool = True,
    std: float = 0.02,
    dtype: Dtype = jnp.float32,
    matmul: str = "auto",
) -> nn.DenseGeneral:
    """A DenseGeneral whose kernel carries `names` (input axes, then output axes); `matmul`
    picks its dot_general (gfm_jax/models/matmul.py)."""
    n_out = 1 if isinstance(features, int) else len(features)
    return nn.DenseGeneral(
        features=features,
        axis=axis,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=normal_init(std, names),
        bias_init=zeros_init(names[-n_out:]),
        name=name,
        dot_general=dot_general_for(matmul),
    )


def exact_gelu(x: jax.Array) -> jax.Array:
    """GELU with erf, as ESM, Nucleotide Transformer and DNABERT-2 use (PyTorch's default);
    Flax's default tanh approximation would differ from imported weights' outputs by ~1e-3, and
    is slower on XLA:CPU."""
    return nn.gelu(x, approximate=False)


class Mlp(nn.Module):
    """Feed-forward block: SwiGLU / GEGLU (gate * up -> down) or plain GELU (up -> down)."""

    hidden_size: int
    mlp_dim: int
    activation: str = "swiglu"
    use_bias: bool = False
    std: float = 0.02
    dtype: Dtype = jnp.float32
    matmul: str = "auto"

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        def proj(features: int, names: LogicalNames, name: str) -> nn.DenseGeneral:
            return dense(
                features,
                names,
                name=name,
                use_bias=self.use_bias,
                std=self.std,
                dtype=self.dtype,
                matmul=self.matmul,
            )

        up_BxLxF = proj(self.mlp_dim, ("embed", "mlp"), "up")(x_BxLxD)
        if self.activation in ("swiglu", "geglu"):
            gate_BxLxF = proj(self.mlp_dim, ("embed", "mlp"), "gate")(x_BxLxD)
            act = nn.silu if self.activation == "swiglu" else exact_gelu
            h_BxLxF = act(gate_BxLxF) * up_BxLxF
        elif self.activation == "gelu":
            h_BxLxF = exact_gelu(up_BxLxF)
        else:
            raise ValueError(f"unknown activation {self.activation!r}")
        return proj(self.hidden_size, ("mlp", "embed"), "down")(h_BxLxF)
