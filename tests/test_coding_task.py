"""The built-in coding-or-intergenic task: coding.csv is what scripts/make_coding_task.py writes,
every row is the chloroplast slice it names with the label its GenBank annotation gives, no
window repeats another across splits, classes and strands are balanced, and the config loads it."""

import collections
import csv
import importlib.util
import pathlib
import sys

import pytest

from gfm_jax import command_line
from gfm_jax.data import builtin, fasta, tasks

ROOT = pathlib.Path(__file__).resolve().parents[1]
CODING = str(ROOT / "configs/tasks/coding.py")
CSV = builtin.DIRECTORY / "coding.csv"


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(ROOT / "scripts"))  # the script imports make_species_task
    path = ROOT / "scripts/make_coding_task.py"
    spec = importlib.util.spec_from_file_location("make_coding_task", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    with open(CSV, newline="") as f:
        return list(csv.DictReader(f))


def spans(row: dict[str, str]) -> tuple[int, int, str]:
    _, span, strand = row["source"].rsplit(":", 2)
    start, end = span.split("-")
    return int(start), int(end), strand


def test_the_csv_is_what_the_script_writes(script, tmp_path):
    out = tmp_path / "coding.csv"
    script.species.write_rows(out, script.build_rows())
    assert out.read_bytes() == CSV.read_bytes()


def test_rows_are_the_slices_and_labels_the_annotation_gives(script, rows):
    (record,) = fasta.read_fasta(builtin.DIRECTORY / script.FASTA)
    genome = record.sequence().upper()
    table = script.features(builtin.DIRECTORY / script.GENBANK)
    # rps12 is trans-spliced: its CDS joins parts 29 kb apart, all three must be read.
    assert {(97998, 98024), (98561, 98793), (69610, 69724)} <= set(table["CDS"])
    genes = [s for key in script.GENE_KEYS for s in table[key]]
    for row in rows:
        start, end, strand = spans(row)
        window = genome[start:end]
        assert row["sequence"] == (window if strand == "+" else fasta.reverse_complement(window))
        inside_cds = any(a <= start and end <= b for a, b in table["CDS"])
        touches_gene = any(a < end and start < b for a, b in genes)
        assert (row["label"] == "coding") == inside_cds and (row["label"] == "coding") == (
            touches_gene
        ), row["source"]


def test_no_window_repeats_across_splits_and_classes_and_strands_balance(script, rows):
    by_split = collections.defaultdict(set)
    for row in rows:
        by_split[row["split"]] |= script.kmers(row["sequence"])
    for row in rows:
        if row["split"] != "train":  # held-out windows share at most half their 32-mers
            own = script.kmers(row["sequence"])
            assert len(own & by_split["train"]) * 2 <= len(own), row["source"]
    counts = collections.Counter((r["split"], r["label"]) for r in rows)
    for split in ("train", "val", "test"):
        assert counts[split, "coding"] == counts[split, "intergenic"] > 0
        strands = collections.Counter(spans(r)[2] for r in rows if r["split"] == split)
        assert abs(strands["+"] - strands["-"]) <= 2


def test_the_coding_config_loads_the_task():
    config = command_line.load_config(CODING)
    assert config.task.stranded is False and config.task.path == "builtin:coding.csv"
    task = tasks.load_task(config.task)
    assert task.label_names == ("coding", "intergenic")
    assert (len(task.train), len(task.val), len(task.test)) == (426, 80, 70)
