"""TFDS builders: the prepared datasets equal what the code paths they version produce."""

import numpy as np
import pytest

from gfm_jax import command_line
from gfm_jax import config as config_lib
from gfm_jax.data import tasks, tfds_datasets
from gfm_jax.data.corpus import load_corpus
from gfm_jax.data.pipeline import EVAL_SEED, WindowPipeline
from gfm_jax.data.tokenizers import get_tokenizer
from gfm_jax.errors import UserError


def test_task_splits_equal_load_task_and_the_cache_is_reused(tmp_path):
    task = tasks.load_task(command_line.load_config("configs/tasks/splice.py").task)
    for split, expected in (("train", task.train), ("validation", task.val), ("test", task.test)):
        rows = list(tfds_datasets.load_task("splice", split, str(tmp_path)).as_numpy_iterator())
        assert [r["sequence"].decode() for r in rows] == list(expected.sequences)
        np.testing.assert_array_equal([r["label"] for r in rows], expected.labels)
        assert [f"splice.csv:{r['row']}" for r in rows] == list(expected.rows)
    prepared = tmp_path / "gfm_task" / "splice" / "1.2.0"  # versioned
    info = prepared / "dataset_info.json"
    stamp = info.stat().st_mtime_ns
    again = tfds_datasets.load_task("splice", "test", str(tmp_path))
    assert info.stat().st_mtime_ns == stamp  # read from disk, not rebuilt
    assert sum(1 for _ in again) == len(task.test)


def test_eval_windows_equal_the_training_loops_held_out_batches(tmp_path):
    got = list(
        tfds_datasets.load_eval_windows("builtin_char_128", str(tmp_path)).as_numpy_iterator()
    )
    assert len(got) == 2048
    data = config_lib.pretrain_defaults().data
    data.window_len = 128
    pipe = WindowPipeline(load_corpus(["builtin"]), get_tokenizer("char"), data, seed=EVAL_SEED)
    # The held-out stream does not depend on the batch size or the training seed.
    expected = list(
        pipe.dataset("val", global_batch=256, first_step=0, last_step=8).as_numpy_iterator()
    )
    for key in ("inputs", "targets", "weights", "index"):
        np.testing.assert_array_equal(
            np.stack([g[key] for g in got]), np.concatenate([b[key] for b in expected])
        )


def test_unknown_names_list_the_valid_ones(tmp_path):
    with pytest.raises(UserError, match="'builtin_char_128'"):
        tfds_datasets.load_eval_windows("builtin_char_999", str(tmp_path))
    with pytest.raises(UserError, match="'splice'"):
        tfds_datasets.load_task("promoters", "test", str(tmp_path))


PREPARE_SPLICE = """
import sys
from gfm_jax.data import tfds_datasets
print(sum(1 for _ in tfds_datasets.load_task("splice", "test", sys.argv[1])))
"""


@pytest.mark.slow
def test_processes_preparing_one_dataset_at_once_take_turns(tmp_path):
    """Two processes of a job (fine-tuning on a TFDS task, say) build the same dataset into the
    same fresh folder at the same moment: both must get it, neither a half-built one."""
    import subprocess
    import sys

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PREPARE_SPLICE, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
    task = tasks.load_task(command_line.load_config("configs/tasks/splice.py").task)
    assert [int(out.split()[-1]) for out, _ in outputs] == [len(task.test)] * 2
    assert not list(tmp_path.rglob("*incomplete*"))  # no temporary build left behind
