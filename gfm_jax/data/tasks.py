"""Downstream tasks: read a labelled sequence set, de-duplicate it and split it reproducibly.

Sources (`task.format`), each documented with the public layout it reads in docs/evaluation.md:

- `csv`: one file `sequence,label[,split]`; splits from row ranges or the `split` column.
- `csv_dir`: a directory with `train.csv`, optional `dev.csv` / `val.csv`, and `test.csv` (GUE,
  the CSV exports of the Nucleotide Transformer tasks).
- `fasta_dir`: `train.fna` and `test.fna` whose headers end in `|<label>` (the Nucleotide
  Transformer downstream tasks on Hugging Face).
- `class_dirs`: `{train,test}/<class>/*.txt`, one sequence per file (Genomic Benchmarks).
- `tfds`: a TFDS dataset with `sequence` and `label` features and `train` / optional
  `validation` / `test` splits (e.g. `gfm_task/splice`).

Kinds (`task.kind`): `classification` (one label per sequence), `regression` (one number per
sequence), `token_classification` (one label letter per base: the label column holds a string as
long as the sequence).

Reading is in task_readers.py (files) and tfds_datasets.py (TFDS); cleaning and splitting, the
same for every source (duplicates, leakage, a validation split fixed by `task.split_seed`), in
task_splits.py. This module chooses the reader and turns splits into model inputs.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from gfm_jax.data import task_readers
from gfm_jax.data.task_readers import Raw
from gfm_jax.data.task_splits import KINDS, Split, Task, make_task
from gfm_jax.data.tokenizers import Tokenizer
from gfm_jax.errors import UserError

FORMATS = ("csv", "csv_dir", "fasta_dir", "class_dirs", "tfds")
IGNORE = -1  # per-token label of CLS and padding


def _read_tfds(task: ml_collections.ConfigDict) -> tuple[str, Raw]:
    # Imported on use: TFDS is slow to import and only this format needs it.
    from gfm_jax.data import tfds_datasets

    return tfds_datasets.read_task(task)


READERS = {
    "csv": task_readers.read_csv,
    "csv_dir": task_readers.read_csv_dir,
    "fasta_dir": task_readers.read_fasta_dir,
    "class_dirs": task_readers.read_class_dirs,
    "tfds": _read_tfds,
}


def load_task(task: ml_collections.ConfigDict) -> Task:
    """Reads `task.path` in `task.format` and returns de-duplicated train / val / test splits."""
    if task.format not in READERS:
        raise UserError(f"task.format={task.format!r}: choose one of {FORMATS}")
    if task.kind not in KINDS:
        raise UserError(f"task.kind={task.kind!r}: choose one of {KINDS}")
    path, raw = READERS[task.format](task)
    return make_task(task, path, raw)


# --- Model inputs ------------------------------------------------------------------------------


def check_token_tokenizer(tokenizer: Tokenizer) -> None:
    """Per-token labels are per base: only tokenizers with one token per base can carry them."""
    if tokenizer.scheme not in ("char", "char_rna"):
        raise UserError(
            f"task.kind=token_classification needs a one-token-per-base tokenizer (char, "
            f"char_rna); this model uses {tokenizer.name!r}"
        )


def encode_split(
    tokenizer: Tokenizer, split: Split, path: str, kind: str = "classification"
) -> dict[str, np.ndarray]:
    """ids [N, L] (pad-filled), mask [N, L] (True = token) and labels of one split.

    Each sequence starts with the CLS token, as the pretraining windows do. Per-token labels are
    [N, L] with IGNORE at CLS and padding.
    """
    encoded = []
    for row, seq in zip(split.rows, split.sequences, strict=True):
        try:
            encoded.append(np.concatenate([[tokenizer.cls_id], tokenizer.encode(seq)]))
        except UserError as e:
            raise UserError(f"{row} (of {path}): {e}; fix or remove the row") from None
    length = max((len(e) for e in encoded), default=1)
    ids = np.full((len(encoded), length), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(encoded), length), bool)
    for i, e in enumerate(encoded):
        ids[i, : len(e)], mask[i, : len(e)] = e, True
    labels = split.labels
    if kind == "token_classification":
        check_token_tokenizer(tokenizer)
        labels = np.full((len(encoded), length), IGNORE, np.int32)
        for i, per_base in enumerate(split.labels):
            labels[i, 1 : 1 + len(per_base)] = per_base
    return {"ids": ids, "mask": mask, "labels": labels}


def pad_to_one_length(splits: dict[str, dict[str, np.ndarray]], pad_id: int) -> dict[str, dict]:
    """Pads every split's [N, L] arrays to the longest L: one compiled shape for all splits."""
    length = max(d["ids"].shape[1] for d in splits.values())
    fill = {"ids": pad_id, "mask": False, "labels": IGNORE}
    out = {}
    for name, d in splits.items():
        extra = length - d["ids"].shape[1]
        out[name] = {
            k: np.pad(v, ((0, 0), (0, extra)), constant_values=fill[k]) if v.ndim == 2 else v
            for k, v in d.items()
        }
    return out
