"""Checkpoints that survive preemption: SIGKILL and SIGTERM, other meshes, params only, faults."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT, damage_array_files, micro_overrides, run_module

from gfm_jax import checkpoint, command_line, sharding
from gfm_jax import config as config_lib
from gfm_jax.errors import UserError
from gfm_jax.evaluate import pretrained
from gfm_jax.models.encoder import EncoderConfig
from gfm_jax.models.heads import MaskedLM
from gfm_jax.train import optim
from gfm_jax.train import state as state_lib

ONE_DEVICE = sharding.make_mesh((1, 1, 1), jax.devices()[:1])


def train_args(workdir, **extra):
    values = {"train.eval_every": 1000, "train.log_every": 1, **extra}
    return [
        "--config",
        "configs/pretrain/tiny.py",
        *micro_overrides(**values),
        "--workdir",
        workdir,
    ]


def start_training(workdir, **extra) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.Popen(
        [sys.executable, "-m", "gfm_jax.train", *train_args(str(workdir), **extra)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, process, timeout=240.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"training ended early: {process.communicate()[1]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def saved_steps(workdir: pathlib.Path) -> list[int]:
    directory = workdir / "ckpt"
    return (
        sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
        if directory.is_dir()
        else []
    )


def logged_step(workdir: pathlib.Path) -> int:
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    train = [json.loads(line) for line in lines if '"train"' in line]
    return train[-1]["step"] if train else 0


def final_params(workdir):
    pre = pretrained.describe(workdir)
    return pre.step, jax.device_get(pretrained.load_params(workdir, pre, ONE_DEVICE, ()))


def assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow  # three training processes, about 90 s
def test_sigkill_after_a_save_then_resume_equals_the_uninterrupted_run(tmp_path):
    steps = {"train.num_steps": 40, "train.checkpoint_every": 4}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    r = run_module("gfm_jax.train", *train_args(str(whole), **steps))
    assert r.returncode == 0, r.stderr

    process = start_training(killed, **steps)
    wait_for(lambda: len(saved_steps(killed)) > 0, process)
    process.send_signal(signal.SIGKILL)  # no handler, no cleanup: as a lost machine
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    kept = saved_steps(killed)[-1]
    assert kept < 40

    r = run_module("gfm_jax.train", *train_args(str(killed), **steps))
    assert r.returncode == 0, r.stderr
    assert f"resumed from {killed / 'ckpt'}/{kept}" in r.stdout
    (step_a, params_a), (step_b, params_b) = final_params(whole), final_params(killed)
    assert step_a == step_b == 40
    assert_same_params(params_a, params_b)  # bitwise: same updates on the same batches


@pytest.mark.slow  # long end to end: in the slow set CI runs
def test_sigterm_saves_the_current_step_and_exits_nonzero(tmp_path):
    process = start_training(tmp_path, **{"train.num_steps": 5000, "train.checkpoint_every": 1000})
    wait_for(lambda: logged_step(tmp_path) >= 5, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    steps = saved_steps(tmp_path)
    assert len(steps) == 1 and steps[0] >= 5 and steps[0] % 1000 != 0  # not a periodic save
    assert f"stopped by SIGTERM after saving step {steps[0]}" in stderr
    assert pretrained.describe(tmp_path).step == steps[0]


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path):
    workdir = tmp_path / "w"
    process = start_training(workdir, **{"train.num_steps": 5000})
    wait_for(workdir.exists, process)  # train() has started: set-up, compile, step-0 eval
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert len([line for line in stderr.splitlines() if "stopped by SIGINT" in line]) == 1


def small_state(mesh):
    config = command_line.load_config("configs/pretrain/tiny.py", micro_overrides())
    model = MaskedLM(EncoderConfig.from_config(config.model, 12), mesh, config_lib.DEFAULT_RULES)
    tx = optim.make_optimizer(config.optim, 10)
    init = lambda rng: model.init(rng, np.zeros((1, 16), np.int32))["params"]  # noqa: E731
    boxed = state_lib.abstract_state(init, tx, jax.random.key(0))
    shardings = sharding.tree_shardings(boxed, mesh, config_lib.DEFAULT_RULES)
    return init, tx, boxed, shardings


def save_on_eight_devices(workdir):
    mesh = sharding.make_mesh((2, 2, 2))
    init, tx, _, _ = small_state(mesh)
    state, _ = state_lib.create_sharded_state(
        init, tx, jax.random.key(0), mesh, config_lib.DEFAULT_RULES
    )
    ckpt = checkpoint.Checkpointer(workdir)
    ckpt.save(3, state.params, state.opt_state, {"step": 3, "mesh": dict(mesh.shape)})
    ckpt.wait()
    ckpt.close()
    return jax.device_get(state)


@pytest.mark.parametrize("devices", [pytest.param(4, marks=pytest.mark.slow), 1])
def test_a_checkpoint_written_on_8_devices_restores_on_fewer(tmp_path, devices):
    saved = save_on_eight_devices(tmp_path)
    mesh = sharding.make_mesh((1, devices, 1), jax.devices()[:devices])
    _, _, boxed, shardings = small_state(mesh)
    ckpt = checkpoint.Checkpointer(tmp_path, create=False)
    params, opt_state, meta = ckpt.restore(
        3,
        state_lib.abstract_arrays(boxed.params, shardings.params),
        state_lib.abstract_arrays(boxed.opt_state, shardings.opt_state),
    )
    ckpt.close()
    assert meta["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1}
    restored = jax.tree.leaves(params) + jax.tree.leaves(opt_state)
    assert {d for x in restored for d in x.devices()} == set(jax.devices()[:devices])
    assert_same_params(jax.device_get(params), saved.params)
    assert_same_params(jax.device_get(opt_state), saved.opt_state)


@pytest.mark.slow  # slow set (CI runs it): keeps the default suite under 10 minutes
def test_params_only_restore_in_a_fresh_process_never_reads_the_optimizer_state(tmp_path):
    r = run_module("gfm_jax.train", *train_args(str(tmp_path), **{"train.num_steps": 4}))
    assert r.returncode == 0, r.stderr
    step_dir = tmp_path / "ckpt" / "4"
    shutil.rmtree(step_dir / "opt_state")  # gone: a params-only restore must not need it
    code = (
        "import sys, jax, numpy as np\n"
        "from gfm_jax import sharding\n"
        "from gfm_jax.evaluate import pretrained\n"
        "pre = pretrained.describe(sys.argv[1])\n"
        "mesh = sharding.make_mesh((1, 1, 1))\n"
        "params = pretrained.load_params(sys.argv[1], pre, mesh, ())\n"
        "print(pre.step, sum(float(np.abs(x).sum()) for x in jax.tree.leaves(params)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    step, total = out.stdout.split()
    assert int(step) == 4 and float(total) > 0


def truncate_arrays(step_dir: pathlib.Path) -> None:
    """Cuts every array data file of the step's params in half, as a full disk would."""
    files = [p for p in (step_dir / "params").rglob("*") if p.is_file() and p.stat().st_size > 64]
    assert files
    for path in files:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


@pytest.mark.slow  # three training processes
def test_a_truncated_checkpoint_is_detected_and_fallback_resumes_from_the_one_before(tmp_path):
    steps = {"train.num_steps": 8, "train.checkpoint_every": 4}
    r = run_module("gfm_jax.train", *train_args(str(tmp_path), **steps))
    assert r.returncode == 0, r.stderr
    truncate_arrays(tmp_path / "ckpt" / "8")

    with pytest.raises(checkpoint.CorruptCheckpoint, match="checkpoint step 8"):
        final_params(tmp_path)
    more = {**steps, "train.num_steps": 12}
    r = run_module("gfm_jax.train", *train_args(str(tmp_path), **more))
    assert r.returncode == 2
    assert "checkpoint step 8" in r.stderr and "fallback_on_corrupt" in r.stderr
    r = run_module(
        "gfm_jax.train", *train_args(str(tmp_path), **more, **{"train.fallback_on_corrupt": True})
    )
    assert r.returncode == 0, r.stderr
    assert f"resumed from {tmp_path / 'ckpt'}/4" in r.stdout
    assert (tmp_path / "ckpt" / "8.corrupt").is_dir()  # kept for inspection, not a step
    assert "train.num_steps: 8 -> 12" in r.stdout  # a changed schedule is allowed and logged


def test_a_partial_save_is_ignored(tmp_path):
    """A process killed mid-save leaves Orbax's temporary directory, never a listed step."""
    saved = save_on_eight_devices(tmp_path)
    ckpt_dir = tmp_path / "ckpt"
    partial = ckpt_dir / "5.orbax-checkpoint-tmp-1234567890"
    shutil.copytree(ckpt_dir / "3", partial)
    truncate_arrays(partial)
    assert checkpoint.Checkpointer(tmp_path, create=False).all_steps() == [3]
    _, _, boxed, shardings = small_state(ONE_DEVICE)
    abstract = state_lib.abstract_arrays(boxed.params, shardings.params)
    step, params = checkpoint.restore_params(tmp_path, abstract)
    assert step == 3
    assert_same_params(jax.device_get(params), saved.params)


@pytest.mark.slow  # three training processes
def test_init_from_loads_params_only_and_refuses_another_shape(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    r = run_module("gfm_jax.train", *train_args(str(source), **{"train.num_steps": 4}))
    assert r.returncode == 0, r.stderr
    r = run_module(
        "gfm_jax.train",
        *train_args(str(target), **{"train.num_steps": 2, "train.init_from": str(source)}),
    )
    assert r.returncode == 0, r.stderr
    assert f"parameters from {source}" in r.stdout
    r = run_module(
        "gfm_jax.train",
        *train_args(
            str(tmp_path / "other"),
            **{"train.num_steps": 2, "train.init_from": str(source), "model.mlp_dim": 32},
        ),
    )
    assert r.returncode == 2 and "model.mlp_dim" in r.stderr
    # Resuming the workdir itself with another tokenizer (another vocabulary) is refused too.
    r = run_module(
        "gfm_jax.train",
        *train_args(str(target), **{"train.num_steps": 4, "data.tokenizer": "kmer3"}),
    )
    assert r.returncode == 2 and "data.tokenizer" in r.stderr


@pytest.mark.parametrize("damage", [truncate_arrays, damage_array_files])
def test_a_truncated_params_file_is_reported_with_its_step(tmp_path, damage):
    save_on_eight_devices(tmp_path)
    damage(tmp_path / "ckpt" / "3")
    _, _, boxed, shardings = small_state(ONE_DEVICE)
    abstract = state_lib.abstract_arrays(boxed.params, shardings.params)
    with pytest.raises(checkpoint.CorruptCheckpoint, match="checkpoint step 3 in .*ckpt"):
        checkpoint.restore_params(tmp_path, abstract)


@pytest.mark.slow  # three processes
def test_one_damaged_array_file_is_one_line_everywhere_and_training_falls_back(tmp_path):
    steps = {"train.num_steps": 8, "train.checkpoint_every": 4}
    r = run_module("gfm_jax.train", *train_args(str(tmp_path), **steps))
    assert r.returncode == 0, r.stderr
    damage_array_files(tmp_path / "ckpt" / "8")
    fasta = tmp_path / "s.fa"
    fasta.write_text(">s\n" + "ACGT" * 40 + "\n")
    r = run_module(
        "gfm_jax.evaluate", "embed", "--workdir", str(tmp_path), "--input", str(fasta),
        "--out", str(tmp_path / "e.npy"),
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    (line,) = [x for x in r.stderr.splitlines() if "error:" in x]
    assert "checkpoint step 8" in line and f"delete {tmp_path / 'ckpt' / '8'} to use step 4" in line
    more = {**steps, "train.fallback_on_corrupt": True, "train.num_steps": 12}
    r = run_module("gfm_jax.train", *train_args(str(tmp_path), **more))
    assert r.returncode == 0, r.stderr
    assert f"resumed from {tmp_path / 'ckpt'}/4" in r.stdout


def test_retention_keeps_the_last_steps_and_the_best_by_the_held_out_metric(tmp_path):
    ckpt = checkpoint.Checkpointer(tmp_path, keep=1, best_metric="loss", best_mode="min")
    params = {"w": np.zeros(3, np.float32)}
    for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 4.0)]:
        ckpt.save(step, params, params, {"step": step}, {"loss": loss})
        ckpt.wait()
    assert ckpt.all_steps() == [2, 4]  # the best (loss 1.0) and the latest
    ckpt.close()
    with pytest.raises(UserError, match="best_mode"):
        checkpoint.Checkpointer(tmp_path, best_metric="accuracy", best_mode="highest")


def test_stop_requests_leave_signals_alone_off_the_main_thread():
    import threading

    from gfm_jax.train.preemption import StopRequests

    before = signal.getsignal(signal.SIGTERM)
    results = []
    worker = threading.Thread(target=lambda: results.append(StopRequests().stop_after(1)))
    worker.start()
    worker.join()
    assert results == [None] and signal.getsignal(signal.SIGTERM) is before
    stop = StopRequests()  # on the main thread it installs its handler, and close() restores
    assert signal.getsignal(signal.SIGTERM) is not before
    stop.close()
    assert signal.getsignal(signal.SIGTERM) is before
