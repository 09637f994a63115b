"""Rows as read -> a task's train / validation / test splits: labels parsed, duplicates removed.

Hygiene, the same for every source: exact duplicate sequences within the training rows are kept
once; test (and validation) rows whose sequence occurs in the training rows are dropped; each is
counted in `Task.notes`. Without a validation split, `task.val_fraction` of the training rows is
held out, chosen by `task.split_seed`: the split never depends on the training seed, so every
seed of a model, and every model, is selected and tested on the same rows.
"""

from __future__ import annotations

import dataclasses
import pathlib

import ml_collections
import numpy as np

from gfm_jax.data.task_readers import Raw
from gfm_jax.errors import UserError

KINDS = ("classification", "regression", "token_classification")


@dataclasses.dataclass(frozen=True)
class Split:
    sequences: tuple[str, ...]
    # classification: int32[N] (index into Task.label_names); regression: float32[N];
    # token_classification: object[N] of int32 arrays, one label per base.
    labels: np.ndarray
    rows: tuple[str, ...]  # where each example came from ("train.csv:17"), for error messages

    def __len__(self) -> int:
        return len(self.sequences)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    path: str
    kind: str
    label_names: tuple[str, ...]  # () for regression
    train: Split
    val: Split
    test: Split
    notes: tuple[str, ...]  # what was removed or changed, for the report

    @property
    def num_outputs(self) -> int:
        return 1 if self.kind == "regression" else len(self.label_names)


def parse_labels(kind: str, raw: Raw) -> tuple[np.ndarray, tuple[str, ...]]:
    """Label texts -> class indices (and the sorted class names), numbers, or per-base labels."""
    if kind == "classification":
        for text, row in zip(raw.labels, raw.rows, strict=True):
            if not text.strip():
                raise UserError(f"{row}: the label is empty; fill it in or remove the row")
        names = tuple(sorted(set(raw.labels)))
        index = {n: i for i, n in enumerate(names)}
        return np.array([index[x] for x in raw.labels], np.int32), names
    if kind == "regression":
        values = np.empty(len(raw.labels), np.float32)
        for i, (text, row) in enumerate(zip(raw.labels, raw.rows, strict=True)):
            try:
                values[i] = float(text)
            except ValueError:
                raise UserError(
                    f"{row}: label {text!r} is not a number (task.kind=regression)"
                ) from None
        return values, ()
    names = tuple(sorted(set("".join(raw.labels))))
    index = np.full(256, -1, np.int32)
    for i, n in enumerate(names):
        index[ord(n)] = i
    labels = np.empty(len(raw.labels), object)
    for i, (text, seq, row) in enumerate(zip(raw.labels, raw.sequences, raw.rows, strict=True)):
        if len(text) != len(seq) or not text.isascii():
            raise UserError(
                f"{row}: a token_classification label needs one ASCII letter per base "
                f"({len(seq)}), got {len(text)}"
            )
        labels[i] = index[np.frombuffer(text.encode(), np.uint8)]
    return labels, names


def _dedupe_train(
    idx: np.ndarray, seqs: list[str], labels: np.ndarray, kind: str, notes: list[str]
) -> np.ndarray:
    """Exact duplicates inside train: the first copy is kept (a second only reweights it)."""
    first: dict[str, int] = {}
    keep, conflicts = [], 0
    for i in idx:
        j = first.setdefault(seqs[i], i)
        if j == i:
            keep.append(i)
        elif kind != "token_classification" and labels[j] != labels[i]:
            conflicts += 1
    if len(keep) < len(idx):
        notes.append(
            f"removed {len(idx) - len(keep)} duplicate training rows"
            + (f" ({conflicts} with a different label than the kept copy)" if conflicts else "")
        )
    return np.array(keep, np.int64)


def _drop_leaked(
    idx: np.ndarray,
    seqs: list[str],
    seen: set[str],
    drop: bool,
    notes: list[str],
    name: str,
    where: str,
) -> np.ndarray:
    """`idx` without the rows whose sequence is in `seen` (when `drop`); noted either way."""
    leaked = np.array([seqs[i] in seen for i in idx], bool)
    if drop and leaked.any():
        notes.append(f"dropped {int(leaked.sum())} {name} rows whose sequence occurs in {where}")
        return idx[~leaked]
    if leaked.any():
        notes.append(f"kept {int(leaked.sum())} {name} rows whose sequence occurs in {where}")
    return idx


def _eval_rows(
    task: ml_collections.ConfigDict,
    seqs: list[str],
    splits: np.ndarray,
    train_idx: np.ndarray,
    notes: list[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) row indices once leaked rows are dropped and, without a validation
    split, validation rows are held out of train."""
    drop = bool(task.drop_test_duplicates)
    train_seqs = {seqs[i] for i in train_idx}
    test_idx = np.flatnonzero(splits == "test")
    test_idx = _drop_leaked(test_idx, seqs, train_seqs, drop, notes, "test", "train")
    val_idx = np.flatnonzero(splits == "val")
    if len(val_idx):
        val_idx = _drop_leaked(val_idx, seqs, train_seqs, drop, notes, "validation", "train")
        # A given validation split must not hold test sequences either: model selection would
        # see them. They leave the test side, as if seen in training.
        val_seqs = {seqs[i] for i in val_idx}
        test_idx = _drop_leaked(test_idx, seqs, val_seqs, drop, notes, "test", "validation")
        return train_idx, val_idx, test_idx
    shuffled = np.random.default_rng(int(task.split_seed)).permutation(train_idx)
    n_val = int(round(len(shuffled) * float(task.val_fraction)))
    if n_val < 1:
        raise UserError(f"task.val_fraction={task.val_fraction} leaves no validation rows")
    notes.append(f"validation: {n_val} training rows held out (task.split_seed={task.split_seed})")
    return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val]), test_idx


def make_task(task: ml_collections.ConfigDict, path: str | pathlib.Path, raw: Raw) -> Task:
    """The de-duplicated train / val / test splits of the rows read from `path`."""
    labels, label_names = parse_labels(task.kind, raw)
    seqs = raw.sequences
    splits = np.array(raw.splits)
    for name in ("train", "test"):
        if not (splits == name).any():
            raise UserError(f"{path}: no {name} rows; check task.path and the split settings")
    if task.kind == "classification" and len(label_names) < 2:
        raise UserError(f"{path}: one label only ({label_names}); a classifier needs two or more")

    notes: list[str] = []
    train_idx = _dedupe_train(np.flatnonzero(splits == "train"), seqs, labels, task.kind, notes)
    train_idx, val_idx, test_idx = _eval_rows(task, seqs, splits, train_idx, notes)
    for name, idx in (("train", train_idx), ("validation", val_idx), ("test", test_idx)):
        if not len(idx):
            raise UserError(
                f"{path}: no {name} rows are left after removing duplicates and leakage "
                f"({'; '.join(notes)}); check the split"
            )

    def make(idx: np.ndarray) -> Split:
        return Split(tuple(seqs[i] for i in idx), labels[idx], tuple(raw.rows[i] for i in idx))

    name = task.name or pathlib.Path(str(path)).stem
    return Task(
        name,
        str(path),
        task.kind,
        label_names,
        make(train_idx),
        make(val_idx),
        make(test_idx),
        tuple(notes),
    )
