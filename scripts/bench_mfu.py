"""Tokens/s and MFU of the gfm_jax MLM train step for several settings of one preset.

    python scripts/bench_mfu.py --preset nt_v2_500m --tokens 1024 --dtype bfloat16 \\
        --variant "scan_layers=1 batch=16" --variant "scan_layers=0 batch=16" \\
        --variant "scan_layers=1 remat=save_dots batch=32" --profile [--write docs/benchmarks.md]

Each `--variant` is space-separated `key=value` pairs: `batch` and any `model.*` key
(`scan_layers`, `remat`, `kernels`, `dtype`, ...). Variants run one after
another, each compiled, warmed up, timed `--repeats` times over `--steps` steps (median) and
freed before the next, so one that runs out of memory is reported as such and the others still
run. `--profile` traces the first variant that ran with `jax.profiler` and sums device time
per kernel into matmuls, attention, copies and the rest, the split that says where MFU goes.
Needs no TensorFlow, so it runs on an accelerator machine with jax, flax, optax and
ml-collections alone.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import platform
import statistics
import tempfile
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hlo_bytes  # noqa: E402
import jax  # noqa: E402
from bench_step import StepTimer, jax_step_rate, release_device_memory  # noqa: E402
from benchmarks_md import publish  # noqa: E402

from gfm_jax import host_memory  # noqa: E402
from gfm_jax.models import presets  # noqa: E402
from gfm_jax.models.encoder import EncoderConfig  # noqa: E402
from gfm_jax.train import flops  # noqa: E402

# Kernel-name fragments -> category, first match wins (cuBLAS / CUTLASS / XLA Triton matmuls,
# cuDNN attention, device copies).
CATEGORIES = (
    ("attention", ("sdpa", "fmha", "flash", "cudnn")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "dot")),
    ("copies", ("memcpy", "memset", "dynamic_update_slice", "copy")),
)


def parse_variant(text: str, base: EncoderConfig, batch: int) -> tuple[EncoderConfig, int]:
    """'scan_layers=1 remat=full batch=32' -> (config, batch); refuses unknown keys by name."""
    fields = {f.name: f for f in dataclasses.fields(EncoderConfig)}
    overrides = {}
    for pair in text.split():
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--variant {text!r}: {pair!r} is not key=value")
        if key == "batch":
            batch = int(value)
        elif key in fields and key not in ("vocab_size", "causal"):
            current = getattr(base, key)
            if isinstance(current, bool):
                overrides[key] = value.lower() in ("1", "true", "yes")
            else:
                overrides[key] = type(current)(value)
        else:
            raise SystemExit(f"--variant {text!r}: unknown key {key!r}; use batch or a model key")
    cfg = dataclasses.replace(base, **overrides)
    cfg.validate()
    return cfg, batch


def peak_memory_gib() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def kernel_time_split(measure, steps: int) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Device milliseconds per step by category, and the 12 costliest kernels, from a trace."""
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        measure()
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    names = {
        e["pid"]: e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    per_kernel: collections.Counter[str] = collections.Counter()
    for e in events:
        # Device events only: on a GPU they sit under '/device:GPU:N' processes.
        if e.get("ph") == "X" and "dur" in e and "/device:" in names.get(e["pid"], ""):
            per_kernel[e["name"]] += e["dur"] / 1e3 / steps
    split: collections.Counter[str] = collections.Counter()
    for name, ms in per_kernel.items():
        lower = name.lower()
        category = next((c for c, keys in CATEGORIES if any(k in lower for k in keys)), "other")
        split[category] += ms
    return dict(split), per_kernel.most_common(12)


def rest_bandwidth(measure: StepTimer, split: dict[str, float]) -> str:
    """What the kernels that are neither matmuls nor attention move per step (bytes from the
    compiled program) and the bandwidth they achieve over their device time: the figure that
    turns `scripts/step_traffic.py`'s bytes into a time estimate for another program."""
    moved = hlo_bytes.bytes_by_kind(hlo_bytes.kernels(measure.compiled_text()))
    nbytes = moved.get("other", 0) + moved.get("copy", 0)
    ms = split.get("other", 0.0) + split.get("copies", 0.0)
    line = (
        f"Kernels other than matmuls and attention move {nbytes / 1e9:.1f} GB per step "
        "(scripts/hlo_bytes.py)"
    )
    return line + (f": {nbytes / ms / 1e9:.2f} TB/s over their {ms:.1f} ms." if ms else ".")


def profile(measure: StepTimer, text: str, step_ms: float, steps: int) -> list[str]:
    """The kernel-time lines of the table for one variant. A failure here (a trace or program
    text this jax writes differently) is printed and costs only these lines, not the timings
    above them, which took minutes of device time to compile."""
    try:
        split, top = kernel_time_split(measure, steps)
        bandwidth = rest_bandwidth(measure, split)
    except Exception as e:  # noqa: BLE001 -- see the docstring
        print(f"profile failed: {e!r}", flush=True)
        return ["", f"Profile of `{text}` failed: {type(e).__name__}."]
    return [
        "",
        f"Device time per step of `{text}` by kernel category (step {step_ms:.1f} ms): "
        + (
            ", ".join(f"{c} {ms:.1f} ms" for c, ms in sorted(split.items()))
            or "none recorded (on CPU the trace has host threads only)"
        ),
        "",
        bandwidth,
        "",
        *(["| kernel | ms per step |", "| --- | --- |"] if top else []),
        *(f"| `{name[:90]}` | {ms:.2f} |" for name, ms in top),
    ]


def add_variant_arguments(parser: argparse.ArgumentParser) -> None:
    """The preset, its shape and `--variant`s, as this script and step_traffic.py take them."""
    parser.add_argument("--preset", default="nt_v2_500m")
    parser.add_argument("--vocab", type=int, default=4107)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16, help="unless a variant sets batch=")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--variant", action="append", default=[], help="'key=value ...'")


def base_config(args: argparse.Namespace) -> EncoderConfig:
    """The preset as published, in `--dtype`: what each variant overrides."""
    preset = EncoderConfig.from_config(presets.get(args.preset), args.vocab, mask_id=0)
    return dataclasses.replace(preset, dtype=args.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_variant_arguments(parser)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="kernel-time split of variant 1")
    parser.add_argument("--write", default=None, help="Markdown file to put the table in")
    args = parser.parse_args()
    host_memory.retain_freed_memory()  # as `python -m gfm_jax.train` does, before jax starts

    base = base_config(args)
    variants = [parse_variant(v, base, args.batch) for v in args.variant or [""]]
    peak = flops.peak_flops(args.dtype)
    peak = peak / jax.device_count() if peak else None  # the step runs on one device
    rows, profile_lines = [], []

    def write() -> None:  # after every variant: a command killed at its limit keeps the rows
        lines = [
            f"## MFU of the train step: {args.preset} (`scripts/bench_mfu.py`)",
            "",
            f"Device: {jax.devices()[0].device_kind}, Python {platform.python_version()}, jax "
            f"{jax.__version__}. {args.preset} as published, {args.dtype}, {args.tokens} tokens, "
            f"MLM head at the 6-sigma bound, `kernels={base.kernels}` unless a variant sets it; "
            f"medians of {args.repeats} timings of {args.steps} "
            "steps, variants one after another. Peak memory is the process's so far (it only "
            "grows).",
            "",
            "| variant | tokens/s | step time (ms) | MFU | compile + warm-up (s) | peak GiB |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
            *profile_lines,
        ]
        publish("\n".join(lines), args.write, f"<!-- bench_mfu {args.preset} -->")

    for text, (cfg, batch) in zip(args.variant or ["preset defaults"], variants, strict=True):
        start = time.perf_counter()
        try:
            measure = jax_step_rate(cfg, args.tokens, batch, args.steps)
        except Exception as e:  # noqa: BLE001 - one failed variant must not lose the others
            if "RESOURCE_EXHAUSTED" in str(e):
                rows.append(f"| {text} | out of memory | | | | |")
            else:
                traceback.print_exc()
                rows.append(f"| {text} | failed: {type(e).__name__} (see the log) | | | | |")
            write()
            continue
        compile_s = time.perf_counter() - start
        rate = statistics.median(measure()[1] for _ in range(args.repeats))
        achieved = rate * flops.train_flops_per_token(cfg, args.tokens)
        mfu = f"{achieved / peak:.1%}" if peak else "n/a"
        memory = peak_memory_gib()
        step_ms = batch * args.tokens / rate * 1e3
        rows.append(
            f"| {text} | {rate:,.0f} | {step_ms:,.1f} | {mfu} | "
            f"{compile_s:.0f} | {'n/a' if memory is None else f'{memory:.1f}'} |"
        )
        print(rows[-1], flush=True)
        if args.profile and not profile_lines:
            profile_lines = profile(measure, text, step_ms, args.steps)
        del measure
        release_device_memory()
        write()


if __name__ == "__main__":
    main()
