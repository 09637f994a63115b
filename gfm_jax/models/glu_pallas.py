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

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Elements of one [rows, F] tile per tensor, on 4 warps: 32 per thread, with gate, up, the
# gradient and their products live at once. Untuned, but an H100 ran the kernel at 2.98 TB/s
# in the nt_v2_500m step (docs/benchmarks.md).
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


# SwiGLU's backward pass fused into the down projection's input-gradient matmul: each program
# computes one [rows, features] block of dh = dy @ W_down^T in float32 registers and turns it
# into the gate and up gradients there, so dh is never written (at nt_v2_500m, batch 32: 537 MB
# less per layer, the write and the read-back of dh in bfloat16) and the elementwise pass
# overlaps the matmuls of other programs. Blocks and warps are untuned: no GPU has timed them.
# Float32 blocks multiply in IEEE float32 (Triton's lowering), not TF32; the case timed is bf16.
@dataclasses.dataclass(frozen=True)
class DownBlocks:
    """The fused kernel's launch: a program's [rows, features] block of dh, the hidden-axis
    step, warps and pipeline stages. The default has no register spills for sm_90a at
    nt_v2_500m's widths (ptxas); scripts/bench_pallas.py times others on a GPU."""

    rows: int = 128
    features: int = 128
    k: int = 64
    warps: int = 8
    stages: int = 2


DOWN_BLOCKS = DownBlocks()


def down_supported(rows: int, features: int, hidden: int, blocks: DownBlocks = DOWN_BLOCKS) -> bool:
    """Whether dy [rows, hidden] @ W_down [features, hidden]^T fits the fused kernel's blocks."""
    return rows % blocks.rows == 0 and features % blocks.features == 0 and hidden % blocks.k == 0


def _down_backward_kernel(dy_ref, w_ref, gate_up_ref, dgate_up_ref, *, step: int):
    hidden = dy_ref.shape[-1]

    def accumulate(k, dh):
        cols = pl.ds(pl.multiple_of(k * step, step), step)
        return dh + plgpu.dot(dy_ref[:, cols], w_ref[:, cols], trans_b=True)

    zeros = jnp.zeros((dy_ref.shape[0], w_ref.shape[0]), jnp.float32)
    dh = jax.lax.fori_loop(0, hidden // step, accumulate, zeros)
    gate = gate_up_ref[:, 0, :].astype(jnp.float32)
    up = gate_up_ref[:, 1, :].astype(jnp.float32)
    sigmoid = 1.0 / (1.0 + jnp.exp(-gate))
    dgate = dh * up * sigmoid * (1.0 + gate * (1.0 - sigmoid))
    dgate_up_ref[:, 0, :] = dgate.astype(dgate_up_ref.dtype)
    dgate_up_ref[:, 1, :] = (dh * gate * sigmoid).astype(dgate_up_ref.dtype)


def down_backward(
    dy_TxD: jax.Array,
    w_FxD: jax.Array,
    gate_up_Tx2xF: jax.Array,
    interpret: bool = False,
    blocks: DownBlocks = DOWN_BLOCKS,
) -> jax.Array:
    """[T, 2, F]: the gate and up gradients from dy [T, D], W_down [F, D] (in dy's dtype) and
    gate_up [T, 2, F], in one kernel; shapes `down_supported` takes."""
    rows, hidden = dy_TxD.shape
    features = w_FxD.shape[0]
    b = blocks
    # The grid's first axis varies fastest on the GPU: the programs in flight share a block of
    # dy rows (read from memory once) and sweep W_down, which stays in the L2 cache (8 MB).
    return pl.pallas_call(
        functools.partial(_down_backward_kernel, step=b.k),
        out_shape=jax.ShapeDtypeStruct(gate_up_Tx2xF.shape, gate_up_Tx2xF.dtype),
        grid=(features // b.features, rows // b.rows),
        in_specs=[
            pl.BlockSpec((b.rows, hidden), lambda j, i: (i, 0)),
            pl.BlockSpec((b.features, hidden), lambda j, i: (j, 0)),
            pl.BlockSpec((b.rows, 2, b.features), lambda j, i: (i, 0, j)),
        ],
        out_specs=pl.BlockSpec((b.rows, 2, b.features), lambda j, i: (i, 0, j)),
        compiler_params=plgpu.CompilerParams(num_warps=b.warps, num_stages=b.stages),
        interpret=interpret,
        name="swiglu_down_backward",
    )(dy_TxD, w_FxD, gate_up_Tx2xF)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def swiglu_down(gate_up_BxLx2xF: jax.Array, w_FxD: jax.Array, interpret: bool = False) -> jax.Array:
    """silu(gate) * up @ W_down, without the down projection's bias; the backward pass takes the
    gate/up gradient in one kernel with the input-gradient matmul (`interpret`: through
    Pallas's interpreter, for CPU tests) and W_down's gradient with XLA's matmul."""
    return _swiglu_down_forward(gate_up_BxLx2xF, w_FxD, interpret)[0]


def _swiglu_down_forward(gate_up_BxLx2xF, w_FxD, interpret):
    h_BxLxF = swiglu_xla(gate_up_BxLx2xF)
    y_BxLxD = jnp.einsum("blf,fd->bld", h_BxLxF, w_FxD.astype(h_BxLxF.dtype))
    return y_BxLxD, (gate_up_BxLx2xF, h_BxLxF, w_FxD)


def _swiglu_down_backward(interpret, residuals, dy_BxLxD):
    gate_up_BxLx2xF, h_BxLxF, w_FxD = residuals
    features, hidden = w_FxD.shape
    rows = math.prod(dy_BxLxD.shape[:-1])
    dy = dy_BxLxD.astype(h_BxLxF.dtype)
    dw_FxD = jnp.einsum("blf,bld->fd", h_BxLxF, dy)  # rounded as JAX's own transpose rounds it
    dgate_up = down_backward(
        dy.reshape(rows, hidden),
        w_FxD.astype(h_BxLxF.dtype),
        gate_up_BxLx2xF.reshape(rows, 2, features),
        interpret,
    )
    return dgate_up.reshape(gate_up_BxLx2xF.shape), dw_FxD.astype(w_FxD.dtype)


swiglu_down.defvjp(_swiglu_down_forward, _swiglu_down_backward)
