"""The down projection's input gradient with SwiGLU's backward pass, kernel by kernel, on a GPU.

    python scripts/bench_pallas.py [--tokens 32768] [--write docs/benchmarks.md]

At nt_v2_500m's widths (hidden 1,024, SwiGLU 4,096; 32,768 tokens is batch 32 x 1,024), bf16,
one layer's worth: dh = dy @ W_down^T, then the gate and up gradients from dh, gate and up.
Three ways, timed alternately in one process: XLA's matmul and XLA's elementwise pass
(`glu_grad="xla"`, the baseline), XLA's matmul and the Pallas kernel of `glu_grad="pallas"`
(the default on a GPU), and the fused kernel of `glu_grad="fused"`
(gfm_jax/models/glu_pallas.py) at several block shapes, so one GPU run picks the blocks the
kernel should use. Each row also gives its largest difference from the baseline, relative to
the baseline's largest value (bf16 rounding is about 1e-2; the fused kernel keeps dh in
float32, where the others round it to bf16 first).

On a CPU (`--interpret`) the kernels run through Pallas's interpreter at a small shape: that
checks the script, not the speed.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import traceback
from collections.abc import Callable

import jax
import jax.numpy as jnp
from benchmarks_md import publish

from gfm_jax.models import glu_pallas

# (rows, features, k, warps, stages) of the fused kernel; the first is glu_pallas's default.
BLOCKS = [
    glu_pallas.DOWN_BLOCKS,
    glu_pallas.DownBlocks(128, 128, 64, 8, 3),
    glu_pallas.DownBlocks(128, 128, 32, 8, 4),
    glu_pallas.DownBlocks(64, 128, 64, 4, 3),
    glu_pallas.DownBlocks(128, 64, 64, 4, 3),
    glu_pallas.DownBlocks(64, 256, 64, 8, 2),
]


def variants(interpret: bool) -> dict[str, Callable[..., jax.Array]]:
    """name -> f(dy [T, D], w [F, D], gate_up [T, 2, F]) -> gate/up gradient [T, 2, F]."""

    def unfused(swiglu: Callable[[jax.Array], jax.Array]) -> Callable[..., jax.Array]:
        def gradient(dy, w, gate_up):  # XLA's matmul, then `swiglu`'s backward pass
            return jax.vjp(swiglu, gate_up)[1](dy @ w.T)[0]

        return gradient

    out = {
        "XLA matmul, XLA SwiGLU backward (`glu_grad=xla`)": unfused(glu_pallas.swiglu_xla),
        "XLA matmul, Pallas SwiGLU backward (`glu_grad=pallas`, GPU default)": unfused(
            lambda gu: glu_pallas.swiglu(gu, interpret)
        ),
    }
    for b in BLOCKS:
        name = (
            f"fused (`glu_grad=fused`): block {b.rows}x{b.features}, k {b.k}, "
            f"{b.warps} warps, {b.stages} stages"
        )
        out[name] = lambda dy, w, gu, b=b: glu_pallas.down_backward(dy, w, gu, interpret, b)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=32768, help="rows: batch x length")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--features", type=int, default=4096, help="SwiGLU width")
    parser.add_argument("--calls", type=int, default=20, help="calls per timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--interpret", action="store_true", help="CPU: Pallas's interpreter")
    parser.add_argument("--write", default=None, help="Markdown file to put the table in")
    args = parser.parse_args()
    t, d, f = args.tokens, args.hidden, args.features
    keys = jax.random.split(jax.random.key(0), 3)
    dy = jax.random.normal(keys[0], (t, d), jnp.bfloat16)
    w = (jax.random.normal(keys[1], (f, d)) * 0.02).astype(jnp.bfloat16)
    gate_up = (jax.random.normal(keys[2], (t, 2, f)) * 2).astype(jnp.bfloat16)
    flop = 2 * t * d * f  # the matmul's

    compiled, failed = {}, {}
    named = variants(args.interpret)
    for name, fn in named.items():
        try:
            compiled[name] = jax.jit(fn).lower(dy, w, gate_up).compile()
            compiled[name](dy, w, gate_up).block_until_ready()
        except Exception as e:  # noqa: BLE001 - a block shape that fails is a row
            traceback.print_exc()
            failed[name] = type(e).__name__
    baseline = next(iter(compiled.values()))(dy, w, gate_up).astype(jnp.float32)
    scale = float(jnp.max(jnp.abs(baseline)))
    times: dict[str, list[float]] = {name: [] for name in compiled}
    for _ in range(args.repeats):  # alternating: each round times every variant once
        for name, fn in compiled.items():
            fn(dy, w, gate_up).block_until_ready()
            start = time.perf_counter()
            for _ in range(args.calls):
                result = fn(dy, w, gate_up)
            result.block_until_ready()
            times[name].append((time.perf_counter() - start) / args.calls * 1e3)

    base_ms = statistics.median(next(iter(times.values()))) if times else None
    rows = []
    for name in named:
        if name in failed:
            rows.append(f"| {name} | failed: {failed[name]} (see the log) | | | |")
            continue
        ms = statistics.median(times[name])
        diff = float(jnp.max(jnp.abs(compiled[name](dy, w, gate_up) - baseline))) / scale
        rows.append(
            f"| {name} | {ms:.3f} | {base_ms / ms:.2f}x | {flop / ms / 1e9:.0f} | {diff:.1e} |"
        )
    lines = [
        "## SwiGLU's backward pass through the down projection, kernel by kernel "
        "(`scripts/bench_pallas.py`)",
        "",
        f"Device: {jax.devices()[0].device_kind}, Python {platform.python_version()}, jax "
        f"{jax.__version__}. dy [{t}, {d}] @ W_down^T [{d}, {f}], then the gate and up "
        f"gradients, bf16{' (Pallas interpreted)' if args.interpret else ''}; medians of "
        f"{args.repeats} alternating timings of {args.calls} calls. TFLOP/s counts the "
        "matmul's work over the whole time.",
        "",
        "| variant | ms per call | speed vs XLA's | TFLOP/s | max difference / max |",
        "| --- | --- | --- | --- | --- |",
        *rows,
    ]
    publish("\n".join(lines), args.write, "<!-- bench_pallas swiglu_down -->")


if __name__ == "__main__":
    main()
