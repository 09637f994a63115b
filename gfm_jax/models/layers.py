"""Building blocks: norms, dense layers, the (gated) MLP and ESM's token dropout.

Every parameter is created with logical axis names (`vocab`, `embed`, `mlp`, `heads`, `kv`,
`norm`, `classes`), which `gfm_jax.sharding` maps to mesh axes. Parameters are float32; compute
runs in `dtype`, norms in float32. How a matmul runs is `gfm_jax.ops`'s choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfm_jax import ops
from gfm_jax.models.adapters import NO_ADAPTER, Adapter, Ia3Scale, LoraDelta

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
        if self.kind not in ("layernorm", "rmsnorm"):
            raise ValueError(f"unknown norm {self.kind!r}")
        features = x.shape[-1]
        scale_init = nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",))
        scale = self.param("scale", scale_init, (features,), jnp.float32)
        x = x.astype(jnp.float32)
        if self.kind == "layernorm":
            x = x - jnp.mean(x, axis=-1, keepdims=True)
        y = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps) * scale
        if self.kind == "layernorm":
            y = y + self.param("bias", zeros_init(("norm",)), (features,), jnp.float32)
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
    kernels: str = "auto",
) -> nn.DenseGeneral:
    """A DenseGeneral whose kernel carries `names` (input axes, then output axes)."""
    n_out = 1 if isinstance(features, int) else len(features)
    return nn.DenseGeneral(
        features=features,
        axis=axis,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=normal_init(std, names),
        bias_init=zeros_init(names[-n_out:]),
        name=name,
        dot_general=ops.dot_general(kernels),
    )


class ProjectionParams(nn.Module):
    """The kernel [D, *features] and bias a `dense` layer of this name would own (same shapes,
    logical axes and initial values), returned rather than applied (see `fused_projections`)."""

    in_features: int
    features: tuple[int, ...]
    names: LogicalNames
    use_bias: bool = True
    std: float = 0.02

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array | None]:
        def flat_normal(rng: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32):
            # As DenseGeneral draws its kernel: [D, prod(features)], then reshaped.
            flat = (shape[0], math.prod(shape[1:]))
            return nn.initializers.normal(self.std)(rng, flat, dtype).reshape(shape)

        init = nn.with_logical_partitioning(flat_normal, self.names)
        kernel = self.param("kernel", init, (self.in_features, *self.features), jnp.float32)
        bias = None
        if self.use_bias:
            bias = self.param("bias", zeros_init(self.names[1:]), self.features, jnp.float32)
        return kernel, bias


def fused_projections(
    x_BxLxD: jax.Array,
    names: tuple[str, ...],
    features: tuple[int, ...],
    axes: LogicalNames,
    *,
    use_bias: bool,
    std: float,
    dtype: Dtype,
    kernels: str,
    adapter: Adapter = NO_ADAPTER,
) -> jax.Array:
    """Several projections of x as one matmul (q/k/v; gate/up): [B, L, D] ->
    [B, L, len(names), *features]. One wide matmul runs faster than several narrow ones, while
    checkpoints keep one kernel and bias per projection, named as `dense` layers would be.
    LoRA updates (`adapter`) are added per projection. Call it inside a compact method: the
    parameters belong to the caller."""
    params = [
        ProjectionParams(x_BxLxD.shape[-1], features, axes, use_bias, std, name=n)() for n in names
    ]
    kernel_DxPxF = jnp.stack([k for k, _ in params], axis=1).astype(dtype)
    y = ops.dot_general(kernels)(x_BxLxD.astype(dtype), kernel_DxPxF, (((2,), (0,)), ((), ())))
    if use_bias:
        y = y + jnp.stack([b for _, b in params]).astype(dtype)
    if any(adapter.lora(n) for n in names):
        deltas = [
            LoraDelta(features, axes, -1, adapter, dtype, name=f"{n}_lora")(x_BxLxD.astype(dtype))
            if adapter.lora(n)
            else jnp.zeros_like(y[:, :, 0])
            for n in names
        ]
        y = y + jnp.stack(deltas, axis=2)
    return y


# ESM's token dropout: the mask fraction its models were trained with (15% selected, 80% of
# those replaced by the mask token).
TRAIN_MASK_FRACTION = 0.15 * 0.8


def token_dropout(
    x_BxLxD: jax.Array, ids_BxL: jax.Array, mask_BxL: jax.Array, mask_id: int
) -> jax.Array:
    """ESM's embedding rescaling: mask tokens' embeddings are zero and each row is scaled by
    (1 - TRAIN_MASK_FRACTION) / (1 - the row's fraction of mask tokens)."""
    is_mask_BxL = ids_BxL == mask_id
    x_BxLxD = jnp.where(is_mask_BxL[..., None], 0.0, x_BxLxD)
    length_Bx1 = jnp.maximum(jnp.sum(mask_BxL, axis=1, keepdims=True, dtype=jnp.float32), 1.0)
    observed_Bx1 = jnp.sum(is_mask_BxL, axis=1, keepdims=True, dtype=jnp.float32) / length_Bx1
    scale_Bx1 = (1.0 - TRAIN_MASK_FRACTION) / (1.0 - observed_Bx1)
    return x_BxLxD * scale_Bx1[..., None]


def exact_gelu(x: jax.Array) -> jax.Array:
    """GELU with erf, as ESM, Nucleotide Transformer and DNABERT-2 use (PyTorch's default);
    Flax's default tanh approximation would differ from imported weights' outputs by ~1e-3."""
    return nn.gelu(x, approximate=False)


class Mlp(nn.Module):
    """Feed-forward block: SwiGLU / GEGLU (act(gate) * up -> down) or GELU (up -> down)."""

    hidden_size: int
    mlp_dim: int
    activation: str = "swiglu"
    use_bias: bool = False
    std: float = 0.02
    dtype: Dtype = jnp.float32
    kernels: str = "auto"
    adapter: Adapter = NO_ADAPTER
    use_bias_in: bool = True  # with use_bias: the gate / up projections have biases too

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        common = dict(use_bias=self.use_bias, std=self.std, dtype=self.dtype, kernels=self.kernels)
        common_in = {**common, "use_bias": self.use_bias and self.use_bias_in}
        if self.activation in ("swiglu", "geglu"):
            gate_up_BxLx2xF = fused_projections(
                x_BxLxD, ("gate", "up"), (self.mlp_dim,), ("embed", "mlp"), **common_in,
                adapter=self.adapter,
            )  # fmt: skip
            act = nn.silu if self.activation == "swiglu" else exact_gelu
            h_BxLxF = act(gate_up_BxLx2xF[:, :, 0]) * gate_up_BxLx2xF[:, :, 1]
        elif self.activation == "gelu":
            up = dense(self.mlp_dim, ("embed", "mlp"), name="up", **common_in)(x_BxLxD)
            h_BxLxF = exact_gelu(up + self._lora("up", self.mlp_dim, ("embed", "mlp"), x_BxLxD))
        else:
            raise ValueError(f"unknown activation {self.activation!r}")
        if self.adapter.ia3("mlp"):
            h_BxLxF = Ia3Scale((self.mlp_dim,), ("mlp",), name="mlp_ia3")(h_BxLxF)
        down = dense(self.hidden_size, ("mlp", "embed"), name="down", **common)(h_BxLxF)
        return down + self._lora("down", self.hidden_size, ("mlp", "embed"), h_BxLxF)

    def _lora(self, name: str, features: int, names: LogicalNames, x: jax.Array) -> jax.Array:
        """The LoRA update of projection `name` (0 where it has none)."""
        if not self.adapter.lora(name):
            return jnp.zeros((), self.dtype)
        return LoraDelta(features, names, -1, self.adapter, self.dtype, name=f"{name}_lora")(x)
