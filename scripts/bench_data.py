"""Input-pipeline and tokenizer throughput, beside what the train step consumes.

    python scripts/bench_data.py [--repeats 3] [--write docs/benchmarks.md]

Measured side by side in one run (alternating, medians): the tf.data pipeline for the char and
NT 6-mer tokenizers on the built-in genomes, the train step of the `tiny` preset (char tokens,
its quickstart shape) and of `nt_v2_50m` (6-mer tokens), and NT 6-mer tokenization of the whole
built-in corpus by gfm_jax, by the Hugging Face `tokenizers` library and by a plain Python loop,
after checking all three give the same ids.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import re
import statistics
import tempfile
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
from bench_step import jax_step_rate  # noqa: E402
from benchmarks_md import publish  # noqa: E402

from gfm_jax import config as config_lib  # noqa: E402
from gfm_jax.data import fasta  # noqa: E402
from gfm_jax.data.corpus import load_corpus  # noqa: E402
from gfm_jax.data.pipeline import WindowPipeline, hide_gpus_from_tensorflow  # noqa: E402
from gfm_jax.data.tokenizers import get_tokenizer  # noqa: E402
from gfm_jax.models import presets  # noqa: E402
from gfm_jax.models.encoder import EncoderConfig  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
MARK = "<!-- bench_data -->"


def pipeline_rate(corpus, tokenizer: str, window_len: int, batch: int, steps: int):
    """A function measuring (windows/s, tokens/s) of the training dataset, iterated to numpy."""
    config = config_lib.pretrain_defaults()
    config.data.tokenizer, config.data.window_len = tokenizer, window_len
    pipe = WindowPipeline(corpus, get_tokenizer(tokenizer), config.data, seed=0)
    calls = iter(range(10**6))

    def measure() -> tuple[float, float]:
        first_step = next(calls) * (steps + 2)  # fresh windows each time
        ds = pipe.dataset(
            "train", global_batch=batch, first_step=first_step, last_step=first_step + steps + 2
        )
        it = ds.as_numpy_iterator()
        tokens = next(it)["inputs"].shape[1]  # warm-up: graph tracing, prefetch start
        next(it)
        start = time.perf_counter()
        for _ in range(steps):
            next(it)
        seconds = time.perf_counter() - start
        return batch * steps / seconds, batch * tokens * steps / seconds

    return measure


def train_step_rate(preset: str, tokenizer: str, tokens: int, batch: int, steps: int):
    """A function measuring the tokens/s the MLM train step of a preset consumes."""
    tok = get_tokenizer(tokenizer)
    model_cfg = EncoderConfig.from_config(presets.get(preset), tok.vocab_size, mask_id=tok.mask_id)
    return jax_step_rate(model_cfg, tokens, batch, steps)


def python_loop_nt6(sequence: str, vocab: dict[str, int]) -> list[int]:
    """The NT 6-mer rules written as a plain loop (the reference the others must match)."""
    ids = []
    for piece in re.split("(N)", sequence):
        if piece == "N":
            ids.append(vocab["N"])
            continue
        full = len(piece) - len(piece) % 6
        ids.extend(vocab[piece[i : i + 6]] for i in range(0, full, 6))
        ids.extend(vocab[b] for b in piece[full:])
    return ids


def hf_nt6(vocab: dict[str, int]):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # Greedy left-to-right: a 6-mer of ACGT where one fits, else one base: the NT rules.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[ACGT]{6}|[ACGTN]"), behavior="isolated")
    return tok


def corpus_load_times(repeats: int) -> tuple[float, float]:
    """Median seconds to load the built-in corpus by parsing FASTA and from the genome cache."""
    with tempfile.TemporaryDirectory() as cache:
        load_corpus(["builtin"], cache_dir=cache)  # writes the cache
        times: dict[str, list[float]] = {"parse": [], "cached": []}
        for _ in range(repeats):
            for name, directory in (("parse", ""), ("cached", cache)):
                start = time.perf_counter()
                load_corpus(["builtin"], cache_dir=directory)
                times[name].append(time.perf_counter() - start)
    return statistics.median(times["parse"]), statistics.median(times["cached"])


def median_rate(fn, work: float, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return work / statistics.median(times)


def main() -> None:
    hide_gpus_from_tensorflow()  # an entry point: tf.data on the host CPU only
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--write", default=None, help="Markdown file whose bench_data section to replace"
    )
    args = parser.parse_args()
    corpus = load_corpus(["builtin"])

    measures = {
        "pipeline char, 128-base windows, batch 64": pipeline_rate(corpus, "char", 128, 64, 30),
        "pipeline nt6, 6,144-base windows, batch 64": pipeline_rate(corpus, "nt6", 6144, 64, 10),
        "train step tiny (char, 129 tokens, batch 64)": train_step_rate("tiny", "char", 129, 64, 3),
        "train step nt_v2_50m (nt6, 1,025 tokens, batch 2)": train_step_rate(
            "nt_v2_50m", "nt6", 1025, 2, 1
        ),
    }
    rows: dict[str, list] = {}
    # Alternate the measurements so machine-speed swings hit all of them alike.
    for _ in range(args.repeats):
        for name, measure in measures.items():
            rows.setdefault(name, []).append(measure())

    def med(name: str, i: int) -> float:
        return statistics.median(r[i] for r in rows[name])

    text = fasta.decode_codes(corpus.codes).upper()
    nt = get_tokenizer("nt6")
    vocab = {t: i for i, t in enumerate(nt.vocab)}
    reference = python_loop_nt6(text, vocab)
    assert nt.encode(text).tolist() == reference
    hf = hf_nt6(vocab)
    assert hf.encode(text).ids == reference
    candidates = {
        "gfm_jax nt6 (numpy, vectorised)": lambda: nt.encode(text),
        "Hugging Face tokenizers (Rust, WordLevel + Split regex)": lambda: hf.encode(text),
        "plain Python loop": lambda: python_loop_nt6(text, vocab),
    }
    tok_rows = [(name, median_rate(fn, len(text), args.repeats)) for name, fn in candidates.items()]

    tiny_need = med("train step tiny (char, 129 tokens, batch 64)", 1)
    nt_need = med("train step nt_v2_50m (nt6, 1,025 tokens, batch 2)", 1)
    char_tokens = med("pipeline char, 128-base windows, batch 64", 1)
    nt6_tokens = med("pipeline nt6, 6,144-base windows, batch 64", 1)
    lines = [
        "## Input pipeline and tokenizers (`scripts/bench_data.py`)",
        "",
        f"Device: {jax.devices()[0].device_kind} x {jax.device_count()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, jax {jax.__version__}; medians of {args.repeats} "
        "alternating runs, one process.",
        "",
        "| what | windows/s | tokens/s |",
        "| --- | --- | --- |",
    ]
    for name in rows:
        w = "" if rows[name][0][0] is None else f"{med(name, 0):,.0f}"
        lines.append(f"| {name} | {w} | {med(name, 1):,.0f} |")
    lines += [
        "",
        f"- char pipeline / tiny train step: **{char_tokens / tiny_need:.1f}x** (target >= 10x)",
        f"- nt6 pipeline / nt_v2_50m train step: **{nt6_tokens / nt_need:.1f}x** (target >= 50x)",
        "",
        f"NT 6-mer tokenization of the built-in corpus ({len(text):,} bases; identical ids):",
        "",
        "| tokenizer | bases/s |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {rate:,.0f} |" for name, rate in tok_rows]
    parse_s, cached_s = corpus_load_times(args.repeats)
    lines += [
        "",
        f"Loading the built-in corpus ({corpus.codes.size:,} bases, 4 gzip FASTA files): parsing "
        f"{parse_s * 1e3:.0f} ms, from the encoded cache {cached_s * 1e3:.0f} ms "
        f"({parse_s / cached_s:.1f}x).",
    ]
    table = "\n".join(lines)
    publish(table, args.write, MARK)


if __name__ == "__main__":
    main()
