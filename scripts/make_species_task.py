"""Builds the built-in "species of origin" task, gfm_jax/data/builtin_files/species.csv.

    python scripts/make_species_task.py [--out gfm_jax/data/builtin_files/species.csv]

Each row is a 200-base window of one of the four built-in genomes (lambda phage, yeast chrI, the
A. thaliana chloroplast, human chr17:1-40000); the label names the genome. Windows tile each
genome without overlap (start 0, step 200), are uppercased (human is soft-masked), and any window
with a base other than A C G T is skipped. Every genome gives as many windows as the smallest one
has: one window drawn (seeded) from each of that many equal strata of its usable windows, so
they spread along the whole genome. Splits are contiguous blocks along each genome: the selected
windows, in genome order, fall into 12 equal blocks, used as train x4, val, test, train x4, val,
test (2/3 train, 1/6 val, 1/6 test). Within each genome and split, half of the windows (seeded)
are written reverse-complemented, so the strand tells nothing about the label.

Columns: sequence, label, split, source = `<record>:<start>-<end>:<strand>` (0-based half-open,
on the record; strand `-` = the reverse complement of that slice). Rows are ordered by split
(train, val, test), then genome (the order of GENOMES), then start. The output depends on
nothing but the genome files and SEED: two runs write the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import pathlib

import numpy as np

from gfm_jax.data import builtin, fasta

WINDOW = 200
SEED = 0
# (file in builtin_files, label), in output order.
GENOMES = (
    ("lambda_phage_NC_001416.fa.gz", "lambda_phage"),
    ("yeast_chrI.fa.gz", "yeast"),
    ("arabidopsis_thaliana_chloroplast_NC_000932.fa.gz", "arabidopsis_chloroplast"),
    ("human_hg19_chr17_1-40000.fa.gz", "human"),
)
SPLITS = ("train", "val", "test")
# The split of each of the 12 blocks of a genome's windows, in genome order.
BLOCKS = ("train",) * 4 + ("val", "test") + ("train",) * 4 + ("val", "test")
COLUMNS = ("sequence", "label", "split", "source")


def usable_windows(directory: pathlib.Path, file: str) -> list[tuple[str, int, str]]:
    """(record name, start, uppercase bases) of every tiled window made of A C G T only."""
    windows = []
    for record in fasta.read_fasta(directory / file):
        bases = record.sequence().upper()
        for start in range(0, len(bases) - WINDOW + 1, WINDOW):
            window = bases[start : start + WINDOW]
            if not window.strip("ACGT"):
                windows.append((record.name, start, window))
    return windows


def evenly_spread(n_usable: int, n: int, rng: np.random.Generator) -> list[int]:
    """n indices out of range(n_usable), in order: one drawn from each of n equal strata."""
    edges = [k * n_usable // n for k in range(n + 1)]
    return [int(rng.integers(lo, hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def build_rows(directory: pathlib.Path = builtin.DIRECTORY) -> list[dict[str, str]]:
    """The rows of species.csv, in file order."""
    usable = {file: usable_windows(directory, file) for file, _ in GENOMES}
    n = min(len(w) for w in usable.values())
    by_split: dict[str, list[dict[str, str]]] = {s: [] for s in SPLITS}
    for index, (file, label) in enumerate(GENOMES):
        rng = np.random.default_rng([SEED, index])
        chosen = [usable[file][i] for i in evenly_spread(len(usable[file]), n, rng)]
        splits = [BLOCKS[i * len(BLOCKS) // n] for i in range(n)]
        for split in SPLITS:
            members = [w for w, s in zip(chosen, splits, strict=True) if s == split]
            minus = rng.permutation(len(members)) < len(members) // 2
            for (name, start, window), reverse in zip(members, minus, strict=True):
                by_split[split].append(
                    {
                        "sequence": fasta.reverse_complement(window) if reverse else window,
                        "label": label,
                        "split": split,
                        "source": f"{name}:{start}-{start + WINDOW}:{'-' if reverse else '+'}",
                    }
                )
    return [row for split in SPLITS for row in by_split[split]]


def write_rows(out: pathlib.Path, rows: list[dict[str, str]]) -> None:
    """Writes task rows as CSV with COLUMNS (ASCII, LF line ends)."""
    with open(out, "w", newline="", encoding="ascii") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_csv(out: pathlib.Path, directory: pathlib.Path = builtin.DIRECTORY) -> int:
    """Writes species.csv to `out`; returns the number of rows."""
    rows = build_rows(directory)
    write_rows(out, rows)
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=builtin.DIRECTORY / "species.csv")
    args = parser.parse_args()
    n = write_csv(args.out)
    print(f"wrote {n} rows to {args.out}")


if __name__ == "__main__":
    main()
