"""Writes one benchmark's table into docs/benchmarks.md, between its own marker lines."""

from __future__ import annotations

import pathlib


def replace_section(path: str | pathlib.Path, marker: str, table: str) -> None:
    """Replaces the text between two `marker` lines (or appends it) and keeps the rest."""
    path = pathlib.Path(path)
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    block = f"{marker}\n{table}\n{marker}"
    if marker in old:
        before, _, rest = old.partition(marker)
        _, _, after = rest.partition(marker)
        new = before + block + after
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


def publish(table: str, path: str | None, marker: str) -> None:
    """Prints a benchmark's table and, when `path` is given (`--write`), puts it there too."""
    print(table)
    if path:
        replace_section(path, marker, table)
