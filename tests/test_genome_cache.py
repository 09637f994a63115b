"""The encoded-genome cache: written once, memory-mapped after, rebuilt when stale or broken."""

import gzip
import os

import numpy as np
import pytest

from gfm_jax.data import builtin, fasta, genome_cache
from gfm_jax.data.corpus import load_corpus
from gfm_jax.errors import UserError


def test_cache_equals_parsing_and_is_memory_mapped(tmp_path):
    cache = tmp_path / "cache"
    parsed = load_corpus(["builtin"])
    first = load_corpus(["builtin"], cache_dir=str(cache))
    assert len(list(cache.glob("*.u8"))) == len(builtin.GENOMES)
    second = load_corpus(["builtin"], cache_dir=str(cache))
    for c in (first, second):
        np.testing.assert_array_equal(c.codes, parsed.codes)
        assert c.names == parsed.names
        np.testing.assert_array_equal(c.lengths, parsed.lengths)
    path = builtin.resolve("builtin:yeast_chrI.fa.gz")[0]
    records, how = genome_cache.read_records(path, "n", cache)
    assert how == "cached" and isinstance(records[0].codes, np.memmap)


def test_an_edited_genome_or_another_policy_gets_a_new_entry(tmp_path):
    cache = tmp_path / "cache"
    genome = tmp_path / "g.fa"
    genome.write_text(">a\nACGTRACGT\n")
    (rec,), how = genome_cache.read_records(genome, "n", cache)
    assert how == "written" and fasta.decode_codes(rec.codes) == "ACGTNACGT"
    with pytest.raises(UserError, match="IUPAC"):  # the "error" policy is not served the "n" entry
        genome_cache.read_records(genome, "error", cache)
    genome.write_text(">a\nACGTTACGTAA\n")
    os.utime(genome, ns=(1, 10**18))  # a new modification time, as an edit would give
    (rec,), how = genome_cache.read_records(genome, "n", cache)
    assert how == "written" and fasta.decode_codes(rec.codes) == "ACGTTACGTAA"


def test_a_broken_entry_is_rebuilt_and_bad_input_writes_nothing(tmp_path):
    cache = tmp_path / "cache"
    genome = tmp_path / "g.fa.gz"
    with gzip.open(genome, "wt") as f:
        f.write(">a desc\nACGTacgt\r\n>b\nTTTT\n")
    (a, b), _ = genome_cache.read_records(genome, "n", cache)
    (codes_file,) = cache.glob("*.u8")
    codes_file.write_bytes(codes_file.read_bytes()[:5])  # truncated, as by a full disk
    (a2, b2), how = genome_cache.read_records(genome, "n", cache)
    assert how == "written"
    assert fasta.decode_codes(a2.codes) == "ACGTacgt" and fasta.decode_codes(b2.codes) == "TTTT"
    assert a2.description == "a desc"
    bad = tmp_path / "bad.fa"
    bad.write_text(">x\nACGT\n>x\nAC\n")
    with pytest.raises(UserError, match="duplicate record name"):
        genome_cache.read_records(bad, "n", cache)
    assert len(list(cache.iterdir())) == 2  # only the good genome's .u8 and .json


def test_cache_directory_setting(monkeypatch, tmp_path):
    assert genome_cache.cache_directory("") is None
    assert genome_cache.cache_directory(str(tmp_path)) == tmp_path
    monkeypatch.setenv("GFM_JAX_CACHE", str(tmp_path / "env"))
    assert genome_cache.cache_directory("auto") == tmp_path / "env"
    monkeypatch.delenv("GFM_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert genome_cache.cache_directory("auto") == tmp_path / "xdg" / "gfm_jax"
