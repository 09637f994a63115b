"""The whole quickstart, end to end, checked against its promises (slow: about 7 minutes)."""

import json
import os
import subprocess

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_quickstart_pretrains_evaluates_and_prints_the_table(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["WORKDIR"] = str(tmp_path / "qs")
    r = subprocess.run(
        ["bash", "scripts/quickstart.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "qs" / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in rows if x["split"] == "val"]
    assert val[0]["step"] == 0 and val[-1]["step"] == 120
    assert val[-1]["loss"] < val[0]["loss"]
    assert val[-1]["loss"] < val[-1]["unigram_entropy"]  # beats base composition
    assert (tmp_path / "qs" / "ckpt" / "120" / "params").is_dir()
    table = r.stdout.split("== gfm_jax quickstart results")[1]
    needles = ("random init (step 0)", "pretrained (step 120)", "CNN baseline", "nats below it")
    for needle in (*needles, "test MCC", "seeds [0, 1, 2]"):
        assert needle in table
    assert "not run" not in table
