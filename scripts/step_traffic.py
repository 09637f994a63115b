"""Memory traffic of the compiled MLM train step, kernel by kernel, without running it.

    python scripts/step_traffic.py --preset nt_v2_500m --target h100 \\
        --variant "scan_layers=0 batch=16" [--write docs/benchmarks.md]

Compiles the train step that `scripts/bench_mfu.py` times and reads XLA's optimized program:
each kernel's bytes (scripts/hlo_bytes.py: the operands it reads and the results it writes; an
operand the kernel only slices counts as its slices), summed by kind (matmul, attention, the
rest) and by the model operation the kernel comes from. The bytes are what memory-bound
kernels cost: over a GPU's datasheet bandwidth they give about the least time everything that
is not a matmul or attention can take (less only where the L2 cache serves a reread), the part
of the step that decides its MFU once matmuls and attention run near peak. Not a timing.

`--target h100` or `h200` compiles for that GPU without one (deviceless ahead-of-time
compilation, from the device descriptions below); it needs jax's CUDA plugin installed, not a
GPU. Checked with `pip install "jax[cuda12]==$(python -c 'import jax; print(jax.__version__)')"`
in a separate environment (the project's `gpu` extra installs the cuda13 one). Without a GPU
there is no autotuning: XLA keeps its default matmul kernels, so the matmul rows are
indicative, and the fusions next to matmuls may differ from a GPU run's. `--target local`
compiles for this machine's first device.
"""

from __future__ import annotations

import argparse
import collections
from unittest import mock

import jax
from bench_mfu import add_variant_arguments, base_config, parse_variant
from bench_step import mlm_step
from benchmarks_md import publish
from hlo_bytes import Kernel, kernels, operation

from gfm_jax.models.encoder import EncoderConfig

# Datasheet figures of the SXM cards (132 SMs at 1.98 GHz); what XLA's GPU compiler reads.
GPU_TARGETS = {
    "h100": dict(name="NVIDIA H100 80GB HBM3", bandwidth=3.35e12, memory=84_929_347_584),
    "h200": dict(name="NVIDIA H200", bandwidth=4.8e12, memory=141_000_000_000),
}
TARGET_CONFIG = """gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: {bandwidth:.0f} l2_cache_size: 52428800
  clock_rate_ghz: 1.98 device_memory_size: {memory} shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 }} registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 12 minor: 8 }}
device_description_str: "{name}"
"""


def compile_step(cfg: EncoderConfig, tokens: int, batch: int, target: str) -> jax.stages.Compiled:
    """The MLM train step compiled for `target` (local, or a GPU of GPU_TARGETS)."""
    if target == "local":
        device = jax.devices()[0]
    else:
        from jax.experimental import topologies

        spec = GPU_TARGETS[target]
        topology = topologies.get_topology_desc(
            platform="cuda", target_config=TARGET_CONFIG.format(**spec), topology="1x1x1"
        )
        device = topology.devices[0]
        # `kernels="auto"` picks by the default backend while tracing: here that of the target.
        with mock.patch.object(jax, "default_backend", lambda: "gpu"):
            return mlm_step(cfg, tokens, device).compile(batch, tokens)
    return mlm_step(cfg, tokens, device).compile(batch, tokens)


def report(found: list[Kernel], bandwidth: float | None, top: int = 15) -> list[str]:
    by_kind = collections.defaultdict(lambda: [0, 0])
    by_op = collections.defaultdict(lambda: [0, 0])
    for k in found:
        by_kind[k.kind][0] += k.launches
        by_kind[k.kind][1] += k.bytes_read + k.bytes_written
        if k.kind == "other":
            by_op[operation(k.op_name)][0] += k.launches
            by_op[operation(k.op_name)][1] += k.bytes_read + k.bytes_written

    def ms(nbytes: int) -> str:
        return f"{nbytes / bandwidth * 1e3:.1f}" if bandwidth else "n/a"

    lines = [
        "| kernels | launches | MB | ms at the datasheet bandwidth |",
        "| --- | --- | --- | --- |",
    ]
    for kind, (count, nbytes) in sorted(by_kind.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| {kind} | {count} | {nbytes / 1e6:,.1f} | {ms(nbytes)} |")
    lines += ["", "| operation (not matmul, not attention) | launches | MB | ms |"]
    lines.append("| --- | --- | --- | --- |")
    for op, (count, nbytes) in sorted(by_op.items(), key=lambda kv: -kv[1][1])[:top]:
        lines.append(f"| `{op[:80]}` | {count} | {nbytes / 1e6:,.1f} | {ms(nbytes)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_variant_arguments(parser)
    parser.add_argument("--target", default="h100", choices=("local", *GPU_TARGETS))
    parser.add_argument("--write", default=None, help="Markdown file to put the tables in")
    args = parser.parse_args()
    base, gpu = base_config(args), GPU_TARGETS.get(args.target)
    if gpu:
        jax.config.update("jax_platforms", "cpu")  # the GPU is a compile target only
    bandwidth = gpu["bandwidth"] if gpu else None
    device = (
        f"{gpu['name']} (deviceless: no GPU needed)"
        if gpu
        else f"this machine's {jax.devices()[0].device_kind}"
    )
    sections = [
        f"## Memory traffic of the train step: {args.preset} (`scripts/step_traffic.py`)",
        "",
        f"Compiled for {device}, jax "
        f"{jax.__version__}, {args.preset} as published, {args.dtype}, {args.tokens} tokens, "
        "MLM head at the 6-sigma bound, "
        f"`kernels={base.kernels}` (as a GPU resolves it) unless a variant sets it. "
        "Bytes each kernel reads and writes in the optimized "
        "program; times are bytes over the datasheet bandwidth, a lower bound, not a timing.",
    ]
    for text in args.variant or [""]:
        cfg, batch = parse_variant(text, base, args.batch)
        found = kernels(compile_step(cfg, args.tokens, batch, args.target).as_text())
        sections += ["", f"### `{text or 'preset defaults'}`, batch {batch}", ""]
        sections += report(found, bandwidth)
    publish("\n".join(sections), args.write, f"<!-- step_traffic {args.preset} -->")


if __name__ == "__main__":
    main()
