"""Multi-host runs on one machine (2 processes x 4 CPU devices against 1 x 8), launch scripts
and sweeps."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT, micro_overrides, run_module
from test_multiprocess import free_port

from gfm_jax import distributed
from gfm_jax.evaluate import pretrained

STEPS = {"train.num_steps": 20, "train.checkpoint_every": 10, "train.log_every": 1}
# The tiny preset's own model (micro_overrides shrinks it for the other tests).
TINY_MODEL = {
    "model.num_layers": 4,
    "model.hidden_size": 96,
    "model.num_heads": 4,
    "model.mlp_dim": 256,
}
TRAIN = ["-m", "gfm_jax.train", "--config", "configs/pretrain/tiny.py"]


def env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


def one_process(workdir, **overrides) -> subprocess.CompletedProcess:
    r = run_module(
        "gfm_jax.train",
        *TRAIN[2:],
        "--workdir",
        str(workdir),
        "--cpu_devices",
        "8",
        *micro_overrides(**{**STEPS, **overrides}),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def two_processes(workdir, log_dir, **overrides) -> None:
    cmd = [sys.executable, *TRAIN, "--workdir", str(workdir)]
    r = subprocess.run(
        [
            "bash",
            "scripts/launch_local.sh",
            "--processes",
            "2",
            "--cpu-devices",
            "4",
            "--log-dir",
            str(log_dir),
            "--",
            *cmd,
            *micro_overrides(**{**STEPS, **overrides}),
        ],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    logs = "".join(p.read_text() for p in sorted(log_dir.glob("launch_local.*.log")))
    assert r.returncode == 0, r.stderr + logs[-3000:]


def train_losses(workdir) -> dict[int, float]:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def assert_params_close(a_dir, b_dir, tol=1e-5) -> None:
    a, b = pretrained.load(a_dir).params, pretrained.load(b_dir).params
    assert pretrained.describe(a_dir).step == pretrained.describe(b_dir).step
    worst = max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
    assert worst < tol, worst


@pytest.mark.slow
def test_two_processes_of_four_devices_equal_one_of_eight_and_resume_in_one(tmp_path):
    two_processes(tmp_path / "two", tmp_path / "logs", **TINY_MODEL)
    one_process(tmp_path / "one", **TINY_MODEL)
    two, one = train_losses(tmp_path / "two"), train_losses(tmp_path / "one")
    assert sorted(two) == sorted(one) == list(range(1, 21))
    for step in one:
        assert abs(two[step] - one[step]) < 1e-5, (step, two[step], one[step])
    assert (tmp_path / "two" / "ckpt" / "10").is_dir()  # the checkpoint in the middle
    assert_params_close(tmp_path / "two", tmp_path / "one")
    # The 2-process checkpoint resumes in 1 process (8 devices) and continues as the 1-process
    # run does.
    r = one_process(tmp_path / "two", **TINY_MODEL, **{"train.num_steps": 24})
    assert "resum" in (r.stdout + r.stderr).lower()
    one_process(tmp_path / "one", **TINY_MODEL, **{"train.num_steps": 24})
    assert_params_close(tmp_path / "two", tmp_path / "one")


@pytest.mark.slow
def test_killing_one_process_stops_the_other_and_a_restart_resumes(tmp_path):
    port = free_port()
    long_run = {"train.num_steps": 400, "train.checkpoint_every": 5, "train.eval_every": 1000}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                *TRAIN,
                "--workdir",
                str(tmp_path / "w"),
                *micro_overrides(**long_run),
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num_processes",
                "2",
                "--process_id",
                str(i),
                "--cpu_devices",
                "4",
                "--heartbeat_timeout",
                "10",
            ],
            cwd=ROOT,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "w" / "ckpt" / "10").is_dir():
            assert time.monotonic() < deadline and procs[0].poll() is None, "no checkpoint"
            time.sleep(0.5)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        out, _ = procs[0].communicate(timeout=120)  # bounded: a hang fails the test here
        waited = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode != 0 and waited < 60, (procs[0].returncode, waited)
    # JAX's coordination service names the dead task; under load the step's collective with
    # the dead peer may abort the process first (a fatal-error dump instead of the message).
    reasons = ("another task died", "unhealthy", "heartbeat timeout", "Fatal Python error: Abort")
    assert any(r in out for r in reasons), out[:3000]
    # Restarting both processes resumes from the last complete checkpoint.
    last = max(int(p.name) for p in (tmp_path / "w" / "ckpt").iterdir() if p.name.isdigit())
    two_processes(tmp_path / "w", tmp_path / "logs", **{**long_run, "train.num_steps": last + 3})
    assert (tmp_path / "w" / "ckpt" / str(last + 3)).is_dir()
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("launch_local.*.log"))
    assert f"ckpt/{last} (saved on mesh" in logs and "resumed from" in logs


def test_launch_scripts_dry_run_print_the_exact_commands():
    def dry(script, *args):
        r = subprocess.run(
            [
                "bash",
                f"scripts/{script}",
                *args,
                "--dry-run",
                "--",
                "python",
                "-m",
                "gfm_jax.train",
                "--config",
                "configs/pretrain/tiny.py",
                "--workdir",
                "runs/a b",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    local = dry("launch_local.sh", "--processes", "3", "--cpu-devices", "2", "--port", "4567")
    lines = local.strip().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert line.startswith("python -m gfm_jax.train --config configs/pretrain/tiny.py")
        assert "--workdir runs/a\\ b" in line and "--coordinator 127.0.0.1:4567" in line
        assert f"--num_processes 3 --process_id {i} --cpu_devices 2" in line
    slurm = dry("launch_slurm.sh", "--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu")
    for needle in (
        "#SBATCH --nodes=4",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=gpu",
        "#SBATCH --ntasks-per-node=1",
        "srun --kill-on-bad-exit=1 python -m gfm_jax.train",
    ):
        assert needle in slurm
    tpu = dry("launch_tpu_pod.sh", "--tpu", "pod", "--zone", "z1")
    assert tpu.startswith("gcloud compute tpus tpu-vm ssh pod --zone z1 --worker=all --command")
    assert "GFM_JAX_DISTRIBUTED=auto" in tpu
    bad = subprocess.run(
        ["bash", "scripts/launch_tpu_pod.sh", "--dry-run", "--", "x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--tpu NAME --zone ZONE" in bad.stderr


def test_cluster_detection_and_flag_checks(monkeypatch):
    for var in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.detected_cluster() is None
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.detected_cluster() is None  # a batch script's own line, not an srun task
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.detected_cluster() is None  # one task: nothing to join
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.detected_cluster() == "slurm"
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1,w2,w3")
    assert distributed.detected_cluster() == "tpu"
    r = run_module(
        "gfm_jax.train",
        *TRAIN[2:],
        "--workdir",
        "unused",
        "--coordinator",
        "127.0.0.1:1",
        "--num_processes",
        "2",
        "--process_id",
        "2",
    )
    assert r.returncode == 2 and "--process_id=2: must be in [0, 2)" in r.stderr


def write_micro_sweep(path) -> None:
    common = [
        o.removeprefix("--config.")
        for o in micro_overrides(
            **{"train.num_steps": 2, "train.eval_every": 1, "train.checkpoint_every": 2}
        )
    ]
    runs = [
        {"name": "char", "config": "configs/pretrain/tiny.py", "overrides": common},
        {
            "name": "kmer3",
            "config": "configs/pretrain/tiny.py",
            "overrides": [*common, "data.tokenizer=kmer3"],
        },
    ]
    path.write_text(f"def runs():\n    return {runs!r}\n")


def test_sweep_prints_the_launch_commands(tmp_path):
    write_micro_sweep(tmp_path / "sweep.py")
    script = [sys.executable, "scripts/sweep.py", str(tmp_path / "sweep.py")]
    printed = subprocess.run(
        [
            *script,
            "--workdir",
            str(tmp_path / "w"),
            "--print",
            "--launcher",
            "bash scripts/launch_local.sh --processes 2 --",
        ],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = printed.stdout.strip().splitlines()
    assert len(lines) == 2, printed.stderr
    assert all(x.startswith("bash scripts/launch_local.sh --processes 2 -- ") for x in lines)
    assert "--config.data.tokenizer=kmer3" in lines[1] and str(tmp_path / "w" / "kmer3") in lines[1]
    assert not (tmp_path / "w").exists()  # printing runs nothing


@pytest.mark.slow
def test_sweep_runs_and_gathers_one_table(tmp_path):
    write_micro_sweep(tmp_path / "sweep.py")
    script = [sys.executable, "scripts/sweep.py", str(tmp_path / "sweep.py")]
    r = subprocess.run(
        [*script, "--workdir", str(tmp_path / "w")],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    table = (tmp_path / "w" / "sweep.md").read_text()
    assert "| char | 2 |" in table and "| kmer3 | 2 |" in table
    rows = (tmp_path / "w" / "sweep.csv").read_text().splitlines()
    assert rows[0].startswith("name,step,val_loss") and len(rows) == 3
    assert (tmp_path / "w" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
