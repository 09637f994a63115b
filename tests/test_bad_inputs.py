"""Bad inputs through the entry points, run as a user runs them (`python -m ...`).

Every case exits with code 2 (or 128 + signal), prints no traceback, and its one error line names
the file or key, the line or row where there is one, and what to do. A run of `gfm_jax.train`
that fails leaves no workdir behind. The default suite runs the cases that fail before any heavy
import, and one per kind of file; the rest are slow.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from conftest import ROOT, damage_array_files, micro_overrides, run_module

LAMBDA = "gfm_jax/data/builtin_files/lambda_phage_NC_001416.fa.gz"
LAMBDA_RECORD = "gi|9626243|ref|NC_001416.1|"
VCF_HEADER = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n"


@dataclasses.dataclass(frozen=True)
class Case:
    """`args(tmp, workdir)` builds the files it needs under tmp and returns the command line;
    `workdir` is a pretrained checkpoint (None when `needs_checkpoint` is False)."""

    name: str
    args: Callable[[pathlib.Path, pathlib.Path | None], list[str]]
    needles: tuple[str, ...]  # in the error line; "{tmp}" stands for the case's directory
    fast: bool = False
    needs_checkpoint: bool = False


def write(path: pathlib.Path, data: str | bytes) -> str:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return str(path)


def train(tmp: pathlib.Path, *extra: str, config: str = "configs/pretrain/tiny.py:smoke"):
    return ["gfm_jax.train", "--config", config, "--workdir", str(tmp / "run"), *extra]


def genomes(tmp: pathlib.Path, name: str, data: str | bytes) -> list[str]:
    return train(tmp, f"--config.data.genomes=('{write(tmp / name, data)}',)")


def finetune(tmp: pathlib.Path, *extra: str) -> list[str]:
    """The CNN baseline needs no checkpoint, so a task's errors show without one."""
    return [
        *("gfm_jax.evaluate", "finetune", "--config", "configs/tasks/splice.py:smoke"),
        *("--workdir", str(tmp), "--model", "cnn", "--seeds", "0", *extra),
    ]


def task_csv(tmp: pathlib.Path, text: str, *extra: str) -> list[str]:
    """A task CSV with a split column (so row ranges are off)."""
    path = write(tmp / "task.csv", text)
    rows = ("--config.task.train_rows=()", "--config.task.test_rows=()")
    return finetune(tmp, f"--config.task.path={path}", *rows, *extra)


def split_rows(*rows: str) -> str:
    return "sequence,label,split\n" + "".join(f"{r}\n" for r in rows)


# Twenty distinct sequences (a validation split drawn from them is never a duplicate of train).
GOOD_ROWS = [
    f"ACGT{i:05b}".replace("0", "C").replace("1", "G") + f",{'EI' if i % 2 else 'IE'},train"
    for i in range(20)
]


def vep(tmp: pathlib.Path, work: pathlib.Path | None, name: str, data: str | bytes) -> list[str]:
    return [
        *("gfm_jax.evaluate", "vep", "--workdir", str(work), "--vcf", write(tmp / name, data)),
        *("--fasta", LAMBDA, "--out", str(tmp / "scores.tsv")),
    ]


def embed(tmp: pathlib.Path, work: pathlib.Path | None) -> list[str]:
    fasta = write(tmp / "q.fa", ">q\n" + "ACGT" * 40 + "\n")
    return ["gfm_jax.evaluate", "embed", "--workdir", str(work), "--input", fasta] + [
        "--out",
        str(tmp / "e.npy"),
    ]


def damaged(tmp: pathlib.Path, work: pathlib.Path | None, damage: Callable) -> pathlib.Path:
    """A copy of the pretrained workdir with `damage(step_dir)` applied to its only step."""
    copy = tmp / "w"
    shutil.copytree(work, copy)
    (step,) = [p for p in (copy / "ckpt").iterdir() if p.name.isdigit()]
    damage(step)
    return copy


def largest_params_file(step: pathlib.Path) -> pathlib.Path:
    files = [p for p in (step / "params").rglob("*") if p.is_file()]
    return max(files, key=lambda p: (p.stat().st_size, str(p)))


def cut_gzip(text: str) -> bytes:
    """The first half of `text` gzip-compressed (after 1,000 random bases, so it does not
    compress to a few bytes)."""
    bases = "".join(random.Random(0).choices("ACGT", k=1000))
    data = gzip.compress((text + bases + "\n").encode())
    return data[: len(data) // 2]


FASTA = [
    Case(
        "fasta missing",
        lambda t, w: train(t, f"--config.data.genomes=('{t}/no.fa',)"),
        ("{tmp}/no.fa' not found", "check data.genomes"),
    ),
    Case(
        "fasta is a directory",
        lambda t, w: train(t, f"--config.data.genomes=('{t}',)"),
        ("'{tmp}' is a directory", "name the FASTA files"),
    ),
    Case(
        "fastq",
        lambda t, w: genomes(t, "r.fq", "@r1\nACGT\n+\nIIII\n"),
        ("r.fq:1", "'>'", "is this a FASTA file?"),
    ),
    Case(
        "protein",
        lambda t, w: genomes(t, "p.fa", ">p\nMKVLAAGIVGLLLAQ\n"),
        ("p.fa:2", "'L' is not a nucleotide", "fix the sequence"),
    ),
    Case(
        "binary",
        lambda t, w: genomes(t, "b.fa", bytes(range(256)) * 4),
        ("b.fa:1", "is this a FASTA file?"),
    ),
    Case(
        "truncated gzip",
        lambda t, w: genomes(t, "t.fa.gz", cut_gzip(">a\n")),
        ("t.fa.gz", "is the gzip file complete?"),
    ),
    Case(
        "duplicate names",
        lambda t, w: genomes(t, "d.fa", ">a\nACGT\n>b\nACGT\n>a\nACGT\n"),
        ("d.fa:5", "duplicate record name 'a' (first at line 1)", "must be unique"),
    ),
    Case(
        "empty file",
        lambda t, w: genomes(t, "e.fa", ""),
        ("e.fa", "no FASTA records", "is this a FASTA file?"),
    ),
    Case(
        "record without sequence",
        lambda t, w: genomes(t, "h.fa", ">a\n>b\nACGT\n"),
        ("h.fa:1", "record 'a' has no sequence", "remove it"),
    ),
    Case(
        "all N",
        lambda t, w: genomes(t, "n.fa", ">n\n" + "N" * 20000 + "\n"),
        ("n.fa", "every base is N", "remove it from data.genomes"),
    ),
    Case(
        "bad letters on several lines",
        lambda t, w: genomes(t, "x.fa", ">a\nACGTX\nACGT\nACJT\nACGTZ\n"),
        ("x.fa:2", "'X'", "and 2 more lines", "fix the sequence"),
        fast=True,
    ),
    Case(
        "records shorter than a window",
        lambda t, w: genomes(t, "s.fa", ">a\nACGTACGT\n"),
        ("data.genomes (", "s.fa", "window of 128 bases", "lower data.window_len"),
    ),
    Case(
        "a task CSV given as a genome",
        lambda t, w: genomes(t, "l.csv", "sequence,label\nAC,EI\n"),
        ("l.csv:1", "FASTA"),
    ),
]

CSV = [
    Case(
        "task file missing",
        lambda t, w: finetune(t, f"--config.task.path={t}/no.csv"),
        ("{tmp}/no.csv' not found", "set task.path"),
    ),
    Case(
        "no sequence column",
        lambda t, w: task_csv(t, "seq,label,split\nACGT,EI,train\n"),
        ("task.csv", "no column 'sequence'", "task.sequence_column", "['seq', 'label', 'split']"),
    ),
    Case(
        "no label column",
        lambda t, w: task_csv(t, "sequence,lab,split\nACGT,EI,train\n"),
        ("task.csv", "no column 'label'", "task.label_column"),
    ),
    Case(
        "empty label",
        lambda t, w: task_csv(t, split_rows(*GOOD_ROWS, "ACGTACGG,,test")),
        ("task.csv:22:", "the label is empty", "fill it in"),
    ),
    Case(
        "unclosed quote",
        lambda t, w: task_csv(t, split_rows(*GOOD_ROWS[:2], '"ACGT,EI,test', *GOOD_ROWS[2:])),
        ("task.csv:4:", "quote", "fix the CSV"),
        fast=True,
    ),
    Case(
        "bad letter in a sequence",
        lambda t, w: task_csv(t, split_rows(*GOOD_ROWS, "AC!T,EI,test")),
        ("task.csv:22 (of {tmp}/task.csv)", "'!'", "fix or remove the row"),
    ),
    Case(
        "header only",
        lambda t, w: task_csv(t, "sequence,label,split\n"),
        ("task.csv has a header but no rows", "add examples"),
    ),
    Case(
        "regression label not a number",
        lambda t, w: task_csv(
            t, split_rows("ACGT,1.5,train", "ACGA,high,test"), "--config.task.kind=regression"
        ),
        ("task.csv:3:", "'high' is not a number"),
    ),
    Case(
        "unknown split",
        lambda t, w: task_csv(t, split_rows(*GOOD_ROWS, "ACGA,IE,tset")),
        ("task.csv:22:", "split 'tset'", "use one of"),
    ),
    Case(
        "rows beyond the file",
        lambda t, w: finetune(
            t, "--config.task.train_rows=(0,5000)", "--config.task.test_rows=(5000,6000)"
        ),
        ("task.train_rows=(0, 5000)", "3186 data rows", "splice.csv"),
    ),
]

VCF = [
    Case(
        "vcf missing",
        lambda t, w: vep(t, w, "v.vcf", "") + ["--vcf", f"{t}/no.vcf"],
        ("{tmp}/no.vcf' not found", "--vcf"),
        needs_checkpoint=True,
    ),
    Case(
        "vcf spaces for tabs",
        lambda t, w: vep(t, w, "v.vcf", VCF_HEADER + "chr 100 . A G\n"),
        ("v.vcf:3:", "CHROM POS ID REF ALT", "fix or remove the line"),
        needs_checkpoint=True,
    ),
    Case(
        "vcf position not a number",
        lambda t, w: vep(t, w, "v.vcf", VCF_HEADER + "c\tx\t.\tA\tG\n"),
        ("v.vcf:3:", "POS 'x'", "fix the line"),
        needs_checkpoint=True,
    ),
    Case(
        "vcf ref not bases",
        lambda t, w: vep(t, w, "v.vcf", VCF_HEADER + "c\t9\t.\tQ\tG\n"),
        ("v.vcf:3:", "REF 'Q'", "fix or remove the line"),
        needs_checkpoint=True,
    ),
    Case(
        "vcf chromosome not in the fasta",
        lambda t, w: vep(t, w, "v.vcf", VCF_HEADER + "chr1\t9\t.\tA\tG\n"),
        ("v.vcf", "CHROM ['chr1']", "lambda_phage", "use the reference"),
        needs_checkpoint=True,
    ),
    Case(
        "vcf ref mismatch",
        lambda t, w: vep(t, w, "v.vcf", VCF_HEADER + f"{LAMBDA_RECORD}\t1\t.\tTTTT\tG\n"),
        ("v.vcf: 1 REF alleles do not match", "v.vcf:3 ", "use the reference"),
        fast=True,
        needs_checkpoint=True,
    ),
    Case(
        "vcf truncated gzip",
        lambda t, w: vep(t, w, "v.vcf.gz", cut_gzip(VCF_HEADER + f"{LAMBDA_RECORD}\t9\t.\tA\tG\t")),
        ("v.vcf.gz: cannot read after line", "complete VCF"),
        needs_checkpoint=True,
    ),
    Case(
        "vcf without variants",
        lambda t, w: vep(t, w, "v.vcf", VCF_HEADER),
        ("v.vcf holds no variant lines", "is this a VCF file?"),
        needs_checkpoint=True,
    ),
    Case(
        "vcf binary",
        lambda t, w: vep(t, w, "v.vcf", bytes(range(256)) * 4),
        ("v.vcf:1:", "VCF"),
        needs_checkpoint=True,
    ),
]

TINY = "configs/pretrain/tiny.py"
CONFIG = [
    Case(
        "unknown key",
        lambda t, w: train(t, "--config.train.num_stepz=5"),
        ("unknown config key 'train.num_stepz'", "num_steps"),
        fast=True,
    ),
    Case(
        "int key given text",
        lambda t, w: train(t, "--config.train.num_steps=ten"),
        ("config key 'train.num_steps' is an int", "'ten'"),
        fast=True,
    ),
    Case(
        "bool key given text",
        lambda t, w: train(t, "--config.data.reverse_complement=maybe"),
        ("'data.reverse_complement' is a bool", "use true or false"),
        fast=True,
    ),
    Case(
        "negative learning rate",
        lambda t, w: train(t, "--config.optim.learning_rate=-1e-3"),
        ("optim.learning_rate=-0.001", "must be positive"),
        fast=True,
    ),
    Case(
        "zero steps",
        lambda t, w: train(t, "--config.train.num_steps=0"),
        ("train.num_steps=0", "at least 1"),
        fast=True,
    ),
    Case(
        "unknown config mode",
        lambda t, w: train(t, config=f"{TINY}:smokek"),
        ("unknown config mode 'smokek'", "choose default, smoke"),
        fast=True,
    ),
    Case(
        "config file missing",
        lambda t, w: train(t, config="configs/pretrain/nope.py"),
        ("config file 'configs/pretrain/nope.py' not found", "--config=configs/pretrain/tiny.py"),
        fast=True,
    ),
    Case(
        "a suite config for pretraining",
        lambda t, w: train(t, config="configs/suites/gue.py:smoke"),
        ("configs/suites/gue.py: get_config()", "':' argument", "drop or fix it"),
        fast=True,
    ),
    Case(
        "misspelt flag",
        lambda t, w: train(t, "--wrokdir=x"),
        ("Unknown command line flag 'wrokdir'",),
        fast=True,
    ),
    Case(
        "no workdir",
        lambda t, w: ["gfm_jax.train", "--config", TINY],
        ("--workdir is required", "--help"),
        fast=True,
    ),
    Case(
        "mesh shape of one size",
        lambda t, w: train(t, "--config.mesh.shape=2"),
        ("mesh.shape=(2,)", "give 4 sizes"),
    ),
    Case(
        "mesh larger than the devices",
        lambda t, w: train(t, "--config.mesh.shape=(2,1,1)"),
        ("mesh.shape=(2, 1, 1)", "1 are available", "set --config.mesh.shape"),
    ),
    Case(
        "length warm-up not increasing",
        lambda t, w: train(t, "--config.data.length_warmup=((5,32),(3,16))"),
        ("data.length_warmup=((5, 32), (3, 16))", "both increasing", "e.g."),
    ),
    Case(
        "unknown RoPE scaling",
        lambda t, w: train(t, "--config.model.rope_scaling=yarn"),
        ("model.rope_scaling must be one of none, linear, ntk",),
    ),
    Case(
        "sequence axis larger than the devices",
        lambda t, w: train(t, "--config.mesh.shape=(1,1,1,4)"),
        ("mesh.shape=(1, 1, 1, 4)", "1 are available", "set --config.mesh.shape"),
    ),
    Case(
        "batch the devices do not divide",
        lambda t, w: train(t, "--cpu_devices", "3"),
        ("train.global_batch_size=16", "make it a multiple of 3"),
    ),
    Case(
        "batch the micro-batches do not divide",
        lambda t, w: train(t, "--config.train.micro_batches=3"),
        ("train.micro_batches=3", "make it a multiple of 3"),
    ),
    Case(
        "unknown schedule",
        lambda t, w: train(t, "--config.optim.schedule=linear"),
        ("optim.schedule='linear'", "choose one of"),
    ),
    Case(
        "unknown tokenizer",
        lambda t, w: train(t, "--config.data.tokenizer=kmer7x"),
        ("'kmer7x'", "data.tokenizer", "choose one of"),
    ),
    Case(
        "finetune unknown key",
        lambda t, w: finetune(t, "--config.task.nmae=x"),
        ("unknown config key 'task.nmae'", "name"),
        fast=True,
    ),
    Case(
        "finetune zero epochs",
        lambda t, w: finetune(t, "--config.finetune.epochs=0"),
        ("finetune.epochs=0", "at least 1"),
        fast=True,
    ),
    Case(
        "finetune fractional epochs",
        lambda t, w: finetune(t, "--config.finetune.epochs=1.5"),
        ("config key 'finetune.epochs' is an int; got '1.5'",),
        fast=True,
    ),
    Case(
        "finetune negative learning rate",
        lambda t, w: finetune(t, "--config.optim.learning_rate=-1"),
        ("optim.learning_rate=-1.0", "must be positive"),
        fast=True,
    ),
    Case(
        "finetune unknown pooling",
        lambda t, w: finetune(t, "--config.finetune.pooling=sum"),
        ("finetune.pooling='sum'", "choose cls, mean, max"),
        fast=True,
    ),
    Case(
        "finetune unknown adapter",
        lambda t, w: finetune(t, "--config.finetune.adapter=prefix"),
        ("finetune.adapter='prefix'", "none, lora, ia3"),
        fast=True,
    ),
    Case(
        "adapter on a frozen backbone",
        lambda t, w: finetune(
            t, "--config.finetune.adapter=ia3", "--config.finetune.freeze_backbone=True"
        ),
        ("finetune.adapter", "drop finetune.freeze_backbone=True"),
        fast=True,
    ),
    Case(
        "strand averaging on a stranded task",
        lambda t, w: finetune(t, "--strand", "both"),
        ("--strand both", "task.stranded=True", "use --strand forward"),
        fast=True,
    ),
    Case(
        "probe of the cnn",
        lambda t, w: ["gfm_jax.evaluate", "probe", *finetune(t)[2:]],
        ("--model=cnn", "pretrained|scratch"),
        fast=True,
    ),
    Case(
        "probe layers not numbers",
        lambda t, w: [
            *("gfm_jax.evaluate", "probe", "--config", "configs/tasks/splice.py:smoke"),
            *("--workdir", str(t), "--config.probe.layers=last"),
        ],
        ("probe.layers='last'", "give 'all' or layer numbers"),
        fast=True,
    ),
    Case(
        "unknown evaluate mode",
        lambda t, w: ["gfm_jax.evaluate", "finetnue", "--workdir", str(t)],
        ("unknown mode 'finetnue'", "choose one of finetune"),
        fast=True,
    ),
    Case(
        "config flags for embed",
        lambda t, w: embed(t, t) + ["--config.model.x=1"],
        ("'config.model.x'", "--help"),
        fast=True,
    ),
    Case(
        "config flags for vep",
        lambda t, w: vep(t, t, "v.vcf", VCF_HEADER) + ["--config.train.num_steps=1"],
        ("'config.train.num_steps'", "--help"),
        fast=True,
    ),
    Case(
        "config flags for perplexity",
        lambda t, w: (
            ["gfm_jax.evaluate", "perplexity", "--workdir", str(t), "--fasta", "a.fa"]
            + ["--config=configs/pretrain/tiny.py"]
        ),
        ("Unknown command line flag 'config'", "--help"),
        fast=True,
    ),
    Case(
        "a task config for pretraining",
        lambda t, w: train(t, config="configs/tasks/splice.py"),
        ("not a pretraining config", "--config=configs/pretrain/tiny.py"),
        fast=True,
    ),
    Case(
        "a pretraining config for fine-tuning",
        lambda t, w: ["gfm_jax.evaluate", "finetune", "--config", TINY, "--workdir", str(t)],
        ("not a task config", "--config=configs/tasks/splice.py"),
        fast=True,
    ),
    Case(
        "a task config for a suite",
        lambda t, w: ["gfm_jax.evaluate", "suite", *finetune(t)[2:6]],
        ("not a suite config", "--config=configs/suites/gue.py"),
        fast=True,
    ),
    Case(
        "seeds not integers",
        lambda t, w: finetune(t)[:-2] + ["--seeds", "a,b"],
        ("--seeds='a,b'", "give integers"),
    ),
]

CHECKPOINTS = [
    Case(
        "evaluate without a checkpoint",
        lambda t, w: embed(t, t),
        ("no checkpoint in {tmp}", "train first with python -m gfm_jax.train"),
    ),
    Case(
        "finetune without a checkpoint",
        lambda t, w: finetune(t)[:-4] + ["--model", "pretrained", "--seeds", "0"],
        ("no checkpoint in {tmp}", "train first"),
    ),
    Case(
        "report without a checkpoint",
        lambda t, w: ["gfm_jax.evaluate", "report", "--workdir", str(t)],
        ("{tmp}/metrics.jsonl not found", "pretrain into"),
        fast=True,
    ),
    Case(
        "init_from without a checkpoint",
        lambda t, w: train(t, f"--config.train.init_from={t}/none"),
        ("no checkpoint in {tmp}/none", "train first"),
    ),
    Case(
        "params data files truncated",
        lambda t, w: embed(t, damaged(t, w, damage_array_files)),
        (
            "checkpoint step 2 in {tmp}/w/ckpt cannot be restored",
            "delete {tmp}/w/ckpt/2",
            "train again",
        ),
        fast=True,
        needs_checkpoint=True,
    ),
    Case(
        "largest params file deleted",
        lambda t, w: embed(t, damaged(t, w, lambda s: largest_params_file(s).unlink())),
        ("checkpoint step 2", "delete {tmp}/w/ckpt/2"),
        needs_checkpoint=True,
    ),
    Case(
        "meta missing",
        lambda t, w: embed(t, damaged(t, w, lambda s: shutil.rmtree(s / "meta"))),
        ("checkpoint step 2", '"meta" was not found', "delete {tmp}/w/ckpt/2"),
        needs_checkpoint=True,
    ),
    Case(
        "perplexity of all-N sequence",
        lambda t, w: [
            "gfm_jax.evaluate",
            "perplexity",
            "--workdir",
            str(w),
            "--fasta",
            write(t / "n.fa", ">n\n" + "N" * 2000 + "\n"),
        ],
        ("n.fa", "more than 10% N", "give sequence that is not N"),
        needs_checkpoint=True,
    ),
    Case(
        "perplexity mesh not numbers",
        lambda t, w: [
            "gfm_jax.evaluate",
            "perplexity",
            "--workdir",
            str(w),
            "--fasta",
            LAMBDA,
            "--mesh",
            "1,x,1,1",
        ],  # fmt: skip
        ("--mesh='1,x,1,1'", "give sizes such as 1,1,1,8"),
        needs_checkpoint=True,
    ),
    Case(
        "embed CSV without its column",
        lambda t, w: (
            embed(t, w)[:4]
            + ["--input", write(t / "e.csv", "seq\nACGT\n"), "--out", str(t / "e.npy")]
        ),
        ("e.csv", "no column 'sequence'", "--column"),
        needs_checkpoint=True,
    ),
]


# ESM-2's protein vocabulary (facebook/esm2_t6_8M_UR50D vocab.txt, MIT): it holds A, C, G, T,
# U and N as amino acids.
ESM2_VOCAB = "\n".join(
    ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-", "<null_1>", "<mask>"]
)


def hf_dir(tmp: pathlib.Path, vocab: str | None = None, **config: object) -> str:
    """A checkpoint directory: NT v2's published config (with `config` changes) and vocab.txt
    (or `vocab`), and a damaged weights file."""
    hf = ROOT / "tests" / "data" / "hf" / "nt_v2"
    out = tmp / "hf"
    out.mkdir()
    write(
        out / "config.json", json.dumps({**json.loads((hf / "config.json").read_text()), **config})
    )
    write(out / "vocab.txt", vocab if vocab is not None else (hf / "vocab.txt").read_text())
    write(out / "model.safetensors", b"not safetensors")
    return str(out)


def broken_config(tmp: pathlib.Path) -> str:
    source = hf_dir(tmp)
    write(pathlib.Path(source) / "config.json", "{")
    return source


def interop_import(tmp: pathlib.Path, source: str) -> list[str]:
    return ["gfm_jax.interop", "import", source, "--workdir", str(tmp / "w")]


INTEROP = [
    Case(
        "import source missing",
        lambda t, w: interop_import(t, f"{t}/nope"),
        ("{tmp}/nope: no such directory", "hf:<org>/<name>"),
        fast=True,
    ),
    Case(
        "import hf id malformed",
        lambda t, w: interop_import(t, "hf:just-a-name"),
        ("hf:just-a-name", "hf:<org>/<name>[@revision]"),
    ),
    Case(
        "import config not json",
        lambda t, w: interop_import(t, broken_config(t)),
        ("{tmp}/hf/config.json", "not valid JSON"),
    ),
    Case(
        "import protein vocabulary",
        lambda t, w: interop_import(t, hf_dir(t, ESM2_VOCAB, vocab_size=33, mask_token_id=32)),
        ("{tmp}/hf/vocab.txt", "letters EFILOPQXZ are not nucleotides", "protein model"),
    ),
    Case(
        "import damaged weights",
        lambda t, w: interop_import(t, hf_dir(t)),
        ("{tmp}/hf/model.safetensors", "unreadable weights"),
    ),
    Case(
        "checkpoint tokenizer without init_from",
        lambda t, w: train(t, "--config.data.tokenizer=checkpoint"),
        ("data.tokenizer='checkpoint'", "--config.train.init_from"),
    ),
]

ALL = FASTA + CSV + VCF + CONFIG + CHECKPOINTS + INTEROP


def params(cases: list[Case]) -> list:
    return [
        pytest.param(c, id=c.name.replace(" ", "_"), marks=() if c.fast else pytest.mark.slow)
        for c in cases
    ]


def assert_one_line_error(result: subprocess.CompletedProcess, needles: tuple[str, ...]) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_the_corpus_is_large_and_covers_every_kind_of_input():
    assert len(ALL) >= 40 and len({c.name for c in ALL}) == len(ALL)
    assert all(any(c.fast for c in kind) for kind in (FASTA, CSV, VCF, CONFIG, CHECKPOINTS))


@pytest.mark.parametrize("case", params(ALL))
def test_bad_input(case: Case, tmp_path: pathlib.Path, request) -> None:
    # The shared checkpoint (conftest.py); cases that damage one damage a copy (`damaged`).
    work = request.getfixturevalue("micro_checkpoint") if case.needs_checkpoint else None
    result = run_module(*case.args(tmp_path, work))
    assert_one_line_error(result, tuple(n.replace("{tmp}", str(tmp_path)) for n in case.needles))
    assert not (tmp_path / "run").exists()  # a failed training run leaves no workdir


# --- Signals --------------------------------------------------------------------------------


def start(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def wait_for_handlers(process: subprocess.Popen) -> None:
    """Until the process catches SIGTERM (Python itself catches only SIGINT at start)."""
    status = pathlib.Path(f"/proc/{process.pid}/status")
    for _ in range(3000):
        caught = [line for line in status.read_text().splitlines() if line.startswith("SigCgt:")]
        if int(caught[0].split()[1], 16) >> (signal.SIGTERM - 1) & 1:
            return
        time.sleep(0.001)
    raise AssertionError("the process never installed its SIGTERM handler")


def stop_when(process: subprocess.Popen, marker: str | None, signum: int) -> tuple[str, str]:
    """Sends `signum` once `marker` is printed on stdout (None: at once); returns the output."""
    seen = []
    while marker is not None:
        line = process.stdout.readline()
        assert line, "".join(seen) + process.stderr.read()[-3000:]
        seen.append(line)
        if marker in line:
            break
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    return "".join(seen) + out, err


def assert_stopped(process: subprocess.Popen, err: str, program: str, signum: int) -> None:
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert [line for line in err.splitlines() if "stopped by" in line] == [
        f"{program}: stopped by {name}"
    ], err[-3000:]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_libraries_import_is_one_line(tmp_path, signum):
    process = start("gfm_jax.train", "--config", f"{TINY}:smoke", "--workdir", str(tmp_path / "w"))
    wait_for_handlers(process)  # installed first: JAX and TensorFlow are still importing
    _, err = stop_when(process, None, signum)
    assert_stopped(process, err, "gfm_jax.train", signum)
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_ctrl_c_while_training_starts_is_one_line(tmp_path):
    process = start(*train(tmp_path, *micro_overrides()))
    _, err = stop_when(process, "gfm_jax 0.1.0:", signal.SIGINT)  # the first line of set-up
    assert_stopped(process, err, "gfm_jax.train", signal.SIGINT)
    assert not list((tmp_path / "run" / "ckpt").glob("[0-9]*"))  # no step was half-written


@pytest.mark.slow
def test_sigterm_while_fine_tuning_is_one_line(tmp_path):
    process = start(*finetune(tmp_path, "--config.finetune.epochs=50"))
    _, err = stop_when(process, "task splice", signal.SIGTERM)
    assert_stopped(process, err, "gfm_jax.evaluate", signal.SIGTERM)
