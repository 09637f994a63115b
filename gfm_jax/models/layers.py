"""Building blocks: norms, embeddings, dense layers and the (gated) MLP.

Every parameter is created through `nn.with_logical_partitioning` with logical axis names
(`vocab`, `embed`, `mlp`, `heads`, `kv`, `norm`, `classes`); `gfm_jax.sharding` maps them to mesh
axes. Parameters are float32; compute runs in `dtype`, norms in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfm_jax.models import glu_pallas, norm_pallas, pallas_gpu
from gfm_jax.models.matmul import dot_general_for
from gfm_jax.models.norm_vjp import norm_written_grad, normalize

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


NORM_GRADS = ("auto", "xla", "written", "pallas")
GLU_GRADS = ("auto", "xla", "pallas", "fused")


def _kernels_or_xla(grad: str, backend: str | None) -> str:
    """What `auto` means for a kernel choice: `pallas` on a GPU backend (`backend`, else JAX's
    default one), `xla` elsewhere; other choices pass through."""
    if grad != "auto":
        return grad
    return "pallas" if (backend or jax.default_backend()) in ("gpu", "cuda", "rocm") else "xla"


def resolve_norm_grad(grad: str, backend: str | None = None) -> str:
    """`auto` -> `pallas` on a GPU, where an H100 timed the Pallas kernels with
    `glu_grad="pallas"` at 3.3% less time per step than the written pass, itself 2.7% less than
    JAX's (docs/benchmarks.md); else `xla` (the CPU timing showed no clear difference; TPUs
    are not timed). Where the kernels do not apply (a mesh of several devices, shapes they do
    not take) `pallas` is the written pass."""
    return _kernels_or_xla(grad, backend)


def resolve_glu_grad(grad: str, backend: str | None = None) -> str:
    """`auto` -> `pallas` on a GPU (SwiGLU's backward pass as one Pallas kernel: 13.0 ms per
    step on an H100 at batch 32 of nt_v2_500m against XLA's 18.3 ms), else `xla`."""
    return _kernels_or_xla(grad, backend)


class Norm(nn.Module):
    """LayerNorm or RMSNorm over the last axis, computed in float32, output in `dtype`.

    `grad`: "xla" differentiates it with JAX; "written" takes the written-out backward pass of
    gfm_jax/models/norm_vjp.py (the same values; fewer bytes moved on a GPU); "pallas" (GPU
    only, one device) also takes the residual stream through the Pallas kernels of
    gfm_jax/models/norm_pallas.py where the block calls it with `residual` (elsewhere, and for
    shapes the kernels do not take, it is "written"); "auto" picks by backend
    (`resolve_norm_grad`)."""

    kind: str = "layernorm"
    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    grad: str = "auto"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        h: jax.Array | None = None,
        h_bias: jax.Array | None = None,
        *,
        residual: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """norm(x); with `residual`, (s, norm(s)) for the residual stream s = x (+ h +
        h_bias), which `grad="pallas"` computes with its norm in one kernel each way."""
        features = x.shape[-1]
        scale_init = nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",))
        scale = self.param("scale", scale_init, (features,), jnp.float32)
        if self.kind not in ("layernorm", "rmsnorm"):
            raise ValueError(f"unknown norm {self.kind!r}")
        bias = None
        if self.kind == "layernorm":
            bias = self.param("bias", zeros_init(("norm",)), (features,), jnp.float32)
        grad = resolve_norm_grad(self.grad)
        fn = normalize if grad == "xla" else norm_written_grad  # "pallas" off its kernels
        style = (self.kind, self.eps, self.dtype)
        if not residual:
            return fn(x, scale, bias, *style)

        def xla(x, h, h_bias, scale, bias):
            if h is not None:
                x = x + (h if h_bias is None else h + h_bias.astype(h.dtype))
            return x, fn(x, scale, bias, *style)

        if grad != "pallas" or not norm_pallas.supported(x.size // features, features):
            return xla(x, h, h_bias, scale, bias)

        def kernels(x, h, h_bias, scale, bias, interpret):
            if h is None:
                return norm_pallas.norm_with_residual(x, scale, bias, *style, interpret)
            return norm_pallas.add_norm(x, h, h_bias, scale, bias, *style, interpret)

        return pallas_gpu.on_gpu(kernels, xla, x, h, h_bias, scale, bias)


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


class ProjectionParams(nn.Module):
    """The kernel [D, *features] and bias a `dense` layer of this name would own (same shapes,
    logical axes `names` and initial values), returned rather than applied, so that several
    projections of one input fuse into one dot (q/k/v; gate/up) while checkpoints keep them
    apart."""

    in_features: int | tuple[int, ...]
    features: tuple[int, ...]
    names: LogicalNames
    use_bias: bool = True
    std: float = 0.02

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array | None]:
        inputs = (self.in_features,) if isinstance(self.in_features, int) else self.in_features

        def flat_normal(rng: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32):
            # As DenseGeneral draws its kernel: input axes flattened x output axes flattened.
            flat = (math.prod(shape[: len(inputs)]), math.prod(shape[len(inputs) :]))
            return nn.initializers.normal(self.std)(rng, flat, dtype).reshape(shape)

        shape = (*inputs, *self.features)
        kernel = self.param(
            "kernel", nn.with_logical_partitioning(flat_normal, self.names), shape, jnp.float32
        )
        bias = None
        if self.use_bias:
            names = self.names[len(inputs) :]
            bias = self.param("bias", zeros_init(names), self.features, jnp.float32)
        return kernel, bias


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
    # "pallas": SwiGLU's backward pass as the kernel of models/glu_pallas.py; "fused": that
    # pass inside the down projection's input-gradient matmul (glu_pallas.swiglu_down). GPU
    # only, one device; other activations and shapes they do not take stay JAX's. "xla": JAX's.
    # "auto": `resolve_glu_grad`.
    glu_grad: str = "auto"

    def _gate_and_up(self, x_BxLxD: jax.Array) -> jax.Array:
        """The GLU's two projections of x, as one matmul (as q/k/v): on a GPU the backward pass
        then makes both gradients in one elementwise pass and runs one input-gradient matmul,
        and the H100 program of nt_v2_500m moves 10% fewer bytes outside its matmuls
        (scripts/step_traffic.py); on the CPU it is as fast as two (alternating A/B). The
        parameters stay two DenseGeneral kernels, gate and up, as checkpoints name them."""
        params = [
            ProjectionParams(
                x_BxLxD.shape[-1],
                (self.mlp_dim,),
                ("embed", "mlp"),
                self.use_bias,
                self.std,
                name=name,
            )()
            for name in ("gate", "up")
        ]
        kernel_Dx2xF = jnp.stack([k for k, _ in params], axis=1).astype(self.dtype)
        contract_d = (((2,), (0,)), ((), ()))
        gate_up_BxLx2xF = dot_general_for(self.matmul)(
            x_BxLxD.astype(self.dtype), kernel_Dx2xF, contract_d
        )
        if self.use_bias:
            gate_up_BxLx2xF = gate_up_BxLx2xF + jnp.stack([b for _, b in params]).astype(self.dtype)
        return gate_up_BxLx2xF

    def _swiglu_down_fused(self, x_BxLxD: jax.Array) -> jax.Array:
        """SwiGLU and the down projection with `glu_grad="fused"`: the down kernel and bias are
        the ones `dense` would own, so checkpoints do not change."""
        kernel_FxD, bias_D = ProjectionParams(
            self.mlp_dim,
            (self.hidden_size,),
            ("mlp", "embed"),
            self.use_bias,
            self.std,
            name="down",
        )()
        gate_up_BxLx2xF = self._gate_and_up(x_BxLxD)

        def xla_path(gate_up: jax.Array, kernel: jax.Array) -> jax.Array:
            h_BxLxF = glu_pallas.swiglu_xla(gate_up)
            contract_f = (((2,), (0,)), ((), ()))
            return dot_general_for(self.matmul)(h_BxLxF, kernel.astype(self.dtype), contract_f)

        y_BxLxD = pallas_gpu.on_gpu(glu_pallas.swiglu_down, xla_path, gate_up_BxLx2xF, kernel_FxD)
        if bias_D is not None:
            y_BxLxD = y_BxLxD + bias_D.astype(self.dtype)
        return y_BxLxD

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

        rows = x_BxLxD.size // x_BxLxD.shape[-1]
        glu_grad = resolve_glu_grad(self.glu_grad)
        if (
            self.activation == "swiglu"
            and glu_grad == "fused"
            and glu_pallas.down_supported(rows, self.mlp_dim, self.hidden_size)
        ):
            return self._swiglu_down_fused(x_BxLxD)
        if (
            self.activation == "swiglu"
            and glu_grad == "pallas"
            and glu_pallas.supported(rows, self.mlp_dim)
        ):
            h_BxLxF = pallas_gpu.on_gpu(
                glu_pallas.swiglu, glu_pallas.swiglu_xla, self._gate_and_up(x_BxLxD)
            )
        elif self.activation in ("swiglu", "geglu"):
            gate_up_BxLx2xF = self._gate_and_up(x_BxLxD)
            act = nn.silu if self.activation == "swiglu" else exact_gelu
            h_BxLxF = act(gate_up_BxLx2xF[:, :, 0]) * gate_up_BxLx2xF[:, :, 1]
        elif self.activation == "gelu":
            h_BxLxF = exact_gelu(proj(self.mlp_dim, ("embed", "mlp"), "up")(x_BxLxD))
        else:
            raise ValueError(f"unknown activation {self.activation!r}")
        return proj(self.hidden_size, ("mlp", "embed"), "down")(h_BxLxF)
