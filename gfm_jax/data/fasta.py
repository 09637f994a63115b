"""Streaming FASTA / FASTA.gz reader with validation, encoding bases as uint8 codes.

Encoding (one byte per base): A=0 C=1 G=2 T=3 N=4, plus `SOFT_MASK_BIT` for lowercase
(soft-masked repeat) bases. RNA's U becomes T. IUPAC ambiguity letters (R Y K M S W B D H V)
become N with `iupac="n"` (the default) or are an error with `iupac="error"`. Anything else
(digits, `*`, `-`, binary data) is an error naming the file and line.
"""

from __future__ import annotations

import dataclasses
import gzip
import pathlib
from collections.abc import Iterator

import numpy as np

from gfm_jax.errors import UserError

BASES = "ACGTN"
A, C, G, T, N = range(5)
SOFT_MASK_BIT = 0x80
_IUPAC_AMBIGUOUS = "RYKMSWBDHV"


def _code_table() -> bytes:
    table = bytearray([0xFF] * 256)
    for code, base in enumerate(BASES):
        table[ord(base)] = code
        table[ord(base.lower())] = code | SOFT_MASK_BIT
    for letter in _IUPAC_AMBIGUOUS:
        table[ord(letter)] = N
        table[ord(letter.lower())] = N | SOFT_MASK_BIT
    table[ord("U")], table[ord("u")] = T, T | SOFT_MASK_BIT
    return bytes(table)


_CODE_TABLE = _code_table()
_COMPLEMENT = str.maketrans("ACGTUNacgtun", "TGCAANtgcaan")


def reverse_complement(text: str) -> str:
    """The reverse complement of a sequence's text (case kept; IUPAC letters other than N are
    left as they are)."""
    return text.translate(_COMPLEMENT)[::-1]


_VALID_LETTERS = bytes(i for i in range(256) if _CODE_TABLE[i] != 0xFF)
_STRICT_LETTERS = bytes(i for i in _VALID_LETTERS if chr(i).upper() not in _IUPAC_AMBIGUOUS)
IUPAC_POLICIES = ("n", "error")


@dataclasses.dataclass(frozen=True)
class Record:
    """One FASTA record: `name` is the first word of the header."""

    name: str
    description: str
    codes: np.ndarray  # uint8[length], see the module docstring

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def sequence(self) -> str:
        """The bases as text (uppercase; soft-masked bases lowercase)."""
        return decode_codes(self.codes)


def decode_codes(codes: np.ndarray) -> str:
    upper = np.frombuffer(BASES.encode(), np.uint8)[codes & ~np.uint8(SOFT_MASK_BIT)]
    lower = upper | np.uint8(0x20)
    return np.where(codes & SOFT_MASK_BIT, lower, upper).astype(np.uint8).tobytes().decode()


def encode_text(text: str) -> np.ndarray:
    """Encodes a sequence string; raises ValueError on letters outside the FASTA alphabet."""
    raw = text.encode("ascii", errors="replace")
    bad = raw.translate(None, _VALID_LETTERS)
    if bad:
        raise ValueError(f"letter {chr(bad[0])!r} is not a nucleotide or IUPAC code")
    return np.frombuffer(raw.translate(_CODE_TABLE), np.uint8).copy()


def _open_lines(path: pathlib.Path) -> Iterator[bytes]:
    if path.is_dir():
        raise UserError(f"FASTA file {str(path)!r} is a directory; name the FASTA files in it")
    if not path.is_file():
        raise UserError(f"FASTA file {str(path)!r} not found; check data.genomes in the config")
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as f:
            yield from f
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read ({e}); is the gzip file complete?") from None


def read_fasta(path: str | pathlib.Path, iupac: str = "n") -> list[Record]:
    """Reads every record of a FASTA or gzip-compressed FASTA file.

    `iupac`: "n" reads IUPAC ambiguity letters as N; "error" rejects them.
    """
    if iupac not in IUPAC_POLICIES:
        raise UserError(f"data.iupac={iupac!r}: choose one of {IUPAC_POLICIES}")
    allowed = _VALID_LETTERS if iupac == "n" else _STRICT_LETTERS
    path = pathlib.Path(path)
    records: list[Record] = []
    seen: dict[str, int] = {}
    header: tuple[str, str, int] | None = None
    chunks: list[bytes] = []
    bad_lines: list[tuple[int, int]] = []  # (line number, first bad byte)

    def finish() -> None:
        if header is None:
            return
        name, description, line_no = header
        if not chunks and bad_lines:
            return  # the bad letters are the error to report
        if not chunks:
            raise UserError(f"{path}:{line_no}: record {name!r} has no sequence; remove it")
        codes = np.frombuffer(b"".join(chunks).translate(_CODE_TABLE), np.uint8).copy()
        records.append(Record(name, description, codes))

    for line_no, raw in enumerate(_open_lines(path), start=1):
        line = raw.rstrip(b"\r\n").strip()
        if line_no == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
        if not line:
            continue
        if line.startswith(b">"):
            finish()
            text = _decode_header(path, line_no, line)
            name = text.split(maxsplit=1)[0] if text.strip() else ""
            if not name:
                raise UserError(f"{path}:{line_no}: header has no name; write '>name description'")
            if name in seen:
                raise UserError(
                    f"{path}:{line_no}: duplicate record name {name!r} (first at line "
                    f"{seen[name]}); record names must be unique"
                )
            seen[name] = line_no
            header, chunks = (name, text, line_no), []
            continue
        if header is None:
            raise UserError(
                f"{path}:{line_no}: expected a FASTA header line starting with '>'; "
                "is this a FASTA file?"
            )
        bad = line.replace(b" ", b"").translate(None, allowed)
        if bad:  # reported once the whole file is read, with how many lines share the fault
            bad_lines.append((line_no, bad[0]))
            continue
        chunks.append(line.replace(b" ", b""))
    if bad_lines:
        raise UserError(_bad_letter_message(path, bad_lines))
    finish()
    if not records:
        raise UserError(f"{path}: no FASTA records found; is this a FASTA file?")
    return records


def _bad_letter_message(path: pathlib.Path, bad_lines: list[tuple[int, int]]) -> str:
    line_no, byte = bad_lines[0]
    shown = chr(byte) if 32 <= byte < 127 else f"byte 0x{byte:02x}"
    more = f" (and {len(bad_lines) - 1:,} more lines like it)" if len(bad_lines) > 1 else ""
    if chr(byte).upper() in _IUPAC_AMBIGUOUS:
        return (
            f"{path}:{line_no}: IUPAC ambiguity code {shown!r} while data.iupac='error'{more}; "
            "set data.iupac='n' to read it as N, or fix the sequence"
        )
    return (
        f"{path}:{line_no}: {shown!r} is not a nucleotide or IUPAC code{more}; "
        "fix the sequence or remove the line"
    )


def _decode_header(path: pathlib.Path, line_no: int, line: bytes) -> str:
    try:
        return line[1:].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UserError(f"{path}:{line_no}: header is not text; is this a FASTA file?") from None
