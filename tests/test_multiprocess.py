"""Two jax.distributed processes on 127.0.0.1 build the same global batches as one process."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from gfm_jax import command_line
from gfm_jax.data.corpus import load_corpus
from gfm_jax.data.pipeline import WindowPipeline
from gfm_jax.data.tokenizers import get_tokenizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_two_processes_build_their_halves_of_the_single_process_batches(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "multiprocess_worker.py"),
                str(i),
                "2",
                str(port),
                str(tmp_path),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]
    got = np.load(tmp_path / "global_batches.npz")

    config = command_line.load_config("configs/pretrain/tiny.py", ["--config.data.window_len=64"])
    pipe = WindowPipeline(load_corpus(["builtin"]), get_tokenizer("char"), config.data, seed=0)
    single = list(
        pipe.dataset("train", global_batch=16, first_step=3, last_step=8).as_numpy_iterator()
    )
    assert got["inputs"].shape == (5, 16, 65)
    for step, batch in enumerate(single):
        for key in ("inputs", "targets", "weights"):
            np.testing.assert_array_equal(got[key][step], batch[key])
        np.testing.assert_array_equal(got["index"][step], batch["index"])
        assert len(np.unique(got["index"][step])) == 16  # no window index twice within a step
        # ... and no window content twice either (the two hosts drew different windows).
        assert len({row.tobytes() for row in got["targets"][step]}) == 16
