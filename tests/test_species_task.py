"""The built-in species task: species.csv is what scripts/make_species_task.py writes, every row is
the genome slice it names, splits do not overlap, classes and strands are balanced, and the task
config loads it."""

import collections
import csv
import importlib.util
import pathlib

import pytest

from gfm_jax import command_line
from gfm_jax.data import builtin, fasta, tasks

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPECIES = str(ROOT / "configs/tasks/species.py")
CSV = builtin.DIRECTORY / "species.csv"
LABELS = ("arabidopsis_chloroplast", "human", "lambda_phage", "yeast")


def load_script():
    path = ROOT / "scripts/make_species_task.py"
    spec = importlib.util.spec_from_file_location("make_species_task", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    with open(CSV, newline="") as f:
        return list(csv.DictReader(f))


def parse_source(source: str) -> tuple[str, int, int, str]:
    name, span, strand = source.rsplit(":", 2)
    start, end = span.split("-")
    return name, int(start), int(end), strand


def test_the_csv_is_what_the_script_writes(tmp_path):
    out = tmp_path / "species.csv"
    load_script().write_csv(out)
    assert out.read_bytes() == CSV.read_bytes()


def test_every_row_is_the_genome_slice_its_source_names(rows):
    genomes = {}
    for name in builtin.GENOMES:
        for record in fasta.read_fasta(builtin.DIRECTORY / name):
            genomes[record.name] = record.sequence().upper()
    assert list(rows[0]) == ["sequence", "label", "split", "source"]
    for row in rows:
        name, start, end, strand = parse_source(row["source"])
        assert end - start == 200 and start % 200 == 0 and strand in "+-"
        window = genomes[name][start:end]
        expected = window if strand == "+" else fasta.reverse_complement(window)
        assert row["sequence"] == expected and set(expected) <= set("ACGT")


def test_splits_do_not_overlap_and_classes_and_strands_are_balanced(rows):
    spans = collections.defaultdict(list)  # record -> (start, end, split)
    for row in rows:
        name, start, end, _ = parse_source(row["source"])
        spans[name].append((start, end, row["split"]))
    assert len(spans) == 4
    for name, items in spans.items():
        items.sort()
        assert len({start for start, _, _ in items}) == len(items), name  # no window twice
        for (_, end, _), (start, _, _) in zip(items, items[1:], strict=False):
            assert end <= start, name  # no two windows overlap, in any split
    counts = collections.Counter((r["split"], r["label"]) for r in rows)
    for split in ("train", "val", "test"):
        per_class = {counts[split, label] for label in LABELS}
        assert len(per_class) == 1 and per_class.pop() > 0, (split, counts)
        strands = collections.Counter(r["source"][-1] for r in rows if r["split"] == split)
        assert strands["+"] > 0 and strands["-"] > 0
        assert abs(strands["+"] - strands["-"]) <= 4, (split, strands)
    total = collections.Counter(r["split"] for r in rows)
    assert total["train"] > 3 * total["val"] and total["train"] > 3 * total["test"]


def test_the_species_config_loads_the_task():
    config = command_line.load_config(SPECIES)
    assert config.task.stranded is False and config.task.path == "builtin:species.csv"
    task = tasks.load_task(config.task)
    assert task.label_names == LABELS
    assert len(task.train) and len(task.val) and len(task.test)
    assert len(task.train) + len(task.val) + len(task.test) <= 800
    smoke = command_line.load_config(SPECIES + ":smoke")
    assert smoke.finetune.epochs == 1 and smoke.seeds == (0,)
