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

Hygiene, the same for every source: exact duplicate sequences within the training rows are kept
once; test (and validation) rows whose sequence occurs in the training rows are dropped; each is
counted in `Task.notes`. Without a validation split, `task.val_fraction` of the training rows is
held out, chosen by `task.split_seed`: the split never depends on the training seed, so every
seed of a model, and every model, is selected and tested on the same rows.
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib

import ml_collections
import numpy as np

from gfm_jax.data import builtin, fasta
from gfm_jax.data.tokenizers import Tokenizer
from gfm_jax.errors import UserError

KINDS = ("classification", "regression", "token_classification")
FORMATS = ("csv", "csv_dir", "fasta_dir", "class_dirs", "tfds")
SPLIT_NAMES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
}
IGNORE = -1  # per-token label of CLS and padding


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


@dataclasses.dataclass
class _Raw:
    """Rows as read, before labels are parsed: split is 'train', 'val', 'test' or ''."""

    sequences: list[str] = dataclasses.field(default_factory=list)
    labels: list[str] = dataclasses.field(default_factory=list)
    splits: list[str] = dataclasses.field(default_factory=list)
    rows: list[str] = dataclasses.field(default_factory=list)

    def add(self, sequence: str, label: str, split: str, row: str) -> None:
        self.sequences.append(sequence.strip().upper())
        self.labels.append(label.strip())
        self.splits.append(split)
        self.rows.append(row)


# --- Readers, one per source format ------------------------------------------------------------


def _read_csv_file(path: pathlib.Path, task: ml_collections.ConfigDict, split: str, raw: _Raw):
    """Appends the rows of one CSV; `split` '' means: take it from a `split` column if any."""
    if not path.is_file():
        raise UserError(f"task file {str(path)!r} not found; set task.path in the task config")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if not columns:
        raise UserError(f"{path} is empty; a task CSV needs a header such as 'sequence,label'")
    for key, col in (
        ("task.sequence_column", task.sequence_column),
        ("task.label_column", task.label_column),
    ):
        if col not in columns:
            raise UserError(f"{path}: no column {col!r} (set by {key}); the columns are {columns}")
    if not rows:
        raise UserError(f"{path} has a header but no rows; add examples")
    for i, r in enumerate(rows):
        row_split = split
        if not row_split and "split" in columns:
            value = (r["split"] or "").strip().lower()
            if value not in SPLIT_NAMES:
                raise UserError(
                    f"{path}, data row {i + 1}: split {value!r}; use one of {sorted(SPLIT_NAMES)}"
                )
            row_split = SPLIT_NAMES[value]
        raw.add(
            r[task.sequence_column] or "",
            r[task.label_column] or "",
            row_split,
            f"{path.name}:{i + 1}",
        )


def _read_csv(task: ml_collections.ConfigDict) -> tuple[pathlib.Path, _Raw]:
    (path,) = builtin.resolve(task.path)
    raw = _Raw()
    _read_csv_file(path, task, "", raw)
    if tuple(task.test_rows):
        n = len(raw.sequences)
        split = [""] * n
        for name, key in (("train", "train_rows"), ("test", "test_rows")):
            start, end = (int(b) for b in task[key])
            if not 0 <= start < end <= n:
                raise UserError(
                    f"task.{key}={tuple(task[key])} is outside the {n} data rows of {path}"
                )
            for i in range(start, end):
                split[i] = name
        raw.splits = split
    elif not any(raw.splits):
        raise UserError(
            f"{path}: task.test_rows is empty and there is no 'split' column; give row ranges"
        )
    return path, raw


def _split_files(directory: pathlib.Path, suffixes: tuple[str, ...]) -> dict[str, pathlib.Path]:
    if not directory.is_dir():
        raise UserError(f"task directory {str(directory)!r} not found; set task.path")
    found = {}
    for stem, split in SPLIT_NAMES.items():
        for suffix in suffixes:
            path = directory / f"{stem}{suffix}"
            if path.is_file() and split not in found:
                found[split] = path
    for split in ("train", "test"):
        if split not in found:
            names = " or ".join(f"{split}{s}" for s in suffixes)
            raise UserError(f"{directory}: no {names}; see docs/evaluation.md for the layout")
    return found


def _read_csv_dir(task: ml_collections.ConfigDict) -> tuple[pathlib.Path, _Raw]:
    directory = pathlib.Path(task.path)
    raw = _Raw()
    for split, path in _split_files(directory, (".csv",)).items():
        _read_csv_file(path, task, split, raw)
    return directory, raw


def _read_fasta_dir(task: ml_collections.ConfigDict) -> tuple[pathlib.Path, _Raw]:
    directory = pathlib.Path(task.path)
    raw = _Raw()
    for split, path in _split_files(directory, (".fna", ".fa", ".fasta")).items():
        for i, record in enumerate(fasta.read_fasta(path)):
            name, bar, label = record.name.rpartition("|")
            if not bar:
                raise UserError(
                    f"{path}, record {i + 1} ({record.name!r}): the header must end in '|<label>'"
                )
            raw.add(record.sequence(), label, split, f"{path.name}:{name}")
    return directory, raw


def _read_class_dirs(task: ml_collections.ConfigDict) -> tuple[pathlib.Path, _Raw]:
    directory = pathlib.Path(task.path)
    raw = _Raw()
    for split in ("train", "test"):
        split_dir = directory / split
        classes = sorted(p for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []
        if not classes:
            raise UserError(
                f"{split_dir}: expected one folder per class holding .txt sequences "
                "(the Genomic Benchmarks layout, see docs/evaluation.md)"
            )
        for class_dir in classes:
            for path in sorted(class_dir.glob("*.txt")):
                raw.add(
                    path.read_text(), class_dir.name, split, f"{split}/{class_dir.name}/{path.name}"
                )
    return directory, raw


def _read_tfds(task: ml_collections.ConfigDict) -> tuple[str, _Raw]:
    import tensorflow_datasets as tfds

    from gfm_jax.data import tfds_datasets  # registers gfm_task/*

    def make_builder() -> tfds.core.DatasetBuilder:
        return tfds.builder(task.path, data_dir=task.tfds_data_dir or None)

    try:
        make_builder()
    except Exception as e:  # TFDS raises several types for unknown names
        raise UserError(f"task.path={task.path!r} is not a TFDS dataset here: {e}") from None
    builder = tfds_datasets.prepared(make_builder)
    label_feature = builder.info.features[task.label_column]
    names = getattr(label_feature, "names", None)
    raw = _Raw()
    for tfds_split, split in (("train", "train"), ("validation", "val"), ("test", "test")):
        if tfds_split not in builder.info.splits:
            continue
        ds = builder.as_dataset(split=tfds_split, shuffle_files=False)
        for i, ex in enumerate(ds.as_numpy_iterator()):
            label = ex[task.label_column]
            label = (
                names[int(label)]
                if names
                else (label.decode() if isinstance(label, bytes) else str(label))
            )
            raw.add(ex[task.sequence_column].decode(), label, split, f"{tfds_split}:{i}")
    return task.path, raw


READERS = {
    "csv": _read_csv,
    "csv_dir": _read_csv_dir,
    "fasta_dir": _read_fasta_dir,
    "class_dirs": _read_class_dirs,
    "tfds": _read_tfds,
}


# --- Labels, hygiene and splits --------------------------------------------------------------


def _parse_labels(kind: str, raw: _Raw) -> tuple[np.ndarray, tuple[str, ...]]:
    if kind == "classification":
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


def load_task(task: ml_collections.ConfigDict) -> Task:
    """Reads `task.path` in `task.format` and returns de-duplicated train / val / test splits."""
    if task.format not in READERS:
        raise UserError(f"task.format={task.format!r}: choose one of {FORMATS}")
    if task.kind not in KINDS:
        raise UserError(f"task.kind={task.kind!r}: choose one of {KINDS}")
    path, raw = READERS[task.format](task)
    labels, label_names = _parse_labels(task.kind, raw)
    seqs = raw.sequences
    splits = np.array(raw.splits)
    for name in ("train", "test"):
        if not (splits == name).any():
            raise UserError(f"{path}: no {name} rows; check task.path and the split settings")
    if task.kind == "classification" and len(label_names) < 2:
        raise UserError(f"{path}: one label only ({label_names}); a classifier needs two or more")

    notes = []
    train_idx = np.flatnonzero(splits == "train")
    # Exact duplicates inside train: keep the first (a second copy only reweights it).
    first: dict[str, int] = {}
    keep, conflicts = [], 0
    for i in train_idx:
        j = first.setdefault(seqs[i], i)
        if j == i:
            keep.append(i)
        elif task.kind != "token_classification" and labels[j] != labels[i]:
            conflicts += 1
    if len(keep) < len(train_idx):
        notes.append(
            f"removed {len(train_idx) - len(keep)} duplicate training rows"
            + (f" ({conflicts} with a different label than the kept copy)" if conflicts else "")
        )
    train_idx = np.array(keep, np.int64)
    train_seqs = {seqs[i] for i in train_idx}

    def drop_leaked(idx: np.ndarray, name: str, seen: set[str], where: str) -> np.ndarray:
        leaked = np.array([seqs[i] in seen for i in idx], bool)
        if task.drop_test_duplicates and leaked.any():
            notes.append(
                f"dropped {int(leaked.sum())} {name} rows whose sequence occurs in {where}"
            )
            return idx[~leaked]
        if leaked.any():
            notes.append(f"kept {int(leaked.sum())} {name} rows whose sequence occurs in {where}")
        return idx

    test_idx = drop_leaked(np.flatnonzero(splits == "test"), "test", train_seqs, "train")
    val_idx = np.flatnonzero(splits == "val")
    if len(val_idx):
        val_idx = drop_leaked(val_idx, "validation", train_seqs, "train")
        # A given validation split must not hold test sequences either: model selection would
        # see them. They leave the test side, as if seen in training.
        val_seqs = {seqs[i] for i in val_idx}
        test_idx = drop_leaked(test_idx, "test", val_seqs, "validation")
    else:
        shuffled = np.random.default_rng(int(task.split_seed)).permutation(train_idx)
        n_val = int(round(len(shuffled) * float(task.val_fraction)))
        if n_val < 1:
            raise UserError(f"task.val_fraction={task.val_fraction} leaves no validation rows")
        val_idx, train_idx = np.sort(shuffled[:n_val]), np.sort(shuffled[n_val:])
        notes.append(
            f"validation: {n_val} training rows held out (task.split_seed={task.split_seed})"
        )

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


# --- Model inputs ------------------------------------------------------------------------------


def check_token_tokenizer(tokenizer: Tokenizer) -> None:
    """Per-token labels are per base: only tokenizers with one token per base can carry them."""
    if tokenizer.name not in ("char", "char_rna"):
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
            raise UserError(f"{path}, {row}: {e}") from None
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
