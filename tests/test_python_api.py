"""docs/python_api.md runs as written: its Python blocks execute in order against a workdir laid
out as `make quickstart` leaves it (a micro pretraining, a splice and a LoRA species fine-tune)."""

import os
import pathlib
import re

import pytest
from conftest import ROOT, micro_overrides, run_module

from gfm_jax.evaluate.__main__ import main


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


@pytest.mark.slow
def test_the_python_api_page_runs_as_written(tmp_path, monkeypatch, capsys):
    blocks = python_blocks((ROOT / "docs" / "python_api.md").read_text())
    assert len(blocks) >= 4
    work = tmp_path / "runs" / "quickstart"
    steps = {"train.num_steps": 2, "train.checkpoint_every": 2}
    r = run_module("gfm_jax.train", "--config", "configs/pretrain/tiny.py", "--workdir", str(work),
                   *micro_overrides(**steps))  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GFM_JAX_MALLOC_DEFAULTS", "1")
    configs = {name: str(ROOT / "configs" / "tasks" / name) for name in ("splice.py", "species.py")}
    main(["finetune", "--config", configs["splice.py"] + ":smoke", "--workdir", str(work)])
    main(["finetune", "--config", configs["species.py"] + ":smoke", "--workdir", str(work),
          "--config.finetune.adapter=lora"])  # fmt: skip
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python_api.md", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    assert "variants scored" in printed and "['EI', 'IE', 'N']" in printed
    assert pathlib.Path("runs/quickstart/species_lora_merged").is_dir()
    assert os.getcwd() == str(tmp_path)
