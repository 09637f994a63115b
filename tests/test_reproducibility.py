"""Same seed, config, software and machine: the same numbers to the last digit, process to
process. Each result is computed in two fresh processes (with different hash seeds, so nothing
may depend on set or dict order) and compared exactly."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, micro_overrides, run_module


def run_with_hash_seed(hash_seed: int, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONHASHSEED"] = str(hash_seed)
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def run_json(directory: pathlib.Path) -> dict:
    """The one run JSON in `directory`, less its wall time and where its model was saved."""
    (path,) = [p for p in directory.glob("*.json") if not p.name.startswith("summary")]
    result = json.loads(path.read_text())
    del result["seconds"]
    result.pop("checkpoint", None)
    return result


@pytest.mark.slow
def test_fine_tuning_a_probe_and_embeddings_are_the_same_in_two_processes(tmp_path):
    work = tmp_path / "w"
    steps = {"train.num_steps": 20, "train.checkpoint_every": 20}
    r = run_module(
        "gfm_jax.train", "--config", "configs/pretrain/tiny.py", "--workdir", str(work),
        *micro_overrides(**steps),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    fasta = tmp_path / "q.fa"
    fasta.write_text("".join(f">s{i}\n{'ACGGTCA' * (5 + i)}\n" for i in range(12)))
    outputs = []
    for hash_seed in (1, 2):
        out = tmp_path / f"run{hash_seed}"
        task = ["--config", "configs/tasks/splice.py:smoke", "--workdir", str(work)]
        commands = [
            ["finetune", *task, "--model", "pretrained", "--seeds", "1", "--out", f"{out}/ft"]
            + ["--config.finetune.epochs=3"],  # the best of three epochs is kept
            ["probe", *task, "--seeds", "0", "--out", f"{out}/probe"],
            ["embed", "--workdir", str(work), "--input", str(fasta), "--out", f"{out}/e.npy"],
        ]
        for command in commands:
            r = run_with_hash_seed(hash_seed, "gfm_jax.evaluate", *command)
            assert r.returncode == 0, r.stderr[-3000:]
        outputs.append(out)
    first, second = outputs
    for name in ("ft", "probe"):
        a, b = run_json(first / name), run_json(second / name)
        assert a["test"] and a == b, (a["test"], b["test"])
    assert len(run_json(first / "ft")["history"]) == 3
    from gfm_jax import api  # the saved fine-tuned parameters are equal bit for bit too

    saved = [api.load_finetuned(next((out / "ft").glob("*seed1.json"))) for out in outputs]
    for x, y in zip(*(jax.tree.leaves(m.params) for m in saved), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    a, b = np.load(first / "e.npy"), np.load(second / "e.npy")
    assert a.shape[0] >= 12 and a.shape[1] == 32 and a.std() > 0 and np.array_equal(a, b)
    assert (first / "e.tsv").read_text() == (second / "e.tsv").read_text()
