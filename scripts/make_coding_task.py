"""Builds the built-in "coding or intergenic" task, gfm_jax/data/builtin_files/coding.csv.

    python scripts/make_coding_task.py [--out gfm_jax/data/builtin_files/coding.csv]

Each row is a 100-base window of the A. thaliana chloroplast (a built-in pretraining genome),
labelled from the annotation of its GenBank file (NC_000932.gb.gz, shipped beside the FASTA):
`coding` when the window lies inside one CDS part, `intergenic` when it overlaps no gene, CDS,
tRNA or rRNA feature; windows that are partly coding, intronic or in an RNA gene are skipped.
Windows tile the genome without overlap (start 0, step 100) and are uppercased.

Repeats: walking the genome in order, a window that shares more than half of its 32-mers (either
strand) with a window kept before it is dropped, which removes the second copy of the inverted
repeat. Splits are contiguous blocks along the genome (12 blocks: train x4, val, test, twice, as
in make_species_task.py); within each split the larger class is thinned, evenly along the genome
(seeded), to the size of the smaller, and half of each class (seeded) is written reverse-
complemented, so neither strand nor class balance tells the label. A CDS read on either strand
is coding, so the label does not depend on the strand.

Columns: sequence, label, split, source = `<record>:<start>-<end>:<strand>` (0-based half-open).
Rows are ordered by split, then label, then start. The output depends on nothing but the two
genome files and SEED.
"""

from __future__ import annotations

import argparse
import gzip
import pathlib
import re
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import make_species_task as species  # noqa: E402  (evenly_spread, BLOCKS, CSV layout)

from gfm_jax.data import builtin, fasta  # noqa: E402

WINDOW = 100
KMER = 32
SEED = 0
FASTA = "arabidopsis_thaliana_chloroplast_NC_000932.fa.gz"
GENBANK = "arabidopsis_thaliana_chloroplast_NC_000932.gb.gz"
LABELS = ("coding", "intergenic")
GENE_KEYS = ("gene", "CDS", "tRNA", "rRNA")


def features(path: pathlib.Path) -> dict[str, list[tuple[int, int]]]:
    """Feature key -> 0-based half-open intervals of its location parts (GenBank FEATURES)."""
    found: dict[str, list[tuple[int, int]]] = {}
    key, location = "", ""

    def close() -> None:
        spans = [(int(a) - 1, int(b)) for a, b in re.findall(r"(\d+)\.\.(\d+)", location)]
        found.setdefault(key, []).extend(spans)

    in_table = False
    with gzip.open(path, "rt") as f:
        for line in f:
            if line.startswith("FEATURES"):
                in_table = True
            elif in_table and not line.startswith(" "):
                break
            elif in_table and line[5] != " ":  # a new feature: key at column 6
                if key:
                    close()
                key, location = line[5:21].strip(), line[21:].strip()
            elif in_table and location and not line[21:].startswith("/") and "/" not in location:
                location += line[21:].strip()  # a location continued on the next line
            elif in_table and line[21:].startswith("/"):
                location += "/"  # qualifiers follow: the location is complete
    if key:
        close()
    return found


def kmers(window: str) -> set[str]:
    both = (window, fasta.reverse_complement(window))
    return {s[i : i + KMER] for s in both for i in range(len(s) - KMER + 1)}


def labelled_windows(directory: pathlib.Path) -> tuple[list[tuple[str, int, str, str]], int]:
    """(record, start, bases, label) of every usable tiled window, repeats dropped; the genome's
    length."""
    table = features(directory / GENBANK)
    cds = table["CDS"]
    genes = [span for k in GENE_KEYS for span in table.get(k, [])]
    (record,) = fasta.read_fasta(directory / FASTA)
    bases = record.sequence().upper()
    seen: set[str] = set()
    out = []
    for start in range(0, len(bases) - WINDOW + 1, WINDOW):
        end, window = start + WINDOW, bases[start : start + WINDOW]
        if window.strip("ACGT"):
            continue
        if any(a <= start and end <= b for a, b in cds):
            label = "coding"
        elif not any(a < end and start < b for a, b in genes):
            label = "intergenic"
        else:
            continue
        own = kmers(window)
        if len(own & seen) * 2 > len(own):
            continue
        seen |= own
        out.append((record.name, start, window, label))
    return out, len(bases)


def build_rows(directory: pathlib.Path = builtin.DIRECTORY) -> list[dict[str, str]]:
    """The rows of coding.csv, in file order."""
    windows, genome_length = labelled_windows(directory)
    rows = []
    for split in species.SPLITS:
        members = {
            label: [
                w
                for w in windows
                if w[3] == label
                and species.BLOCKS[w[1] * len(species.BLOCKS) // genome_length] == split
            ]
            for label in LABELS
        }
        n = min(len(m) for m in members.values())
        for index, label in enumerate(LABELS):
            rng = np.random.default_rng([SEED, species.SPLITS.index(split), index])
            chosen = [members[label][i] for i in species.evenly_spread(len(members[label]), n, rng)]
            minus = rng.permutation(n) < n // 2
            for (name, start, window, _), reverse in zip(chosen, minus, strict=True):
                rows.append(
                    {
                        "sequence": fasta.reverse_complement(window) if reverse else window,
                        "label": label,
                        "split": split,
                        "source": f"{name}:{start}-{start + WINDOW}:{'-' if reverse else '+'}",
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=builtin.DIRECTORY / "coding.csv")
    args = parser.parse_args()
    rows = build_rows()
    species.write_rows(args.out, rows)
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
