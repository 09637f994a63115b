"""A one-time encoded cache of each FASTA file: uint8 base codes, memory-mapped on later reads.

Parsing and validating a FASTA file (gzip, line by line) is slow for a large genome and would
be repeated by every host and every run. The first read writes `<cache>/<stem>-<key>.u8` (the
codes of all records back to back, see fasta.py) and `<stem>-<key>.json` (record names,
descriptions and lengths); later reads map the `.u8` file, so only the pages a window touches
are read. The key hashes the file's absolute path, size and modification time, the IUPAC policy
and the cache format, so an edited genome or another policy gets a new entry. Both files are
written under temporary names and renamed, the index last: a crash leaves no entry that looks
complete, and an entry that does not match its index is rebuilt.

Cache directory (`data.cache_dir`): "auto" is `$GFM_JAX_CACHE`, else `$XDG_CACHE_HOME/gfm_jax`,
else `~/.cache/gfm_jax`; "" disables the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import numpy as np

from gfm_jax.data import fasta

FORMAT = 1


def cache_directory(setting: str) -> pathlib.Path | None:
    """Resolves the `data.cache_dir` setting ("auto", "" or a path)."""
    if not setting:
        return None
    if setting != "auto":
        return pathlib.Path(setting).expanduser()
    if os.environ.get("GFM_JAX_CACHE"):
        return pathlib.Path(os.environ["GFM_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "gfm_jax"


def _entry(path: pathlib.Path, iupac: str, directory: pathlib.Path) -> pathlib.Path:
    stat = path.stat()
    ident = f"{FORMAT}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{iupac}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    stem = path.name.split(".")[0]
    return directory / f"{stem}-{key}"


def _read(entry: pathlib.Path) -> list[fasta.Record] | None:
    """The cached records, or None if the entry is missing or does not match its index."""
    index_path, codes_path = entry.with_suffix(".json"), entry.with_suffix(".u8")
    try:
        index = json.loads(index_path.read_text())
        if index["format"] != FORMAT or codes_path.stat().st_size != sum(index["lengths"]):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not sum(index["lengths"]):
        return None
    codes = np.memmap(codes_path, np.uint8, mode="r")
    records, start = [], 0
    for name, description, length in zip(
        index["names"], index["descriptions"], index["lengths"], strict=True
    ):
        records.append(fasta.Record(name, description, codes[start : start + length]))
        start += length
    return records


def _write(entry: pathlib.Path, source: pathlib.Path, records: list[fasta.Record]) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    suffix = f".tmp{os.getpid()}"  # several hosts may build the same entry at once
    codes_tmp = entry.with_suffix(".u8" + suffix)
    with open(codes_tmp, "wb") as f:
        for rec in records:
            f.write(np.ascontiguousarray(rec.codes).tobytes())
    codes_tmp.replace(entry.with_suffix(".u8"))
    index = {
        "format": FORMAT,
        "source": str(source),
        "names": [r.name for r in records],
        "descriptions": [r.description for r in records],
        "lengths": [len(r) for r in records],
    }
    index_tmp = entry.with_suffix(".json" + suffix)
    index_tmp.write_text(json.dumps(index))
    index_tmp.replace(entry.with_suffix(".json"))


def read_records(
    path: pathlib.Path, iupac: str, directory: pathlib.Path | None
) -> tuple[list[fasta.Record], str]:
    """The records of a FASTA file, through the cache; also says "cached", "written" or "off"."""
    if directory is None:
        return fasta.read_fasta(path, iupac), "off"
    if not path.is_file():
        return fasta.read_fasta(path, iupac), "off"  # read_fasta names the missing file
    entry = _entry(path, iupac, directory)
    cached = _read(entry)
    if cached is not None:
        return cached, "cached"
    records = fasta.read_fasta(path, iupac)  # validates; raises before anything is written
    try:
        _write(entry, path, records)
    except OSError:
        return records, "off"  # an unwritable cache only costs speed
    return _read(entry) or records, "written"
