"""Long windows: the MLM train step of a small model with the window's length sharded over the
`sequence` mesh axis (ring attention), at 4k to 131k tokens.

    python scripts/bench_long_context.py [--budget 200] [--write docs/benchmarks.md]

Per cell (length x sequence shards): the compiled step's memory per device (XLA's memory
analysis: temporaries, i.e. activations and workspace, and the peak with arguments and
outputs) and tokens/s. On a CPU the "devices" are threads of one machine, so tokens/s shows
the work, not a speed-up; what sharding buys is the memory per device. Cells whose estimated
step time (the cell one length down, scaled by the length squared) exceeds `--budget` seconds
are compiled but not run; `--always` names cells (LxP) to run regardless, timed once. Also
times ring against gather (keys and values all-gathered) on the whole step.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from bench_step import PAD_ID, mlm_step, release_device_memory  # noqa: E402
from benchmarks_md import publish  # noqa: E402

from gfm_jax import config as config_lib  # noqa: E402
from gfm_jax.models.encoder import EncoderConfig  # noqa: E402
from gfm_jax.ops import attention as attention_ops  # noqa: E402
from gfm_jax.train import state as state_lib  # noqa: E402

MARKER = "<!-- bench_long_context -->"
SMALL = dict(num_layers=2, hidden_size=32, num_heads=2, mlp_dim=64, vocab_size=12)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="4096,16384,65536,131072")
    p.add_argument("--shards", default="1,2,4,8")
    p.add_argument("--budget", type=float, default=100.0, help="seconds per step at most")
    p.add_argument("--always", default="131072x8", help="cells LxP run whatever the budget")
    p.add_argument("--steps", type=int, default=2, help="timed steps per cell (median)")
    p.add_argument("--compare", type=int, default=8192, help="tokens of ring vs gather")
    p.add_argument("--write", default=None, help="put the table into this markdown file")
    return p.parse_args()


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def cell(
    cfg: EncoderConfig, tokens: int, shards: int, run: bool, steps: int, mode: str = ""
) -> dict:
    """Compiles the step for one cell (attention by `mode`, ring or gather, else the default)
    and, if `run`, times it: memory and tokens/s."""
    devices = jax.devices()[:shards]
    built = mlm_step(cfg, tokens, devices, mesh_shape=(1, 1, 1, shards))
    start = time.perf_counter()
    backend = jax.default_backend()
    saved = dict(attention_ops.CONTEXT_PARALLEL)
    if mode:
        attention_ops.CONTEXT_PARALLEL[backend] = mode
    try:
        compiled = built.compile(1, tokens)
    finally:
        attention_ops.CONTEXT_PARALLEL.clear()
        attention_ops.CONTEXT_PARALLEL.update(saved)
    mem = compiled.memory_analysis()
    out = {
        "compile_s": time.perf_counter() - start,
        "temp": mem.temp_size_in_bytes,
        "peak": mem.temp_size_in_bytes
        + mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes,
    }
    if not run:
        return out
    mesh = built.batch_sharding.mesh
    state, _ = state_lib.create_sharded_state(
        built.init, built.tx, jax.random.key(0), mesh, config_lib.DEFAULT_RULES
    )
    rng = np.random.default_rng(0)
    ids = rng.integers(5, cfg.vocab_size, (1, tokens)).astype(np.int32)
    ids[:, -tokens // 16 :] = PAD_ID  # a padded tail
    host = {"inputs": ids, "targets": ids, "weights": (rng.random((1, tokens)) < 0.15) * 1.0}
    data = jax.device_put({k: v.astype(np.float32) if k == "weights" else v
                           for k, v in host.items()}, built.batch_sharding)  # fmt: skip
    if steps > 1:
        state = jax.block_until_ready(compiled(state, data)[0])  # warm up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    out["step_s"] = statistics.median(times)
    out["loss"] = float(metrics["loss_sum"] / metrics["weight_sum"])
    return out


def main() -> None:
    args = parse()
    lengths = [int(x) for x in args.lengths.split(",")]
    shard_counts = [int(x) for x in args.shards.split(",")]
    always = {tuple(int(y) for y in x.split("x")) for x in args.always.split(",") if x}
    cfg = EncoderConfig(**SMALL)
    rows, seconds = [], {}
    for shards in shard_counts:
        for tokens in lengths:
            smaller = [t for t in lengths if t < tokens and (t, shards) in seconds]
            estimate = (
                seconds[(smaller[-1], shards)] * (tokens / smaller[-1]) ** 2 if smaller else 0.0
            )
            run = estimate <= args.budget or (tokens, shards) in always
            # A cell past the budget (run because --always names it) is timed once, unwarmed:
            # the step is compiled ahead, and its minutes dwarf any first-call cost.
            steps = args.steps if estimate <= args.budget else 1
            result = cell(cfg, tokens, shards, run, steps)
            release_device_memory()
            if "step_s" in result:
                seconds[(tokens, shards)] = result["step_s"]
                rate = f"{tokens / result['step_s']:,.0f}"
                note = f"{result['step_s']:.1f} s/step, loss {result['loss']:.3f}"
            else:
                rate, note = "not run", f"estimated {estimate:,.0f} s/step (> {args.budget:.0f})"
            rows.append(
                f"| {tokens:,} | {shards} | {gib(result['temp'])} | {gib(result['peak'])} | "
                f"{rate} | {note} |"
            )
            print(rows[-1], flush=True)
    ring_rows = []
    for shards in [s for s in shard_counts if s > 1]:
        ring, gather = (
            cell(cfg, args.compare, shards, True, args.steps, m) for m in ("ring", "gather")
        )
        release_device_memory()
        ring_rows.append(
            f"| {args.compare:,} | {shards} | {ring['step_s']:.1f} | {gather['step_s']:.1f} | "
            f"{ring['step_s'] / gather['step_s']:.2f} | {gib(ring['temp'])} | "
            f"{gib(gather['temp'])} |"
        )
        print(ring_rows[-1], flush=True)
    table = "\n".join(
        [
            "## Long context: the sequence axis (`scripts/bench_long_context.py`)",
            "",
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{jax.device_count()} {jax.default_backend()} devices, jax {jax.__version__}. "
            f"Model: {SMALL['num_layers']} layers, hidden {SMALL['hidden_size']}, "
            f"{SMALL['num_heads']} heads, FFN {SMALL['mlp_dim']}, char vocabulary, float32, "
            "rotary positions, masked-LM, batch 1 (a padded tail), mesh (1, 1, 1, P). Memory is "
            "per device from XLA's memory analysis of the compiled step; on CPU devices share "
            "the cores, so tokens/s is the whole machine's.",
            "",
            "| tokens | sequence shards P | temporaries / device | peak / device | tokens/s | "
            "step |",
            "| ---: | ---: | ---: | ---: | ---: | --- |",
            *rows,
            "",
            f"Ring against gather on {jax.default_backend()} (the same step, median s/step; ring "
            "passes key/value blocks around the axis, gather all-gathers them once). "
            f"`model.kernels=auto` uses {attention_ops.implementation('auto', 'float32', 2, 2)} "
            "here (ops/attention.py, `CONTEXT_PARALLEL`).",
            "",
            "| tokens | P | ring s/step | gather s/step | ring / gather | ring temporaries | "
            "gather temporaries |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *ring_rows,
        ]
    )
    publish(table, args.write, MARKER)


if __name__ == "__main__":
    main()
