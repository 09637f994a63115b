"""Sequence embeddings from a pretrained encoder: masked mean pooling (default) or the CLS token.

    python -m gfm_jax.evaluate embed --workdir runs/tiny --input genome.fa --out emb.npy
    python -m gfm_jax.evaluate embed --workdir runs/tiny --input task.csv --out emb.npy

FASTA records are cut into consecutive windows of `--window` bases (default: the pretraining
window), one embedding each; a CSV gives one embedding per row of its sequence column. Next to
`emb.npy` ([N, D] float32) goes `emb.tsv`, naming each row's source.
"""

from __future__ import annotations

import csv
import pathlib
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gfm_jax.data import builtin, fasta
from gfm_jax.data.tokenizers import Tokenizer
from gfm_jax.errors import UserError
from gfm_jax.evaluate import pretrained
from gfm_jax.models.encoder import Encoder
from gfm_jax.models.heads import masked_mean

POOLINGS = ("mean", "cls")
LENGTH_BUCKET = 32  # pad token lengths up to a multiple of this: few shapes, few compiles


def encode(
    tokenizer: Tokenizer, sequences: Sequence[str], names: Sequence[str]
) -> list[np.ndarray]:
    """CLS + token ids per sequence; a letter the tokenizer cannot take names its sequence."""
    out = []
    for name, seq in zip(names, sequences, strict=True):
        try:
            out.append(np.concatenate([[tokenizer.cls_id], tokenizer.encode(seq)]).astype(np.int32))
        except UserError as e:
            raise UserError(f"{name}: {e}") from None
    return out


def pad(encoded: Sequence[np.ndarray], pad_id: int, length: int) -> dict[str, np.ndarray]:
    ids = np.full((len(encoded), length), pad_id, np.int32)
    mask = np.zeros((len(encoded), length), bool)
    for i, e in enumerate(encoded):
        ids[i, : len(e)], mask[i, : len(e)] = e, True
    return {"ids": ids, "mask": mask}


def bucketed(
    encoded: Sequence[np.ndarray], fn, batch_size: int, pad_id: int, max_length: int = 0
) -> np.ndarray:
    """Runs `fn(batch) -> [B, ...]` over length buckets; returns outputs in input order.

    `max_length` (> 0: a learned-position table's size) caps the padding, never the tokens."""
    lengths = np.array([len(e) for e in encoded])
    padded_len = -(-lengths // LENGTH_BUCKET) * LENGTH_BUCKET
    if max_length > 0:
        padded_len = np.maximum(np.minimum(padded_len, max_length), lengths)
    out: list = [None] * len(encoded)
    for length in np.unique(padded_len):
        idx = np.flatnonzero(padded_len == length)
        result = fn(pad([encoded[i] for i in idx], pad_id, int(length)), batch_size)
        for j, i in enumerate(idx):
            out[i] = result[j]
    return np.stack(out) if out else np.zeros((0,), np.float32)


def make_embedder(loaded: pretrained.Loaded, pooling: str = "mean"):
    """`embed(batch, batch_size) -> [B, D]` float32 pooled encoder outputs."""
    if pooling not in POOLINGS:
        raise UserError(f"--pooling={pooling!r}: choose one of {POOLINGS}")
    encoder = Encoder(loaded.pretrained.model_config, loaded.mesh, loaded.rules)

    @jax.jit
    def apply(params, batch):
        h = encoder.apply({"params": params["encoder"]}, batch["ids"], batch["mask"])
        if pooling == "cls":
            return h[:, 0].astype(jnp.float32)
        # The CLS token is not a base: pool over the sequence's own tokens.
        return masked_mean(h, batch["mask"].at[:, 0].set(False))

    def embed(batch: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
        return pretrained.run_batched(apply, loaded, batch, batch_size)

    return embed


def embed_sequences(
    loaded: pretrained.Loaded,
    sequences: Sequence[str],
    names: Sequence[str],
    pooling: str = "mean",
    batch_size: int = 64,
) -> np.ndarray:
    tok = loaded.tokenizer
    encoded = encode(tok, sequences, names)
    embedder = make_embedder(loaded, pooling)
    return bucketed(encoded, embedder, batch_size, tok.pad_id, position_limit(loaded))


def position_limit(loaded: pretrained.Loaded) -> int:
    """The longest input a learned-position model takes (0: no limit)."""
    c = loaded.pretrained.model_config
    return int(c.max_positions) if c.position == "learned" else 0


def read_inputs(path: str, window: int, column: str = "sequence") -> tuple[list[str], list[str]]:
    """(sequences, names) from a FASTA (windows of `window` bases) or a CSV (one per row)."""
    (p,) = builtin.resolve(path)
    if not p.is_file():
        raise UserError(f"--input {path!r} not found")
    if p.suffix == ".csv":
        with open(p, newline="") as f:
            reader = csv.DictReader(f)
            if column not in (reader.fieldnames or []):
                raise UserError(
                    f"{p}: no column {column!r}; the columns are {reader.fieldnames} "
                    "(choose one with --column)"
                )
            rows = list(reader)
        if not rows:
            raise UserError(f"{p} has no rows to embed")
        return [r[column].strip().upper() for r in rows], [
            f"{p.name}:{i + 1}" for i in range(len(rows))
        ]
    sequences, names = [], []
    for record in fasta.read_fasta(p):
        text = record.sequence().upper()
        for start in range(0, len(text), window):
            sequences.append(text[start : start + window])
            names.append(f"{record.name}:{start}-{min(start + window, len(text))}")
    if not sequences:
        raise UserError(f"{p}: no sequences to embed")
    return sequences, names


def run(workdir: str, input_path: str, out: str, pooling: str, window: int, column: str) -> dict:
    loaded = pretrained.load(workdir)
    if window <= 0:
        window, _ = pretrained.window(loaded)
    sequences, names = read_inputs(input_path, window, column)
    mostly_n = [n for n, s in zip(names, sequences, strict=True) if s.count("N") > len(s) / 2]
    if mostly_n:
        print(
            f"warning: {len(mostly_n)} of {len(sequences)} inputs are more than half N (first: "
            f"{mostly_n[0]}); their embeddings carry little but the N token",
            file=sys.stderr,
        )
    emb = embed_sequences(loaded, sequences, names, pooling)
    out_path = pathlib.Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(out_path, emb.astype(np.float32))
    index = out_path.with_suffix(".tsv")
    index.write_text(
        "row\tsource\tbases\n"
        + "".join(
            f"{i}\t{n}\t{len(s)}\n" for i, (n, s) in enumerate(zip(names, sequences, strict=True))
        )
    )
    return {
        "embeddings": str(out_path),
        "index": str(index),
        "shape": list(emb.shape),
        "pooling": pooling,
        "mostly_n": len(mostly_n),
    }
