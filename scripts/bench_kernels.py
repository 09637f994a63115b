"""Which accelerated implementations earn their place: each one alone on top of the plain-XLA
reference, and all of `model.kernels="auto"`, timed side by side in one process.

    python scripts/bench_kernels.py [--repeats 15] [--write docs/benchmarks.md]
    python scripts/bench_kernels.py --preset nt_v2_500m --tokens 1024 --batch 32 \\
        --dtype bfloat16 --write docs/benchmarks.md   # on a GPU

An implementation stays only where it makes the train step at least 5% faster on the hardware
it targets: alone on top of the reference, or within `auto` (the rows without it). The default
shape is bench_train.py's CPU shape (an NT-like encoder, GELU FFN, 512 tokens x batch 8,
float32). The variants alternate, so the
machine's speed swings hit all alike; the table gives medians and the median per-round ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import statistics
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
from bench_step import jax_step_rate  # noqa: E402
from benchmarks_md import publish  # noqa: E402
from jax import lax  # noqa: E402

from gfm_jax import host_memory, ops  # noqa: E402
from gfm_jax.models import presets  # noqa: E402
from gfm_jax.models.encoder import EncoderConfig  # noqa: E402
from gfm_jax.ops import attention as attention_ops  # noqa: E402


def enabled(kernels: set[str]) -> contextlib.AbstractContextManager:
    """While tracing: `kernels="auto"` with only the accelerated implementations in `kernels`
    on; the others run the reference."""
    stack = contextlib.ExitStack()
    real = attention_ops.implementation

    def attention(setting: str, dtype, length: int, shards: int = 1) -> str:
        chosen = real(setting, dtype, length, shards)
        return chosen if chosen in kernels else "xla"

    stack.enter_context(mock.patch.object(attention_ops, "implementation", attention))
    if "cpu_gemm" not in kernels:
        stack.enter_context(mock.patch.object(ops, "dot_general", lambda setting: lax.dot_general))
    return stack


def kept_kernels(cfg: EncoderConfig, tokens: int) -> list[str]:
    """The accelerated implementations `auto` runs for this shape on this backend."""
    found = [attention_ops.implementation("auto", cfg.dtype, tokens)]
    if ops.dot_general("auto") is not lax.dot_general:
        found.append("cpu_gemm")
    return [k for k in found if k != "xla"]


def model_config(args: argparse.Namespace) -> EncoderConfig:
    if args.preset:
        base = EncoderConfig.from_config(presets.get(args.preset), args.vocab, mask_id=0)
        return dataclasses.replace(base, dtype=args.dtype)
    return EncoderConfig(
        vocab_size=args.vocab, num_layers=4, hidden_size=256, num_heads=8, mlp_dim=1024,
        activation="gelu", use_bias_mlp=True, tie_embeddings=True, dtype=args.dtype,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="", help="a preset as published (default: CPU shape)")
    parser.add_argument("--vocab", type=int, default=4107)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--write", default=None, help="Markdown file to put the table in")
    args = parser.parse_args()
    host_memory.retain_freed_memory()  # as `python -m gfm_jax.train` does, before jax starts
    cfg = model_config(args)
    kernels = kept_kernels(cfg, args.tokens)
    auto = dataclasses.replace(cfg, kernels="auto")
    variants = {"kernels=xla (the reference)": (dataclasses.replace(cfg, kernels="xla"), set())}
    for k in kernels:
        variants[f"the reference + {k}"] = (auto, {k})
    for k in kernels if len(kernels) > 2 else ():  # with two, "+ the other" is that row
        variants[f"kernels=auto without {k}"] = (auto, set(kernels) - {k})
    if len(kernels) > 1:
        variants["kernels=auto (all of them)"] = (auto, set(kernels))
    timers = {}
    for name, (variant, on) in variants.items():
        with enabled(on):
            timers[name] = jax_step_rate(variant, args.tokens, args.batch, args.steps)
    rates = {name: [] for name in timers}
    for _ in range(args.repeats):
        for name, timer in timers.items():
            rates[name].append(timer()[1])
    reference = rates["kernels=xla (the reference)"]
    device = jax.devices()[0].device_kind
    where = f"{os.cpu_count()} cores" if jax.default_backend() == "cpu" else "1 device"
    shape = (
        f"{args.preset or 'CPU shape'}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.num_heads} heads, FFN {cfg.mlp_dim} ({cfg.activation}), {args.tokens} tokens x "
        f"batch {args.batch}, {args.dtype}"
    )
    lines = [
        "## Kernels: which accelerated implementations are kept (`scripts/bench_kernels.py`)",
        "",
        f"Device: {device}, {where}, Python {platform.python_version()}, jax {jax.__version__}. "
        f"{shape}. Medians of {args.repeats} alternating timings of {args.steps} train steps; "
        "an implementation stays where it makes the step at least 5% faster, alone on the "
        "reference or within `auto`.",
        "",
        "| variant | tokens/s | step time (ms) | vs the reference |",
        "| --- | --- | --- | --- |",
    ]
    for name, values in rates.items():
        rate = statistics.median(values)
        ratio = statistics.median(a / b for a, b in zip(values, reference, strict=True))
        ms = args.batch * args.tokens / rate * 1e3
        lines.append(f"| {name} | {rate:,.0f} | {ms:,.1f} | {ratio:.3f}x |")
    by_set = {frozenset(on): name for name, (_, on) in variants.items()}
    if len(kernels) > 1:
        lines.append("")
        for k in kernels:
            without = rates[by_set[frozenset(kernels) - {k}]]
            every = rates[by_set[frozenset(kernels)]]
            gain = statistics.median(a / b for a, b in zip(every, without, strict=True))
            lines.append(f"- {k} within `auto` (all of them / all but {k}): **{gain:.3f}x**")
    marker = f"<!-- kernels {jax.default_backend()} -->"
    publish("\n".join(lines), args.write, marker)


if __name__ == "__main__":
    main()
