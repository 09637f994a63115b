"""The real genomes and task shipped in the package (provenance: builtin_files/PROVENANCE.md)."""

from __future__ import annotations

import pathlib

from gfm_jax.errors import UserError

DIRECTORY = pathlib.Path(__file__).parent / "builtin_files"

# The default pretraining corpus: a phage, a yeast chromosome, a chloroplast and a soft-masked
# piece of human chr17 (about 473 kb in all).
GENOMES = (
    "lambda_phage_NC_001416.fa.gz",
    "yeast_chrI.fa.gz",
    "arabidopsis_thaliana_chloroplast_NC_000932.fa.gz",
    "human_hg19_chr17_1-40000.fa.gz",
)


def resolve(spec: str) -> list[pathlib.Path]:
    """`builtin` -> all built-in genomes; `builtin:NAME` -> that file; anything else -> a path."""
    if spec == "builtin":
        return [DIRECTORY / name for name in GENOMES]
    if spec.startswith("builtin:"):
        path = DIRECTORY / spec.removeprefix("builtin:")
        if not path.is_file():
            names = ", ".join(sorted(p.name for p in DIRECTORY.iterdir() if p.suffix != ".md"))
            raise UserError(f"no built-in file {spec!r}; the built-in files are: {names}")
        return [path]
    return [pathlib.Path(spec)]
