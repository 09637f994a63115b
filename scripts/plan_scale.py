"""Which mesh, batch and remat fit a TPU slice or GPU nodes we do not have, asked of the compiler.

    python scripts/plan_scale.py --preset nt_v2_500m --tokens 1024 --batch 512 \\
        --target v5p-64 --target v5p-256 [--mesh 1,-1,1,1 --mesh -1,16,1,1] \\
        [--remat none,save_dots,full] [--micro-batches 1,2] [--write docs/scaling.md]

For every target and candidate (mesh, remat policy, micro-batches), the train step is built by
gfm_jax/train/program.py, the code the training loop runs (mesh from `mesh.shape`, logical
rules, sharded state, donation, remat, scanned layers, micro-batches), on compile-only devices,
and compiled. Per mesh the candidates go from the least recomputation up and stop at the first
that fits. Each row gives XLA's per-device bytes (arguments, outputs, temporaries; the donated
state counted once), whether that fits the device, the collectives in the compiled program and
the bytes they produce per step, model FLOPs per token, and a step time projected from the MFU
measured on one H100 (labelled as a projection: the collectives are assumed hidden under compute).

TPU targets need libtpu (`pip install -e '.[tpu]'`); GPU targets need jax's CUDA plugin
(`pip install -e '.[gpu]'`); neither needs the device. A TPU program that does not fit fails to
compile with the bytes it needs, which the table reports; a GPU program fits when its bytes stay
within the memory JAX lets its allocator take by default (75%).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import os
import re
import sys
import time
from unittest import mock

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server: compile-only devices
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no TPU to lock: plans side by side
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
from benchmarks_md import publish  # noqa: E402
from hlo_bytes import COLLECTIVES, kernels  # noqa: E402
from step_traffic import GPU_TARGETS, TARGET_CONFIG  # noqa: E402

from gfm_jax import config as config_lib  # noqa: E402
from gfm_jax import sharding  # noqa: E402
from gfm_jax.data.tokenizers import get_tokenizer  # noqa: E402
from gfm_jax.errors import UserError  # noqa: E402
from gfm_jax.models import presets  # noqa: E402
from gfm_jax.models.encoder import EncoderConfig  # noqa: E402
from gfm_jax.train import flops  # noqa: E402
from gfm_jax.train import program as program_lib  # noqa: E402

GIB = 2**30
# nt_v2_500m, bfloat16, 1,024 tokens, batch 32, one H100 (docs/scaling.md, "MFU on large
# accelerators"): the utilisation the projections assume on every target.
MEASURED_MFU = 0.447
# Recomputation under remat, as a multiple of the model FLOPs: `full` redoes each layer's
# forward pass (2 of the 6 FLOPs per parameter and token); `save_dots` keeps the matmuls.
REMAT_FLOPS = {"none": 1.0, "save_dots": 1.0, "full": 4.0 / 3.0}
# Measured on one 2-core host (docs/benchmarks.md): a train-state save of nt_v2_50m, 658 MB, took
# 2.08 s in all and blocked training for 0.39 s (scripts/bench_checkpoint.py); one process made
# 4.7M masked NT 6-mer tokens/s (scripts/bench_data.py).
SAVE_BYTES_PER_S = 658e6 / 2.08
SAVE_BLOCKED_BYTES_PER_S = 658e6 / 0.39
INPUT_TOKENS_PER_S = 4.7e6


@dataclasses.dataclass(frozen=True)
class Target:
    platform: str  # tpu | cuda
    topology: str  # get_topology_desc's name: "v5p:4x4x4", or "1xHOSTSx8" of GPUs
    memory: int  # bytes per device the program may use
    peak_tflops: float  # dense bfloat16, datasheet
    label: str
    devices_per_host: int  # TPU VMs of these slices hold 4 chips, GPU nodes 8 cards


TARGETS = {
    "v5e-64": Target("tpu", "v5e:8x8", 16 * GIB, 197.0, "TPU v5e, 64 chips (8x8)", 4),
    "v5e-256": Target("tpu", "v5e:16x16", 16 * GIB, 197.0, "TPU v5e, 256 chips (16x16)", 4),
    "v5p-64": Target("tpu", "v5p:4x4x4", 95 * GIB, 459.0, "TPU v5p, 64 chips (4x4x4)", 4),
    "v5p-256": Target("tpu", "v5p:4x8x8", 95 * GIB, 459.0, "TPU v5p, 256 chips (4x8x8)", 4),
    "v6e-64": Target("tpu", "v6e:8x8", 32 * GIB, 918.0, "TPU v6e, 64 chips (8x8)", 4),
    "v6e-256": Target("tpu", "v6e:16x16", 32 * GIB, 918.0, "TPU v6e, 256 chips (16x16)", 4),
    "h100x8": Target(
        "cuda", "1x1x8", int(0.75 * GPU_TARGETS["h100"]["memory"]), 989.0, "1 node of 8 H100", 8
    ),
    "h100x32": Target(
        "cuda", "1x4x8", int(0.75 * GPU_TARGETS["h100"]["memory"]), 989.0, "4 nodes of 8 H100", 8
    ),
}


@dataclasses.dataclass(frozen=True)
class Plan:
    mesh: tuple[int, ...]
    remat: str
    micro_batches: int
    bytes: dict[str, int]  # arguments, outputs, temporaries, total (per device)
    fits: bool
    collectives: dict[str, int]  # kind -> bytes produced per step per device
    seconds: float  # to compile (or to fail)
    error: str = ""  # a compile that failed for another reason than memory


def devices_of(target: Target) -> list:
    from jax.experimental import topologies

    if target.platform == "tpu":
        return list(topologies.get_topology_desc(target.topology, "tpu").devices)
    spec = TARGET_CONFIG.format(**GPU_TARGETS["h100"])
    topology = topologies.get_topology_desc(
        platform="cuda", target_config=spec, topology=target.topology
    )
    return list(topology.devices)


def base_config(preset: str, tokens: int, batch: int, scan: bool) -> config_lib.ConfigDict:
    """The pretraining config a run of `preset` would use: NT 6-mer tokens, windows of `tokens`
    positions (CLS included), bfloat16."""
    c = config_lib.pretrain_defaults()
    c.model = presets.get(preset)
    c.model.dtype = "bfloat16"
    c.model.scan_layers = scan
    c.data.tokenizer = "nt6"
    c.data.window_tokens = tokens - 1
    c.train.global_batch_size = batch
    return c


def collective_bytes(hlo: str) -> dict[str, int]:
    """Bytes each kind of collective produces per step (loop bodies times their trips)."""
    found: collections.Counter[str] = collections.Counter()
    for k in kernels(hlo):
        if k.kind in COLLECTIVES:
            found[k.kind] += k.bytes_written
    return dict(found)


def needed_bytes(message: str) -> int:
    """The bytes in XLA's out-of-memory message ('... temporaries (322.58G) exceeds ...'); 0
    where it names none."""
    found = re.search(r"\(([\d.]+)([KMGT])\) exceeds", message)
    if not found:
        return 0
    return int(float(found.group(1)) * 2 ** (10 * (1 + "KMGT".index(found.group(2)))))


def compile_plan(config, target: Target, devices: list, tokens: int) -> Plan:
    """Compiles the config's train step on `devices`; an out-of-memory compile is a row."""
    mesh = sharding.make_mesh(config.mesh.shape, devices)
    batch, micro = int(config.train.global_batch_size), int(config.train.micro_batches)
    sharding.check_batch_divides(batch, micro, sharding.batch_sharding(mesh, config.mesh.rules))
    start = time.perf_counter()
    shape = tuple(mesh.shape.values())
    # `kernels="auto"` picks by the default backend while tracing: here that of the target.
    backend = "gpu" if target.platform == "cuda" else target.platform
    try:
        with mock.patch.object(jax, "default_backend", lambda: backend):
            tokenizer = get_tokenizer(config.data.tokenizer)
            program = program_lib.build(config, mesh, tokenizer, tokens)
            lowered = program.lower_train_step(batch)
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as error:  # RESOURCE_EXHAUSTED: it does not fit
        took = time.perf_counter() - start
        text = str(error)
        if "RESOURCE_EXHAUSTED" in text:
            need = {"temp": needed_bytes(text)}
            return Plan(
                shape, config.model.remat, micro, {**need, "total": need["temp"]}, False, {}, took
            )
        first = text.strip().splitlines()[0][:120]
        return Plan(
            shape, config.model.remat, micro, {}, False, {}, took, f"compile error: {first}"
        )
    took = time.perf_counter() - start
    m = compiled.memory_analysis()
    used = {
        "args": m.argument_size_in_bytes,
        "out": m.output_size_in_bytes - m.alias_size_in_bytes,
        "temp": m.temp_size_in_bytes,
        "code": m.generated_code_size_in_bytes,
    }
    used["total"] = sum(used.values())
    collectives = collective_bytes(compiled.as_text())
    return Plan(
        shape, config.model.remat, micro, used, used["total"] <= target.memory, collectives, took
    )


def search(config, target: Target, meshes, remats, micros, tokens: int) -> list[Plan]:
    """Per mesh, candidates from the least recomputation up, until one fits."""
    devices = devices_of(target)
    plans, seen = [], set()
    for mesh in meshes:
        try:
            resolved = tuple(sharding.make_mesh(mesh, devices).shape.values())
        except UserError as error:
            print(f"  skip mesh {mesh}: {error}", flush=True)
            continue
        if resolved in seen:  # (-1, 8, 1, 1) on 8 devices is (1, 8, 1, 1)
            continue
        seen.add(resolved)
        config.mesh.shape = mesh
        for remat in remats:
            config.model.remat = remat
            fitted = False
            for micro in micros:
                config.train.micro_batches = micro
                try:
                    plan = compile_plan(config, target, devices, tokens)
                except UserError as error:  # a mesh or batch this target cannot take
                    print(f"  skip mesh {mesh}: {error}", flush=True)
                    break
                plans.append(plan)
                print(f"  {row(plan, target, config, tokens)}", flush=True)
                if plan.fits:
                    fitted = True
                    break
            if fitted:
                break
    return plans


def flops_per_token(config, tokens: int) -> float:
    """Model FLOPs per token of training (gfm_jax/train/flops.py; no recomputation)."""
    tok = get_tokenizer(config.data.tokenizer)
    cfg = EncoderConfig.from_config(config.model, tok.vocab_size, False, None, tok.mask_id)
    return flops.train_flops_per_token(cfg, tokens)


def step_seconds(config, target: Target, plan: Plan, tokens: int) -> float:
    """Projected: model FLOPs (with remat's recomputation) at MEASURED_MFU of the peak."""
    work = flops_per_token(config, tokens) * int(config.train.global_batch_size) * tokens
    devices = math.prod(plan.mesh)
    return work * REMAT_FLOPS[plan.remat] / (devices * target.peak_tflops * 1e12 * MEASURED_MFU)


def state_bytes(config, tokens: int) -> int:
    """Bytes of the train state (float32 parameters and AdamW moments), from its shapes."""
    mesh = sharding.make_mesh((1, 1, 1, 1), jax.devices()[:1])
    program = program_lib.build(config, mesh, get_tokenizer(config.data.tokenizer), tokens)
    leaves = jax.tree.leaves(nn.meta.unbox(program.boxed))
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves)


def summary(config, targets, chosen, tokens: int, train_tokens: float) -> list[str]:
    """One line per target: its fastest fitting program, and what a run of `train_tokens`
    then takes (projected)."""
    state = state_bytes(config, tokens)
    lines = [
        "| target | hosts | mesh, remat, micro-batches (compiled) | GiB per device (compiled) "
        "| step s (projected) | tokens/s (projected) | days (projected) | checkpoint save s per "
        "host: blocked, whole (projected) | input tokens/s per host needed (projected) |",
        "| --- " * 9 + "|",
    ]
    for name, plan in zip(targets, chosen, strict=True):
        target = TARGETS[name]
        if plan is None:
            lines.append(f"| {name} | | nothing tried fits | | | | | | |")
            continue
        hosts = max(1, math.prod(plan.mesh) // target.devices_per_host)
        step = step_seconds(config, target, plan, tokens)
        rate = int(config.train.global_batch_size) * tokens / step
        per_host = state / hosts
        lines.append(
            f"| {name} | {hosts} | {plan.mesh}, {plan.remat}, {plan.micro_batches} | "
            f"{plan.bytes['total'] / GIB:.1f} | {step:.2f} | {rate / 1e6:.2f}M | "
            f"{train_tokens / rate / 86400:.1f} | {per_host / SAVE_BLOCKED_BYTES_PER_S:.1f}, "
            f"{per_host / SAVE_BYTES_PER_S:.1f} | {rate / hosts / 1e6:.2f}M |"
        )
    lines.append("")
    lines.append(
        f"Train state {state / 1e9:.2f} GB. Projected: step from the model FLOPs at "
        f"{MEASURED_MFU:.1%} MFU; days for {train_tokens / 1e9:.0f}B tokens; saves with every "
        "host writing its share at one 2-core host's measured rate; input against "
        f"{INPUT_TOKENS_PER_S / 1e6:.1f}M tokens/s measured per 2-core process."
    )
    return lines


def row(plan: Plan, target: Target, config, tokens: int) -> str:
    gib = lambda key: f"{plan.bytes.get(key, 0) / GIB:.1f}" if key in plan.bytes else ""  # noqa: E731
    comm = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in sorted(plan.collectives.items()))
    fits = "yes" if plan.fits else (plan.error or "**no**")
    step = f"{step_seconds(config, target, plan, tokens):.2f}" if plan.fits else ""
    mesh = "(" + ", ".join(str(s) for s in plan.mesh) + ")"
    return (
        f"| {mesh} | {plan.remat} | {plan.micro_batches} | {gib('args')} | {gib('out')} | "
        f"{gib('temp')} | {gib('total')} of {target.memory / GIB:.0f} | {fits} | "
        f"{comm or '-'} | {step} | {plan.seconds:.0f} |"
    )


def meshes_for(text: list[str] | None, devices: int) -> list[tuple[int, ...]]:
    if text:
        return [tuple(int(s) for s in m.split(",")) for m in text]
    # Full FSDP; FSDP within 16 devices and data parallel across; FSDP with 4-way tensor.
    hybrid = [(-1, 16, 1, 1)] if devices > 16 else []
    return [(1, -1, 1, 1), *hybrid, (1, -1, 4, 1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", required=True, choices=sorted(presets.PRESETS))
    p.add_argument("--tokens", type=int, default=1024, help="positions per window, CLS included")
    p.add_argument("--batch", type=int, default=512, help="global batch (windows per step)")
    p.add_argument("--target", action="append", required=True, choices=sorted(TARGETS))
    p.add_argument("--mesh", action="append", help="data,fsdp,tensor,sequence; repeatable")
    p.add_argument("--remat", default="none,save_dots,full")
    p.add_argument("--micro-batches", default="1,2")
    p.add_argument("--unrolled", action="store_true", help="layers unrolled (default: scanned)")
    p.add_argument("--train-tokens", type=float, default=300e9, help="for the days column")
    p.add_argument("--write", default=None, help="Markdown file to put the table in")
    args = p.parse_args()
    jax.config.update("jax_platforms", "cpu")  # the targets are compile targets only
    config = base_config(args.preset, args.tokens, args.batch, not args.unrolled)
    remats = args.remat.split(",")
    micros = [int(m) for m in args.micro_batches.split(",")]
    model_flops = flops_per_token(config, args.tokens)
    lines = [
        f"### {args.preset}, {args.tokens:,} tokens x global batch {args.batch} "
        f"({args.tokens * args.batch / 1e6:.2f}M tokens per step), bfloat16, "
        f"{'unrolled' if args.unrolled else 'scanned'} layers",
        "",
        f"Model FLOPs per token: {model_flops / 1e9:.2f} GFLOP (gfm_jax/train/flops.py). "
        f"Compiled with jax {jax.__version__}.",
    ]
    chosen = []
    for name in args.target:
        target = TARGETS[name]
        print(f"{name}: {target.label}", flush=True)
        meshes = meshes_for(args.mesh, len(devices_of(target)))
        plans = search(config, target, meshes, remats, micros, args.tokens)
        lines += [
            "",
            f"**{target.label}** (`--target {name}`; {target.memory / GIB:.0f} GiB usable per "
            f"device, {target.peak_tflops:.0f} TFLOP/s bf16 peak):",
            "",
            "| mesh (data, fsdp, tensor, sequence) | remat | micro-batches | arguments GiB "
            "| outputs GiB | temporaries GiB | total GiB | fits | collectives, GB per step "
            "per device | step s (projected) | compile s |",
            "| --- " * 11 + "|",
        ]
        lines += [row(plan, target, config, args.tokens) for plan in plans]
        fitting = [p for p in plans if p.fits]
        times = [step_seconds(config, target, p, args.tokens) for p in fitting]
        chosen.append(fitting[times.index(min(times))] if fitting else None)
        layers = " unrolled" if args.unrolled else ""
        marker = f"<!-- plan_scale {args.preset} {args.tokens} {' '.join(args.target)}{layers} -->"
        publish("\n".join(lines), args.write, marker)  # after each target: a crash keeps it
    plan = summary(config, args.target, chosen, args.tokens, args.train_tokens)
    publish("\n".join([*lines, "", "Plan:", "", *plan]), args.write, marker)


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        sys.exit(f"plan_scale: {error}")
