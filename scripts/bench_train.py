"""Train-step speed of gfm_jax beside Hugging Face transformers' EsmForMaskedLM (PyTorch).

    pip install -e '.[bench]'   # torch and transformers: never core dependencies
    python scripts/bench_train.py [--repeats 5] [--write docs/benchmarks.md]
    bash scripts/bench_gpu.sh   # on a GPU: the NT v2 sizes in bf16 at 1,024 tokens

Both models have the same shape (an NT-like encoder: rotary positions, plain GELU FFN with
biases, tied MLM decoder), the same batch of token ids with 15% of positions as MLM targets,
and AdamW. ESM runs with attention "sdpa" (bf16 through torch.autocast, float32 weights, fused
AdamW on a GPU; gfm_jax likewise computes in bf16 over float32 parameters). The two are timed
alternately, `--steps` steps per timing, `--repeats` times; the table gives medians and the
median of the per-repeat ratios. `--preset` takes the layer count, widths and heads of presets
(comma-separated, one table each) but keeps ESM's architecture so both do the same work;
`--native` adds a gfm_jax row with the preset's own architecture (SwiGLU for NT v2), which ESM
cannot express. `--holes` re-times the first gfm_jax variant on a batch with one padding token
inside each row, which key lengths alone cannot express (with cuDNN the encoder reorders the
tokens, kept first; with ALiBi each layer falls back to XLA's attention). Model FLOPs per token
come from gfm_jax/train/flops.py; MFU divides by the peak in its table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# torch shares the GPU with jax in this process: jax takes memory as it needs it, not 75% upfront.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from bench_step import jax_step_rate, release_device_memory  # noqa: E402
from benchmarks_md import publish  # noqa: E402

from gfm_jax import host_memory  # noqa: E402
from gfm_jax.models import presets  # noqa: E402
from gfm_jax.models.encoder import EncoderConfig  # noqa: E402
from gfm_jax.train import flops  # noqa: E402


def marker(backend: str, preset: str) -> str:
    """The docs section a run replaces: one for the CPU shape, one per GPU preset list."""
    return (
        "<!-- bench_train -->"
        if backend == "cpu"
        else f"<!-- bench_train_gpu {preset or 'custom'} -->"
    )


def esm_step_rate(cfg: EncoderConfig, tokens: int, batch: int, steps: int):
    """A function measuring (None, tokens/s) of EsmForMaskedLM forward + backward + AdamW."""
    import torch
    from transformers import EsmConfig, EsmForMaskedLM

    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    esm_cfg = EsmConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.mlp_dim,
        position_embedding_type="rotary",
        max_position_embeddings=tokens + 2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=1,
        mask_token_id=2,
        token_dropout=False,
        attn_implementation="sdpa",
    )
    model = EsmForMaskedLM(esm_cfg).to(device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-4, weight_decay=0.01, fused=device == "cuda"
    )
    rng = np.random.default_rng(0)
    inputs = torch.from_numpy(rng.integers(5, cfg.vocab_size, (batch, tokens)))
    labels = torch.from_numpy(rng.integers(5, cfg.vocab_size, (batch, tokens)))
    labels[torch.from_numpy(rng.random((batch, tokens)) >= 0.15)] = -100  # 15% are targets
    inputs, labels = inputs.to(device), labels.to(device)
    attention = torch.ones_like(inputs)
    bf16 = cfg.dtype == "bfloat16"

    def one_step() -> None:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=inputs, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    one_step()  # warm-up
    sync()
    num_params = sum(p.numel() for p in model.parameters())

    def measure() -> tuple[None, float]:
        start = time.perf_counter()
        for _ in range(steps):
            one_step()
        sync()
        return None, batch * tokens * steps / (time.perf_counter() - start)

    desc = f"torch {torch.__version__}, " + (
        f"{torch.get_num_threads()} threads" if device == "cpu" else device
    )
    return measure, num_params, desc


def esm_shape(args: argparse.Namespace, preset: str | None, kernels: str) -> EncoderConfig:
    """ESM's architecture (rotary, GELU FFN with biases, tied decoder) at a preset's sizes."""
    sizes = dict(
        num_layers=args.layers, hidden_size=args.hidden, num_heads=args.heads, mlp_dim=args.ffn
    )
    if preset:
        sizes = {k: presets.get(preset)[k] for k in sizes}
    return EncoderConfig(
        vocab_size=args.vocab,
        activation="gelu",
        use_bias_mlp=True,
        tie_embeddings=True,
        norm_eps=1e-5,
        kernels=kernels,
        dtype=args.dtype,
        scan_layers=args.scan,
        **sizes,
    )


def bench_shape(args: argparse.Namespace, preset: str | None, batch: int) -> list[str]:
    """Times the gfm_jax variants beside ESM at one shape; returns that shape's table lines."""
    variants = args.kernels.split(",")
    cfgs = {f"gfm_jax (kernels {k})": esm_shape(args, preset, k) for k in variants}
    timers = {
        name: jax_step_rate(cfg, args.tokens, batch, args.steps) for name, cfg in cfgs.items()
    }
    first = next(iter(cfgs))
    if args.holes:
        hole_name = f"{first}, padding holes"
        timers[hole_name] = jax_step_rate(cfgs[first], args.tokens, batch, args.steps, holes=True)
        cfgs[hole_name] = cfgs[first]
    native_name = ""
    if args.native and preset:
        native = dataclasses.replace(
            EncoderConfig.from_config(presets.get(preset), args.vocab, mask_id=0),
            kernels=variants[0],
            dtype=args.dtype,
            scan_layers=args.scan,
        )
        native_name = f"gfm_jax {preset} as published ({native.activation}, no ESM counterpart)"
        cfgs[native_name] = native
        timers[native_name] = jax_step_rate(native, args.tokens, batch, args.steps)
    esm, esm_params, torch_desc = esm_step_rate(cfgs[first], args.tokens, batch, args.steps)
    timers["transformers ESM (sdpa)"] = esm
    cfgs["transformers ESM (sdpa)"] = cfgs[first]
    rates: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(args.repeats):  # alternate, so machine-speed swings hit all alike
        for name, measure in timers.items():
            rates[name].append(measure()[1])
    peak = flops.peak_flops(args.dtype)  # of all devices; both frameworks use one
    peak = peak / jax.device_count() if peak else None
    shape = (
        f"{cfgs[first].num_layers} layers, hidden {cfgs[first].hidden_size}, "
        f"{cfgs[first].num_heads} heads, FFN {cfgs[first].mlp_dim} (GELU), vocab {args.vocab:,}, "
        f"{args.tokens} tokens x batch {batch}, {args.dtype}"
    )
    lines = [
        f"### {preset or 'CPU-sized NT-like shape'}: {shape}",
        "",
        f"ESM has {esm_params:,} parameters; {torch_desc}. Medians of {args.repeats} alternating "
        f"timings of {args.steps} steps each.",
        "",
        "| implementation | tokens/s | step time (ms) | model TFLOP/s | MFU | vs ESM |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    esm_rates = rates["transformers ESM (sdpa)"]
    for name, values in rates.items():
        rate = statistics.median(values)
        achieved = rate * flops.train_flops_per_token(cfgs[name], args.tokens)
        mfu = f"{achieved / peak:.1%}" if peak else "n/a"
        ratio = statistics.median(a / b for a, b in zip(values, esm_rates, strict=True))
        versus = "n/a" if name == native_name else f"{ratio:.3f}x"  # not the same model
        lines.append(
            f"| {name} | {rate:,.0f} | {batch * args.tokens / rate * 1e3:,.1f} | "
            f"{achieved / 1e12:.3f} | {mfu} | {versus} |"
        )
    ratios = [a / b for a, b in zip(rates[first], esm_rates, strict=True)]
    lines += [
        "",
        f"- {first} / transformers tokens/s: **{statistics.median(ratios):.3f}x** (median of "
        f"per-repeat ratios {', '.join(f'{r:.3f}' for r in ratios)})",
        "- Model FLOPs count the MLM head at every position, as for ESM; gfm_jax computes it "
        "at the 6-sigma bound only, so its MFU is that of the full-head model at its speed.",
        "",
    ]
    del timers, esm, measure  # `measure` still holds the last timer: ESM's
    release_device_memory()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--preset", default="", help="comma-separated presets for the sizes")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--batch", default="8", help="one per preset, comma-separated")
    parser.add_argument("--vocab", type=int, default=4107)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--scan", action="store_true", help="model.scan_layers for gfm_jax")
    parser.add_argument("--native", action="store_true", help="also the preset's own model")
    parser.add_argument("--holes", action="store_true", help="also a batch with padding holes")
    parser.add_argument("--write", default=None, help="Markdown file to put the table in")
    parser.add_argument("--kernels", default="auto", help="model.kernels, comma-separated")
    args = parser.parse_args()
    # As `python -m gfm_jax.train` does; it applies to the whole process, so to torch as well.
    retained = host_memory.retain_freed_memory()
    preset_list = args.preset.split(",") if args.preset else [None]
    batches = [int(b) for b in args.batch.split(",")]
    if len(batches) != len(preset_list):
        parser.error(f"--batch needs one value per preset: got {batches} for {preset_list}")

    backend = "gpu" if jax.default_backend() == "gpu" else "cpu"
    device = jax.devices()[0].device_kind
    where = f"{os.cpu_count()} cores" if backend == "cpu" else f"{jax.device_count()} device(s)"
    lines = [
        "## Train step: gfm_jax beside transformers' EsmForMaskedLM (`scripts/bench_train.py`"
        + (f", GPU: {args.preset or 'custom'})" if backend == "gpu" else ")"),
        "",
        f"Device: {device}, {where}, Python {platform.python_version()}, jax {jax.__version__}. "
        f"scan over layers: {args.scan}; MLM head at the masked "
        "positions (a 6-sigma bound, ESM computes every position); freed host memory kept in "
        f"the process for both: {retained} (gfm_jax/host_memory.py). MFU uses "
        f"{(flops.peak_flops(args.dtype) or 0) / 1e12:,.0f} TFLOP/s as the {args.dtype} peak "
        "(gfm_jax/train/flops.py; 0: the device is not in its table).",
        "",
    ]
    for preset, batch in zip(preset_list, batches, strict=True):
        lines += bench_shape(args, preset, batch)
    if backend == "cpu":
        lines.append(
            "GPU rows (nt_v2_50m and nt_v2_500m in bf16 at 1,024 tokens): the GPU section below."
        )
    publish("\n".join(lines).rstrip(), args.write, marker(backend, args.preset))


if __name__ == "__main__":
    main()
