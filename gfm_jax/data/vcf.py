"""Read the variant lines of a VCF (plain or gzip): CHROM, POS, ID, REF, ALT.

Only what variant-effect scoring needs: INFO, FORMAT and samples are not parsed. A record with
several ALT alleles gives one Variant per allele; symbolic or missing alleles (`<DEL>`, `*`,
`.`, breakends) cannot be placed on the reference and are returned separately with the reason.
"""

from __future__ import annotations

import dataclasses
import gzip
import pathlib
from collections.abc import Iterator

from gfm_jax.errors import UserError

_BASES = set("ACGTN")


@dataclasses.dataclass(frozen=True)
class Variant:
    chrom: str
    pos: int  # 1-based, as in the file
    id: str
    ref: str  # uppercase
    alt: str  # uppercase
    line: int  # line number in the file, for messages

    @property
    def kind(self) -> str:
        if len(self.ref) == len(self.alt):
            return "snv" if len(self.ref) == 1 else "mnv"
        return "ins" if len(self.alt) > len(self.ref) else "del"

    def label(self) -> str:
        return f"{self.chrom}:{self.pos} {_short(self.ref)}>{_short(self.alt)}"


def _short(allele: str, limit: int = 12) -> str:
    return allele if len(allele) <= limit else f"{allele[:limit]}...({len(allele)} bp)"


def read_vcf(path: str | pathlib.Path) -> tuple[list[Variant], list[tuple[str, str]]]:
    """(variants, unplaceable) where unplaceable holds (description, reason) pairs."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"VCF {str(path)!r} not found; check --vcf")
    variants, unplaceable = [], []
    for n, line in _lines(path):
        if line.startswith("#") or not line.strip():
            continue
        chrom, pos, vid, ref, alts = _fields(path, n, line)
        for alt in alts.upper().split(","):
            if alt and not set(alt) - _BASES:
                variants.append(Variant(chrom, pos, vid, ref, alt, n))
            else:
                unplaceable.append(
                    (f"{chrom}:{pos} {_short(ref)}>{alt}", "symbolic or missing ALT allele")
                )
    if not variants and not unplaceable:
        raise UserError(f"{path} holds no variant lines; is this a VCF file?")
    return variants, unplaceable


def _lines(path: pathlib.Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a plain or gzip VCF, each line decoded on its own so that a bad
    byte is reported at its line; a file that cannot be read is one error line."""
    n = 0
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        with (gzip.open if gzipped else open)(path, "rb") as f:
            for n, raw in enumerate(f, start=1):
                yield n, raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}:{n}: not UTF-8 text ({e.reason}); is this a VCF file?") from None
    except (OSError, EOFError) as e:
        raise UserError(
            f"{path}: cannot read after line {n} ({e}); is it a complete VCF (plain or gzip)?"
        ) from None


def _fields(path: pathlib.Path, n: int, line: str) -> tuple[str, int, str, str, str]:
    """CHROM, POS, ID, REF (uppercase) and ALT of line `n`, checked."""
    cols = line.rstrip("\n").split("\t")
    if len(cols) < 5:
        raise UserError(
            f"{path}:{n}: {len(cols)} tab-separated columns; a VCF line needs "
            "CHROM POS ID REF ALT (tab-separated); fix or remove the line"
        )
    chrom, pos_text, vid, ref, alts = cols[:5]
    try:
        pos = int(pos_text)
    except ValueError:
        raise UserError(f"{path}:{n}: POS {pos_text!r} is not an integer; fix the line") from None
    ref = ref.upper()
    if not ref or set(ref) - _BASES:
        raise UserError(
            f"{path}:{n}: REF {ref[:20]!r} is not a base sequence; fix or remove the line"
        )
    return chrom, pos, vid, ref, alts
