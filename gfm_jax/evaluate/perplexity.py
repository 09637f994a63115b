"""Held-out masked-LM loss, accuracy, perplexity and bits per base of FASTA files.

    python -m gfm_jax.evaluate perplexity --workdir runs/tiny --fasta held_out.fa.gz \
        [--out perplexity.json]

Every record is cut into consecutive, non-overlapping windows of the pretraining window length
(the last partial window of a record is left out, as are windows with more N than
`data.max_n_fraction`). Each window gets CLS and the pretraining masking, drawn from a fixed
seed and the window's index, so two checkpoints are scored on exactly the same masked tokens.
The unigram (base-composition) entropy of those targets is reported beside the loss.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
import tensorflow as tf

from gfm_jax import sharding
from gfm_jax.data import builtin, fasta, windows
from gfm_jax.data.masking import mask_tokens
from gfm_jax.data.masking_spec import MaskingSpec
from gfm_jax.data.pipeline import EVAL_SEED
from gfm_jax.errors import UserError
from gfm_jax.evaluate import pretrained
from gfm_jax.models.heads import MaskedLM
from gfm_jax.train import step as step_lib
from gfm_jax.train.lm_metrics import summarize, unigram_baseline


def tile_windows(paths: list[str], window: int, max_n_fraction: float) -> tuple[np.ndarray, dict]:
    """uint8 base codes [N, window] of every full window, and what was left out."""
    kept, counts = [], {"records": 0, "windows": 0, "too_many_n": 0, "tail_bases": 0}
    n_code = fasta.BASES.index("N")
    for spec in paths:
        (path,) = builtin.resolve(spec)
        if not path.is_file():
            raise UserError(f"--fasta {spec!r} not found")
        for record in fasta.read_fasta(path):
            counts["records"] += 1
            full = len(record) // window
            counts["tail_bases"] += len(record) - full * window
            if full == 0:
                continue
            w = record.codes[: full * window].reshape(full, window)
            n_frac = np.mean((w & ~np.uint8(fasta.SOFT_MASK_BIT)) == n_code, axis=1)
            ok = n_frac <= max_n_fraction
            counts["too_many_n"] += int((~ok).sum())
            kept.append(w[ok])
    codes = np.concatenate(kept) if kept else np.zeros((0, window), np.uint8)
    counts["windows"] = len(codes)
    if not len(codes) and counts["too_many_n"]:
        raise UserError(
            f"{paths}: all {counts['too_many_n']} full {window}-base windows have more than "
            f"{max_n_fraction:.0%} N (the checkpoint's data.max_n_fraction); give sequence "
            "that is not N"
        )
    if not len(codes):
        raise UserError(f"{paths}: no full {window}-base window to score; give longer records")
    return codes, counts


TOKENS_PER_BATCH = 1 << 16


def run(
    workdir: str,
    fasta_paths: list[str],
    batch_size: int = 32,
    window: int = 0,
    **load_options: Any,
) -> dict:
    """Masked-LM loss over tiled windows of `window` bases (0: the pretraining window).
    `load_options`: pretrained.load's mesh_shape and model_overrides."""
    t0 = time.perf_counter()
    loaded = pretrained.load(workdir, **load_options)
    meta = loaded.pretrained.meta
    data = meta["config"]["data"]
    if meta["config"]["train"].get("objective", "mlm") != "mlm":
        raise UserError(
            f"{workdir} holds a causal model; perplexity mode scores masked-LM checkpoints"
        )
    tok = loaded.tokenizer
    if window > 0:
        num_tokens = tok.num_tokens(window)
    else:
        window, num_tokens = pretrained.window(loaded)
    codes, counts = tile_windows(fasta_paths, window, float(data["max_n_fraction"]))

    spec = MaskingSpec(
        data["mask_rate"],
        data["mask_token_fraction"],
        data["random_token_fraction"],
        int(data["mask_span"]) or tok.default_mask_span,
    )
    ids = tok.ids_from_codes(tf.constant(codes))[:, :num_tokens]
    ids = tf.concat([tf.fill([len(codes), 1], tf.cast(tok.cls_id, ids.dtype)), ids], axis=1)
    keys = windows.window_keys(EVAL_SEED, tf.range(len(codes), dtype=tf.int64))
    masked = {
        k: v.numpy()
        for k, v in mask_tokens(ids, keys, spec, mask_id=tok.mask_id, maskable=tok.maskable).items()
    }

    model = MaskedLM(loaded.pretrained.model_config, loaded.mesh, loaded.rules)
    objective = jax.jit(step_lib.mlm_objective(model, tok.pad_id))
    totals: dict[str, float] = {}
    # Rows per batch: no more than there are windows, nor than TOKENS_PER_BATCH tokens (long
    # windows), rounded up to what the mesh's batch axes divide.
    multiple = pretrained.batch_multiple(loaded.mesh)
    rows = min(batch_size, len(codes), max(1, TOKENS_PER_BATCH // (num_tokens + 1)))
    step = -(-rows // multiple) * multiple
    for first in range(0, len(codes), step):
        rows = np.arange(first, min(first + step, len(codes)))
        weights = np.zeros(step, np.float32)
        weights[: len(rows)] = 1.0
        rows = np.concatenate([rows, np.zeros(step - len(rows), rows.dtype)])
        batch = {k: v[rows] for k, v in masked.items()}
        batch["weights"] = batch["weights"] * weights[:, None]  # padding rows count nothing
        batch = jax.device_put(batch, sharding.batch_sharding(loaded.mesh, loaded.rules))
        sums = jax.device_get(objective(loaded.params, batch))
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    values = summarize(totals, tok.bases_per_token)
    values.update(unigram_baseline(masked["targets"], masked["weights"]))
    return {
        "mode": "perplexity",
        "workdir": str(workdir),
        "checkpoint_step": loaded.pretrained.step,
        "tokenizer": tok.name,
        "fasta": [str(p) for p in fasta_paths],
        "window_bases": window,
        **counts,
        "masked_tokens": int(totals["weight_sum"]),
        **values,
        "seconds": time.perf_counter() - t0,
    }
