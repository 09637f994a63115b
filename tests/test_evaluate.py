import json

import numpy as np
import pytest
from conftest import micro_overrides, run_module

from gfm_jax import config as config_lib
from gfm_jax.data import tasks
from gfm_jax.data.tokenizers import get_tokenizer
from gfm_jax.errors import UserError
from gfm_jax.evaluate import metrics


def test_mcc_matches_the_binary_formula_and_edge_cases():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    preds = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    tp, tn, fp, fn = 3, 3, 1, 1
    expect = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert metrics.mcc(labels, preds, 2) == pytest.approx(expect)
    three = np.array([0, 1, 2, 2, 1, 0])
    assert metrics.mcc(three, three, 3) == pytest.approx(1.0)
    assert metrics.mcc(three, np.zeros_like(three), 3) == 0.0
    assert metrics.accuracy(labels, preds) == 0.75
    assert metrics.macro_f1(three, three, 3) == pytest.approx(1.0)


def test_splice_statlog_split_drops_leaked_test_rows():
    config = config_lib.load_config("configs/tasks/splice.py")
    task = tasks.load_csv_task(config.task, seed=0)
    assert task.label_names == ("EI", "IE", "N")
    assert len(task.train) + len(task.val) == 2000
    train_seqs = set(task.train.sequences) | set(task.val.sequences)
    assert not train_seqs & set(task.test.sequences)
    assert 0 < 1186 - len(task.test) < 200 and "dropped" in task.notes[0]
    ids, mask = tasks.encode_split(get_tokenizer("char"), task.test, task.path)
    assert ids.shape == (len(task.test), 61) and mask.all()  # CLS + 60 nt
    assert (ids[:, 0] == get_tokenizer("char").cls_id).all()


@pytest.mark.parametrize(
    "content, key, message",
    [
        ("sequence,target\nACGT,EI\n", "task.label_column=label", "no column 'label'"),
        ("", "task.label_column=label", "is empty"),
        ("sequence,label\n", "task.label_column=label", "no rows"),
        ("sequence,label\nACGT,EI\nACXT,IE\nACGT,N\n", "task.label_column=label", "data row 2"),
    ],
)
def test_bad_task_files(tmp_path, content, key, message):
    path = tmp_path / "task.csv"
    path.write_text(content)
    config = config_lib.load_config(
        "configs/tasks/splice.py",
        [
            f"--config.task.csv={path}",
            f"--config.{key}",
            "--config.task.train_rows=(0,2)",
            "--config.task.test_rows=(2,3)",
        ],
    )
    with pytest.raises(UserError, match=message):
        task = tasks.load_csv_task(config.task, seed=0)
        for split in (task.train, task.val, task.test):
            tasks.encode_split(get_tokenizer("char"), split, task.path)


def test_finetune_cli_restores_params_only_and_writes_results(tmp_path):
    work = tmp_path / "w"
    r = run_module(
        "gfm_jax.train",
        "--config",
        "configs/pretrain/tiny.py",
        "--workdir",
        str(work),
        *micro_overrides(**{"train.num_steps": 2, "train.checkpoint_every": 2}),
    )
    assert r.returncode == 0, r.stderr
    # Remove the optimizer state: params-only evaluation must not need it.
    import shutil

    shutil.rmtree(work / "ckpt" / "2" / "opt_state")
    small = [
        "--config.task.train_rows=(0,256)",
        "--config.task.test_rows=(2000,2128)",
        "--config.finetune.epochs=1",
    ]
    for init in ("pretrained", "scratch"):
        r = run_module(
            "gfm_jax.evaluate",
            "finetune",
            "--config",
            "configs/tasks/splice.py",
            "--workdir",
            str(work),
            "--init",
            init,
            *small,
        )
        assert r.returncode == 0, r.stderr
    results = {p.name: json.loads(p.read_text()) for p in (work / "eval").glob("*.json")}
    assert set(results) == {
        "finetune_splice_pretrained_seed0.json",
        "finetune_splice_scratch_seed0.json",
    }
    for res in results.values():
        assert 0.0 <= res["test"]["accuracy"] <= 1.0 and -1.0 <= res["test"]["mcc"] <= 1.0
        assert res["sizes"]["train"] + res["sizes"]["val"] == 256 and res["checkpoint_step"] == 2
    r = run_module("gfm_jax.evaluate", "report", "--workdir", str(work))
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| random init")]
    assert len(rows) == 1 and "not run" not in rows[0]
    assert "| pretrained (step 2)" in r.stdout
