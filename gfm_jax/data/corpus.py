"""A set of genomes in memory, and its split into training and held-out segments.

All records are concatenated into one uint8 array of base codes; a split is a list of segments
[start, end) of that array that windows are drawn from. Held out for validation are either the
records and ranges named in `data.val_records` / `data.val_ranges`, or one contiguous range of
each record (`val_start`, `val_fraction` of its length); training segments are the rest, so no
training window overlaps a held-out one. Each FASTA file is a mixture component ("group"):
windows pick a file by its weight, then a start uniformly among that file's valid starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from gfm_jax.data import builtin, fasta, genome_cache
from gfm_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Segments:
    """Ranges [starts[k], ends[k]) of the corpus array belonging to one split."""

    starts: np.ndarray  # int64[K]
    ends: np.ndarray  # int64[K]
    groups: np.ndarray  # int64[K], the file each segment belongs to

    def num_valid_starts(self, window_len: int) -> np.ndarray:
        return np.maximum(self.ends - self.starts - window_len + 1, 0)


@dataclasses.dataclass(frozen=True)
class Corpus:
    codes: np.ndarray  # uint8[total], every record back to back
    names: tuple[str, ...]  # "file/record" per record
    offsets: np.ndarray  # int64[R], start of each record in `codes`
    lengths: np.ndarray  # int64[R]
    groups: np.ndarray  # int64[R], index into `files` of each record
    files: tuple[str, ...]

    def split(
        self,
        name: str,
        val_fraction: float,
        val_start: float,
        val_records: Sequence[str] = (),
        val_ranges: Sequence[str] = (),
    ) -> Segments:
        """Training ('train') or held-out ('val') segments of every record.

        Held out: the named records and ranges when any are given, else one range per record
        (`val_start`, `val_fraction` of its length). Training is everything else.
        """
        if val_records or val_ranges:
            held = self._named_held_out(val_records, val_ranges)
        else:
            if not 0.0 < val_fraction < 1.0 or not 0.0 <= val_start <= 1.0 - val_fraction:
                raise UserError(
                    f"data.val_fraction={val_fraction} / data.val_start={val_start}: need "
                    "0 < val_fraction < 1 and 0 <= val_start <= 1 - val_fraction"
                )
            lo = np.floor(self.lengths * val_start).astype(np.int64)
            hi = lo + np.floor(self.lengths * val_fraction).astype(np.int64)
            held = [[(int(a), int(b))] for a, b in zip(lo, hi, strict=True)]
        pieces = []  # (piece number within its record, record, start, end)
        for r, intervals in enumerate(held):
            if name == "val":
                spans = intervals
            elif name == "train":  # the gaps around the held-out intervals
                bounds = [0, *(x for iv in intervals for x in iv), int(self.lengths[r])]
                spans = list(zip(bounds[0::2], bounds[1::2], strict=True))
            else:
                raise ValueError(f"unknown split {name!r}")
            pieces += [(k, r, lo_, hi_) for k, (lo_, hi_) in enumerate(spans)]
        # Ordered by piece number, then record: the segment order (and so the windows a seed
        # draws) stays what it was before named held-out records existed.
        pieces.sort()
        return Segments(
            np.asarray([self.offsets[r] + lo_ for _, r, lo_, _ in pieces], np.int64),
            np.asarray([self.offsets[r] + hi_ for _, r, _, hi_ in pieces], np.int64),
            np.asarray([self.groups[r] for _, r, _, _ in pieces], np.int64),
        )

    def config_split(self, name: str, data: Any) -> Segments:
        """`split` with the held-out settings of a `config.data` block."""
        return self.split(
            name, data.val_fraction, data.val_start, data.val_records, data.val_ranges
        )

    def _record_index(self, name: str, key: str) -> int:
        """A record by its full "file/record" name or, if unambiguous, its record name."""
        matches = [i for i, n in enumerate(self.names) if n == name or n.split("/", 1)[1] == name]
        if len(matches) != 1:
            problem = "matches several records" if matches else "is not a record of the corpus"
            shown = ", ".join(self.names[:6]) + (", ..." if len(self.names) > 6 else "")
            raise UserError(f"{key}: {name!r} {problem}; records are: {shown}")
        return matches[0]

    def _named_held_out(
        self, val_records: Sequence[str], val_ranges: Sequence[str]
    ) -> list[list[tuple[int, int]]]:
        """Sorted, merged held-out intervals (record-relative) of every record."""
        held: list[list[tuple[int, int]]] = [[] for _ in self.names]
        for name in val_records:
            r = self._record_index(name, "data.val_records")
            held[r].append((0, int(self.lengths[r])))
        for spec in val_ranges:
            record, _, span = spec.rpartition(":")
            try:
                lo, hi = (int(x.replace(",", "")) for x in span.split("-"))
            except ValueError:
                raise UserError(
                    f"data.val_ranges: {spec!r} is not 'record:start-end' (0-based, end exclusive)"
                ) from None
            r = self._record_index(record, "data.val_ranges")
            if not 0 <= lo < hi <= self.lengths[r]:
                raise UserError(
                    f"data.val_ranges: {spec!r} is outside {self.names[r]} "
                    f"(0-{int(self.lengths[r])}); need 0 <= start < end <= length"
                )
            held[r].append((lo, hi))
        merged: list[list[tuple[int, int]]] = []
        for intervals in held:
            out: list[tuple[int, int]] = []
            for lo, hi in sorted(intervals):
                if out and lo <= out[-1][1]:
                    out[-1] = (out[-1][0], max(out[-1][1], hi))
                else:
                    out.append((lo, hi))
            merged.append(out)
        return merged

    def file_weights(
        self, segments: Segments, window_len: int, weights: Sequence[float], temperature: float
    ) -> np.ndarray:
        """Sampling probability of each file: explicit `weights`, else size ** (1/temperature).

        Size is the number of valid window starts of the file in `segments`; temperature 1 mixes
        files in proportion to their size, larger temperatures flatten towards uniform.
        """
        sizes = np.bincount(
            segments.groups, segments.num_valid_starts(window_len), minlength=len(self.files)
        )
        if len(weights):
            if len(weights) != len(self.files) or min(weights) < 0:
                raise UserError(
                    f"data.weights has {len(weights)} values for {len(self.files)} files "
                    f"({', '.join(self.files)}); give one non-negative weight per file, or ()"
                )
            raw = np.asarray(weights, np.float64)
        elif temperature > 0:
            raw = sizes.astype(np.float64) ** (1.0 / temperature)
        else:
            raise UserError(f"data.size_temperature={temperature}: must be positive")
        raw = np.where(sizes > 0, raw, 0.0)  # a file with no window of this length cannot be drawn
        if raw.sum() <= 0:
            longest = int(self.lengths.max()) if self.lengths.size else 0
            raise UserError(
                f"no file of data.genomes ({', '.join(self.files)}) has a training window of "
                f"{window_len} bases with positive weight (longest record {longest:,} bases, "
                "less its held-out part); lower data.window_len or check data.weights"
            )
        return raw / raw.sum()

    def n_runs(self) -> tuple[np.ndarray, np.ndarray]:
        """Starts and ends [start, end) of the maximal runs of N in `codes`."""
        is_n = np.concatenate(
            [[False], (self.codes & ~np.uint8(fasta.SOFT_MASK_BIT)) == fasta.N, [False]]
        )
        edges = np.flatnonzero(np.diff(is_n.astype(np.int8)))
        return edges[0::2].astype(np.int64), edges[1::2].astype(np.int64)

    def summary(self, most: int = 20) -> str:
        """A line for the corpus, then one per record, the `most` longest when there are more."""
        upper = self.codes & ~np.uint8(fasta.SOFT_MASK_BIT)
        lines = [
            f"corpus: {len(self.files)} files, {len(self.names)} records, {self.codes.size:,} bases"
        ]
        shown = sorted(np.argsort(-np.asarray(self.lengths), kind="stable")[:most])
        for i in shown:
            name, off, length = self.names[i], self.offsets[i], self.lengths[i]
            rec = upper[off : off + length]
            soft = self.codes[off : off + length] >= fasta.SOFT_MASK_BIT
            gc = np.isin(rec, (fasta.C, fasta.G)).mean()
            lines.append(
                f"  {name}: {length:,} bp, GC {gc:.1%}, N {np.mean(rec == fasta.N):.2%}, "
                f"soft-masked {soft.mean():.1%}"
            )
        if len(self.names) > most:
            rest = len(self.names) - most
            lines.append(f"  ... and {rest:,} shorter records (the {most} longest are listed)")
        return "\n".join(lines)


def _all_n(codes: np.ndarray) -> bool:
    return bool(np.all((codes & ~np.uint8(fasta.SOFT_MASK_BIT)) == fasta.N))


def load_corpus(
    specs: Sequence[str], iupac: str = "n", cache_dir: str = "", log: Any = None
) -> Corpus:
    """Reads every record of every FASTA file named (see `builtin.resolve` for the syntax).

    `cache_dir`: the encoded-genome cache (genome_cache.py; "" reads the FASTA every time).
    """
    directory = genome_cache.cache_directory(cache_dir)
    records: list[tuple[str, np.ndarray, int]] = []
    files: list[str] = []
    for spec in specs:
        for path in builtin.resolve(spec):
            file_records, how = genome_cache.read_records(path, iupac, directory)
            if log is not None and how != "off":
                log(f"{path}: encoded cache {how} ({directory})")
            if all(_all_n(rec.codes) for rec in file_records):
                raise UserError(
                    f"{path}: every base is N (no A, C, G or T to learn from); "
                    "remove it from data.genomes"
                )
            for rec in file_records:
                records.append((f"{path.name}/{rec.name}", rec.codes, len(files)))
            files.append(path.name)
    if not records:
        raise UserError("data.genomes is empty; list at least one FASTA file (or 'builtin')")
    lengths = np.array([len(c) for _, c, _ in records], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    codes = np.concatenate([c for _, c, _ in records])
    groups = np.array([g for _, _, g in records], np.int64)
    names = tuple(n for n, _, _ in records)
    return Corpus(codes, names, offsets, lengths, groups, tuple(files))
