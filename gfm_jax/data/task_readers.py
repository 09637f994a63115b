"""Readers of labelled sequence files, one per source format (see tasks.py for the formats).

Each returns where it read from and the rows as read (`Raw`): sequence, label text, split and
row name, before labels are parsed or the splits are cleaned (task_splits.py).
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib

import ml_collections

from gfm_jax.data import builtin, fasta
from gfm_jax.errors import UserError

SPLIT_NAMES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
}


@dataclasses.dataclass
class Raw:
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


def _read_csv_file(path: pathlib.Path, task: ml_collections.ConfigDict, split: str, raw: Raw):
    """Appends the rows of one CSV; `split` '' means: take it from a `split` column if any."""
    if not path.is_file():
        raise UserError(f"task file {str(path)!r} not found; set task.path in the task config")
    rows, lines = [], []  # each row, and the file line it starts on (the header is line 1)
    with open(path, newline="") as f:
        reader = csv.DictReader(f, strict=True)
        try:
            columns = list(reader.fieldnames or [])
            start = reader.line_num + 1
            for r in reader:
                rows.append(r)
                lines.append(start)
                start = reader.line_num + 1
        except csv.Error as e:
            raise UserError(
                f"{path}:{start}: {e} (a quote opened there is not closed?); fix the CSV"
            ) from None
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
    for r, line in zip(rows, lines, strict=True):
        row_split = split
        if not row_split and "split" in columns:
            value = (r["split"] or "").strip().lower()
            if value not in SPLIT_NAMES:
                raise UserError(f"{path}:{line}: split {value!r}; use one of {sorted(SPLIT_NAMES)}")
            row_split = SPLIT_NAMES[value]
        raw.add(
            r[task.sequence_column] or "",
            r[task.label_column] or "",
            row_split,
            f"{path.name}:{line}",
        )


def read_csv(task: ml_collections.ConfigDict) -> tuple[pathlib.Path, Raw]:
    (path,) = builtin.resolve(task.path)
    raw = Raw()
    _read_csv_file(path, task, "", raw)
    if tuple(task.test_rows):
        n = len(raw.sequences)
        split = [""] * n
        for name, key in (("train", "train_rows"), ("test", "test_rows")):
            bounds = tuple(task[key])
            if len(bounds) != 2 or not all(isinstance(b, int) for b in bounds):
                raise UserError(f"task.{key}={bounds}: give (start, end), e.g. (0, 2000)")
            start, end = bounds
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


def read_csv_dir(task: ml_collections.ConfigDict) -> tuple[pathlib.Path, Raw]:
    directory = pathlib.Path(task.path)
    raw = Raw()
    for split, path in _split_files(directory, (".csv",)).items():
        _read_csv_file(path, task, split, raw)
    return directory, raw


def read_fasta_dir(task: ml_collections.ConfigDict) -> tuple[pathlib.Path, Raw]:
    directory = pathlib.Path(task.path)
    raw = Raw()
    for split, path in _split_files(directory, (".fna", ".fa", ".fasta")).items():
        for i, record in enumerate(fasta.read_fasta(path)):
            name, bar, label = record.name.rpartition("|")
            if not bar:
                raise UserError(
                    f"{path}, record {i + 1} ({record.name!r}): the header must end in '|<label>'"
                )
            raw.add(record.sequence(), label, split, f"{path.name}:{name}")
    return directory, raw


def read_class_dirs(task: ml_collections.ConfigDict) -> tuple[pathlib.Path, Raw]:
    directory = pathlib.Path(task.path)
    raw = Raw()
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
