"""Train-step speed of gfm_jax beside Hugging Face transformers' EsmForMaskedLM (PyTorch).

    pip install -e '.[bench]'   # torch and transformers: never core dependencies
    python scripts/bench_train.py [--repeats 5] [--write docs/benchmarks.md]

Both models have the same shape (an NT-like encoder: rotary positions, plain GELU FFN with
biases, tied MLM decoder), the same batch of token ids with 15% of positions as MLM targets,
and AdamW. ESM runs with attention "sdpa". The two are timed alternately, `--steps` steps per
timing, `--repeats` times; the table gives medians and the median of the per-repeat ratios.
Model FLOPs per token come from gfm_jax/train/flops.py for both (same shape, same work).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from bench_data import jax_step_rate  # noqa: E402
from benchmarks_md import publish  # noqa: E402

from gfm_jax import host_memory  # noqa: E402
from gfm_jax.models.encoder import EncoderConfig  # noqa: E402
from gfm_jax.train import flops  # noqa: E402

MARK = "<!-- bench_train -->"


def esm_step_rate(cfg: EncoderConfig, tokens: int, batch: int, steps: int):
    """A function measuring (None, tokens/s) of EsmForMaskedLM forward + backward + AdamW."""
    import torch
    from transformers import EsmConfig, EsmForMaskedLM

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
    model = EsmForMaskedLM(esm_cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    rng = np.random.default_rng(0)
    inputs = torch.from_numpy(rng.integers(5, cfg.vocab_size, (batch, tokens)))
    labels = torch.from_numpy(rng.integers(5, cfg.vocab_size, (batch, tokens)))
    labels[torch.from_numpy(rng.random((batch, tokens)) >= 0.15)] = -100  # 15% are targets
    attention = torch.ones_like(inputs)

    def one_step() -> None:
        loss = model(input_ids=inputs, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    one_step()  # warm-up
    num_params = sum(p.numel() for p in model.parameters())

    def measure() -> tuple[None, float]:
        start = time.perf_counter()
        for _ in range(steps):
            one_step()
        return None, batch * tokens * steps / (time.perf_counter() - start)

    return measure, num_params, f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=4107)
    parser.add_argument("--write", default=None, help="Markdown file to put the table in")
    parser.add_argument("--attention", default="auto", help="model.attention for gfm_jax")
    parser.add_argument("--matmul", default="auto", help="model.matmul for gfm_jax")
    args = parser.parse_args()
    # As `python -m gfm_jax.train` does; it applies to the whole process, so to torch as well.
    retained = host_memory.retain_freed_memory()

    cfg = EncoderConfig(
        vocab_size=args.vocab,
        num_layers=args.layers,
        hidden_size=args.hidden,
        num_heads=args.heads,
        mlp_dim=args.ffn,
        activation="gelu",
        use_bias_mlp=True,
        tie_embeddings=True,
        norm_eps=1e-5,
        attention=args.attention,
        matmul=args.matmul,
    )
    ours = jax_step_rate(cfg, args.tokens, args.batch, args.steps)
    theirs, esm_params, torch_desc = esm_step_rate(cfg, args.tokens, args.batch, args.steps)
    rates: dict[str, list[float]] = {"gfm_jax": [], "transformers ESM": []}
    for _ in range(args.repeats):  # alternate, so machine-speed swings hit both alike
        rates["gfm_jax"].append(ours()[1])
        rates["transformers ESM"].append(theirs()[1])
    ratios = [a / b for a, b in zip(rates["gfm_jax"], rates["transformers ESM"], strict=True)]
    per_token = flops.train_flops_per_token(cfg, args.tokens)

    shape = (
        f"{args.layers} layers, hidden {args.hidden}, {args.heads} heads, FFN {args.ffn} (GELU), "
        f"vocab {args.vocab:,}, {args.tokens} tokens x batch {args.batch}, float32"
    )
    lines = [
        "## Train step: gfm_jax beside transformers' EsmForMaskedLM (`scripts/bench_train.py`)",
        "",
        f"Device: {jax.devices()[0].device_kind}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, jax {jax.__version__}, {torch_desc}. Shape: {shape}; "
        f"ESM has {esm_params:,} parameters. Medians of {args.repeats} alternating timings of "
        f"{args.steps} steps each. gfm_jax attention: {args.attention}, matmul: "
        f"{args.matmul}; MLM head at the masked "
        f"positions (a 6-sigma bound, ESM computes every position); freed host memory kept in "
        f"the process for both: {retained} (gfm_jax/host_memory.py).",
        "",
        "| implementation | tokens/s | step time (ms) | model TFLOP/s achieved |",
        "| --- | --- | --- | --- |",
    ]
    for name, values in rates.items():
        rate = statistics.median(values)
        step_ms = args.batch * args.tokens / rate * 1e3
        lines.append(f"| {name} | {rate:,.0f} | {step_ms:,.0f} | {rate * per_token / 1e12:.3f} |")
    lines += [
        "",
        f"- gfm_jax / transformers tokens/s: **{statistics.median(ratios):.2f}x** (median of "
        f"per-repeat ratios {', '.join(f'{r:.2f}' for r in ratios)}; target >= 1.0x)",
        "- GPU rows (nt_v2_50m and nt_v2_500m in bf16 at 1,024 tokens, MFU): not measured, no "
        "GPU was lent to this work.",
    ]
    table = "\n".join(lines)
    publish(table, args.write, MARK)


if __name__ == "__main__":
    main()
