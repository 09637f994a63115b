"""Sequence embeddings from a pretrained encoder, from any layer.

    python -m gfm_jax.evaluate embed --workdir runs/tiny --input genome.fa --out emb.npy
    python -m gfm_jax.evaluate embed --workdir runs/tiny --input task.csv --out emb.npy \
        --layers -1,-3 --pooling max --strand both

FASTA records are cut into consecutive windows of `--window` bases (default: the pretraining
window), one embedding each; a CSV gives one embedding per row of its sequence column.
Pooling: `cls` (default: the CLS token's state; it beat mean pooling in 3 of 4 comparisons on
the built-in tasks, docs/evaluation.md), `mean` or `max` over the sequence's tokens (CLS
excluded), or `none` (per-token states, [N, T, D], zero after each row's tokens). Layers:
0 is the token embeddings, i the output of block i, -1 (default) the final output (after the
final norm); `all` gives every one. One layer writes [N, D], several [N, K, D]. `--strand both`
averages each pooled embedding with its reverse complement's. Next to `emb.npy` (float32) goes
`emb.tsv`, naming each row's source, bases and tokens.
"""

from __future__ import annotations

import csv
import numbers
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gfm_jax import config as config_lib
from gfm_jax.data import builtin, fasta
from gfm_jax.data.tokenizers import Tokenizer
from gfm_jax.errors import UserError
from gfm_jax.evaluate import pretrained
from gfm_jax.models.encoder import Encoder
from gfm_jax.models.heads import pool

POOLINGS = ("mean", "cls", "max", "none")
STRANDS = config_lib.STRANDS
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

    `max_length` (> 0: a learned-position table's size) caps the padding, never the tokens.
    Per-token outputs ([B, ..., L, D], L the bucket's length) are zero-padded to the longest."""
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
    if not out:
        return np.zeros((0,), np.float32)
    if len({o.shape for o in out}) > 1:  # per-token: pad the token axis (-2) to the longest
        longest = max(o.shape[-2] for o in out)
        lead = [(0, 0)] * (out[0].ndim - 2)
        out = [np.pad(o, [*lead, (0, longest - o.shape[-2]), (0, 0)]) for o in out]
    return np.stack(out)


def layer_indices(spec: str | int | Sequence[int], num_layers: int) -> tuple[tuple[int, ...], bool]:
    """(indices into the encoder's num_layers + 1 states, whether one layer was asked for as
    such): `all`, "-1,-4", an int or a sequence of ints; 0 is the embeddings, -1 the output."""
    n = num_layers + 1
    single = isinstance(spec, numbers.Integral)
    if isinstance(spec, str):
        if spec.strip() == "all":
            return tuple(range(n)), False
        single = "," not in spec
        spec = [x for x in spec.split(",") if x.strip()]
    try:
        chosen = [int(x) for x in ([spec] if single and not isinstance(spec, list) else spec)]
    except (TypeError, ValueError):
        raise UserError(f"layers={spec!r}: give 'all' or integers such as -1,-4") from None
    if not chosen or any(not -n <= i < n for i in chosen):
        raise UserError(
            f"layers={chosen}: this encoder has layers 0 (embeddings) .. {num_layers} "
            f"(or -{n} .. -1); give 'all' or integers in that range"
        )
    return tuple(i % n for i in chosen), single and len(chosen) == 1


def make_embedder(
    loaded: pretrained.Loaded, pooling: str = "cls", layers: int | Sequence[int] | str = -1
):
    """`embed(batch, batch_size) -> [B, K, D]` float32 pooled states of the K `layers`
    ([B, K, L - 1, D] for pooling `none`: every token but CLS)."""
    if pooling not in POOLINGS:
        raise UserError(f"--pooling={pooling!r}: choose one of {POOLINGS}")
    config = loaded.pretrained.model_config
    chosen, _ = layer_indices(layers, config.num_layers)
    encoder = Encoder(config, loaded.mesh, loaded.rules)
    every = chosen != (config.num_layers,)  # the output alone needs no intermediate states

    @jax.jit
    def apply(params, batch):
        out = encoder.apply(
            {"params": params["encoder"]}, batch["ids"], batch["mask"], all_layers=every
        )
        states = out if every else {config.num_layers: out}
        tokens_BxL = batch["mask"].at[:, 0].set(False)  # the CLS token is not a base
        out = []
        for i in chosen:
            if pooling == "none":
                h = jnp.where(tokens_BxL[..., None], states[i].astype(jnp.float32), 0.0)
                out.append(h[:, 1:])
            else:
                out.append(pool(states[i], tokens_BxL, pooling))
        return jnp.stack(out, axis=1)

    def embed(batch: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
        return pretrained.run_batched(apply, loaded, batch, batch_size)

    return embed


def embed_sequences(
    loaded: pretrained.Loaded,
    sequences: Sequence[str],
    names: Sequence[str],
    pooling: str = "cls",
    batch_size: int = 64,
    layers: int | Sequence[int] | str = -1,
    strand: str = "forward",
) -> np.ndarray:
    """[N, D] embeddings of one layer (an int, or a string naming one), [N, K, D] of a list
    or "all" (pooling none: a token axis before D). `strand="both"` averages each with its
    reverse complement's."""
    if strand not in STRANDS:
        raise UserError(f"--strand={strand!r}: choose one of {STRANDS}")
    if strand == "both" and pooling == "none":
        raise UserError(
            "--strand both averages pooled embeddings; per-token states (--pooling none) of "
            "the two strands do not line up token for token: choose a pooling or one strand"
        )
    tok = loaded.tokenizer
    _, single = layer_indices(layers, loaded.pretrained.model_config.num_layers)
    embedder = make_embedder(loaded, pooling, layers)
    limit = position_limit(loaded)
    encoded = encode(tok, sequences, names)
    emb = bucketed(encoded, embedder, batch_size, tok.pad_id, limit)
    if pooling == "none" and len(emb):  # bucket padding off: as many tokens as the longest
        emb = emb[..., : max(len(e) for e in encoded) - 1, :]
    if strand == "both":
        rc = [fasta.reverse_complement(s) for s in sequences]
        rc_names = [f"{n} (reverse complement)" for n in names]
        emb = (
            emb + bucketed(encode(tok, rc, rc_names), embedder, batch_size, tok.pad_id, limit)
        ) / 2
    return emb[:, 0] if single and len(emb) else emb


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


def run(
    workdir: str,
    input_path: str,
    out: str,
    pooling: str = "cls",
    window: int = 0,
    column: str = "sequence",
    layers: str = "-1",
    strand: str = "forward",
    **load_options: Any,
) -> dict:
    """`load_options`: pretrained.load's mesh_shape and model_overrides."""
    loaded = pretrained.load(workdir, **load_options)
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
    emb = embed_sequences(loaded, sequences, names, pooling, layers=layers, strand=strand)
    out_path = pathlib.Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(out_path, emb.astype(np.float32))
    index = out_path.with_suffix(".tsv")
    index.write_text(
        "row\tsource\tbases\ttokens\n"
        + "".join(
            f"{i}\t{n}\t{len(s)}\t{len(loaded.tokenizer.encode(s))}\n"
            for i, (n, s) in enumerate(zip(names, sequences, strict=True))
        )
    )
    return {
        "embeddings": str(out_path),
        "index": str(index),
        "shape": list(emb.shape),
        "pooling": pooling,
        "layers": list(layer_indices(layers, loaded.pretrained.model_config.num_layers)[0]),
        "strand": strand,
        "mostly_n": len(mostly_n),
    }
