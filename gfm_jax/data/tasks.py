"""Downstream sequence-classification tasks from CSV files (`sequence,label[,split]`).

Splits come from row ranges of the file or from a `split` column (train / test). Test rows whose
sequence also occurs in the training rows are dropped (reported), and a fixed fraction of the
training rows, chosen by the seed, is held out for model selection.
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib

import ml_collections
import numpy as np

from gfm_jax.data import builtin
from gfm_jax.data.tokenizers import Tokenizer
from gfm_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Split:
    sequences: tuple[str, ...]
    labels: np.ndarray  # int32[N], index into Task.label_names
    rows: np.ndarray  # int64[N], 0-based data-row numbers in the CSV

    def __len__(self) -> int:
        return len(self.sequences)


@dataclasses.dataclass(frozen=True)
class Task:
    path: str
    label_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    notes: tuple[str, ...]  # what was removed or changed, for the report


def _read_rows(path: pathlib.Path, seq_col: str, label_col: str) -> tuple[list[dict], list[str]]:
    if not path.is_file():
        raise UserError(f"task file {str(path)!r} not found; set task.csv in the task config")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if not columns:
        raise UserError(f"{path} is empty; a task CSV needs a header such as 'sequence,label'")
    for key, col in (("task.sequence_column", seq_col), ("task.label_column", label_col)):
        if col not in columns:
            raise UserError(f"{path}: no column {col!r} (set by {key}); the columns are {columns}")
    if not rows:
        raise UserError(f"{path} has a header but no rows; add examples")
    return rows, columns


def load_csv_task(task: ml_collections.ConfigDict, seed: int) -> Task:
    """Reads the CSV named by `task.csv` and splits it into train / val / test."""
    (path,) = builtin.resolve(task.csv)
    rows, columns = _read_rows(path, task.sequence_column, task.label_column)
    sequences = [r[task.sequence_column].strip().upper() for r in rows]
    raw_labels = [r[task.label_column].strip() for r in rows]
    label_names = tuple(sorted(set(raw_labels)))
    labels = np.array([label_names.index(x) for x in raw_labels], np.int32)

    if tuple(task.test_rows):
        train_idx = _row_range(path, "task.train_rows", task.train_rows, len(rows))
        test_idx = _row_range(path, "task.test_rows", task.test_rows, len(rows))
    elif "split" in columns:
        split_col = np.array([r["split"].strip().lower() for r in rows])
        train_idx, test_idx = (
            np.flatnonzero(split_col == "train"),
            np.flatnonzero(split_col == "test"),
        )
    else:
        raise UserError(
            f"{path}: task.test_rows is empty and there is no 'split' column; give row ranges"
        )

    notes = []
    if task.drop_test_duplicates:
        seen = {sequences[i] for i in train_idx}
        leaked = np.array([sequences[i] in seen for i in test_idx], bool)
        if leaked.any():
            notes.append(
                f"dropped {int(leaked.sum())} test rows whose sequence occurs in the training rows"
            )
        test_idx = test_idx[~leaked]

    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(train_idx)
    n_val = int(round(len(shuffled) * task.val_fraction))
    val_idx, train_idx = np.sort(shuffled[:n_val]), np.sort(shuffled[n_val:])

    def make(idx: np.ndarray) -> Split:
        return Split(tuple(sequences[i] for i in idx), labels[idx], idx.astype(np.int64))

    return Task(
        str(path), label_names, make(train_idx), make(val_idx), make(test_idx), tuple(notes)
    )


def _row_range(path: pathlib.Path, key: str, bounds: tuple, n_rows: int) -> np.ndarray:
    start, end = (int(b) for b in bounds)
    if not 0 <= start < end <= n_rows:
        raise UserError(f"{key}={tuple(bounds)} is outside the {n_rows} data rows of {path}")
    return np.arange(start, end)


def encode_split(tokenizer: Tokenizer, split: Split, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [N, L] padded with the pad id, and the padding mask [N, L] (True = token).

    Each sequence starts with the CLS token, as the pretraining windows do.
    """
    encoded = []
    for row, seq in zip(split.rows, split.sequences, strict=True):
        try:
            encoded.append(np.concatenate([[tokenizer.cls_id], tokenizer.encode(seq)]))
        except UserError as e:
            raise UserError(f"{path}, data row {int(row) + 1}: {e}") from None
    length = max((len(e) for e in encoded), default=1)
    ids = np.full((len(encoded), length), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(encoded), length), bool)
    for i, e in enumerate(encoded):
        ids[i, : len(e)], mask[i, : len(e)] = e, True
    return ids, mask
