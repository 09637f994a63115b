"""SwiGLU, silu(gate) * up, with its backward pass as one Pallas (Triton) kernel for GPUs.

The backward pass reads the gradient, gate and up and writes the gradients of gate and up
side by side, the layout of the one gate/up matmul (layers.Mlp). JAX transposes the slicing of
gate and up out of that matmul's product into two pads and an add, and XLA's kernel for it ran
at 2.13 TB/s on an H100 (18.3 ms per step of nt_v2_500m at batch 32, the costliest kernel
outside matmuls and attention), where the forward pass's plain multiply ran at 3.08 TB/s
(docs/benchmarks.md). The kernel here writes each half with its own store. The forward pass
is JAX's own expression, so the values are the same as without it; `supported` says which
shapes the kernel's power-of-two blocks take.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Elements of one [rows, F] tile per tensor, on 4 warps: 32 per thread, with gate, up, the
# gradient and their products live at once. Untuned: no GPU has timed it yet.
_TILE_ELEMENTS = 4096
_NUM_WARPS = 4


def _tile_rows(features: int) -> int:
    return max(1, _TILE_ELEMENTS // features)


def supported(rows: int, features: int) -> bool:
    """Whether gate/up of [rows, features] each fit the kernel's blocks."""
    power_of_two = features & (features - 1) == 0
    return power_of_two and features >= 16 and rows % _tile_rows(features) == 0


def _backward_kernel(gate_up_ref, dh_ref, dgate_up_ref):
    features = dh_ref.shape[-1]
    gate = gate_up_ref[:, pl.ds(0, features)].astype(jnp.float32)
    up = gate_up_ref[:, pl.ds(features, features)].astype(jnp.float32)
    dh = dh_ref[...].astype(jnp.float32)
    sigmoid = 1.0 / (1.0 + jnp.exp(-gate))
    # d/dgate of gate * sigmoid(gate) = sigmoid * (1 + gate * (1 - sigmoid))
    dgate = dh * up * sigmoid * (1.0 + gate * (1.0 - sigmoid))
    dgate_up_ref[:, pl.ds(0, features)] = dgate.astype(dgate_up_ref.dtype)
    dgate_up_ref[:, pl.ds(features, features)] = (dh * gate * sigmoid).astype(dgate_up_ref.dtype)


def _backward(gate_up_Tx2F: jax.Array, dh_TxF: jax.Array, interpret: bool) -> jax.Array:
    rows, features = dh_TxF.shape
    tile = _tile_rows(features)
    halves = pl.BlockSpec((tile, 2 * features), lambda i: (i, 0))  # gate, then up
    return pl.pallas_call(
        _backward_kernel,
        out_shape=jax.ShapeDtypeStruct(gate_up_Tx2F.shape, gate_up_Tx2F.dtype),
        grid=(rows // tile,),
        in_specs=[halves, pl.BlockSpec((tile, features), lambda i: (i, 0))],
        out_specs=halves,
        compiler_params=plgpu.CompilerParams(num_warps=_NUM_WARPS, num_stages=1),
        interpret=interpret,
        name="swiglu_backward",
    )(gate_up_Tx2F, dh_TxF)


def swiglu_xla(gate_up_BxLx2xF: jax.Array) -> jax.Array:
    """silu(gate) * up, differentiated by JAX: the forward pass, and the path off GPUs."""
    return nn.silu(gate_up_BxLx2xF[..., 0, :]) * gate_up_BxLx2xF[..., 1, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def swiglu(gate_up_BxLx2xF: jax.Array, interpret: bool = False) -> jax.Array:
    """silu(gate) * up of [..., 2, F] (gate, then up), in its dtype; the backward pass is the
    kernel above (`interpret`: through Pallas's interpreter, for CPU tests)."""
    return swiglu_xla(gate_up_BxLx2xF)


def _forward(gate_up_BxLx2xF, interpret):
    return swiglu_xla(gate_up_BxLx2xF), gate_up_BxLx2xF


def _swiglu_backward(interpret, gate_up_BxLx2xF, dh_BxLxF):
    features = dh_BxLxF.shape[-1]
    rows = math.prod(dh_BxLxF.shape[:-1])
    dgate_up = _backward(
        gate_up_BxLx2xF.reshape(rows, 2 * features),
        dh_BxLxF.reshape(rows, features).astype(gate_up_BxLx2xF.dtype),
        interpret,
    )
    return (dgate_up.reshape(gate_up_BxLx2xF.shape),)


swiglu.defvjp(_forward, _swiglu_backward)
