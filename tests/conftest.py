"""Test set-up: 8 CPU devices before jax is imported, quiet TensorFlow, shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# With libtpu installed (compile-only TPU targets, tests/test_plan_scale.py) and no TPU, as
# the entry points do; compile-only libtpu in two pytest-xdist workers at once.
from gfm_jax.platforms import skip_absent_tpu  # noqa: E402

skip_absent_tpu()
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# Runs (in this process and in the subprocesses tests start) cache encoded genomes in a
# temporary directory, never in the user's ~/.cache.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["GFM_JAX_CACHE"] = tempfile.mkdtemp(prefix="gfm_jax_test_cache_")
atexit.register(shutil.rmtree, os.environ["GFM_JAX_CACHE"], ignore_errors=True)

import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402

from gfm_jax import config as config_lib  # noqa: E402
from gfm_jax.data.pipeline import hide_gpus_from_tensorflow  # noqa: E402

hide_gpus_from_tensorflow()  # as the entry points do: tf.data never takes JAX's accelerator

ROOT = pathlib.Path(__file__).resolve().parents[1]


def micro_overrides(**extra: object) -> list[str]:
    """Overrides that shrink the tiny preset so a few steps take seconds."""
    values = {
        **config_lib.MICRO_OVERRIDES,
        **extra,
    }
    return [f"--config.{k}={v}" for k, v in values.items()]


def run_module(
    module: str, *args: str, timeout: int = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Runs `python -m module args` in a fresh process (1 CPU device unless XLA_FLAGS says),
    with `env` added to the environment."""
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def damage_array_files(step_dir: pathlib.Path) -> None:
    """Cuts the largest data file of each OCDBT tree of a step's params in half (what a bad
    disk block does). Which tree holds the arrays a restore reads depends on how the step was
    written, so each tree loses one file."""
    for tree in (step_dir / "params").glob("**/d"):
        files = [p for p in tree.iterdir() if p.is_file()]
        if files:
            largest = max(files, key=lambda p: (p.stat().st_size, p.name))
            largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])


@pytest.fixture(scope="session")
def root() -> pathlib.Path:
    return ROOT


@pytest.fixture(scope="session")
def micro_checkpoint(tmp_path_factory, worker_id) -> pathlib.Path:
    """A 2-step pretraining of the micro model, params only (no mode may need the optimizer
    state). Built once per test run and shared by the pytest-xdist workers: read it or copy it,
    never write into it."""
    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent  # the run's own directory
    work = shared / "micro_checkpoint"
    with FileLock(str(shared / "micro_checkpoint.lock")):
        if not (work / "built").exists():
            shutil.rmtree(work, ignore_errors=True)
            steps = {"train.num_steps": 2, "train.checkpoint_every": 2}
            r = run_module(
                "gfm_jax.train", "--config", "configs/pretrain/tiny.py", "--workdir", str(work),
                *micro_overrides(**steps),
            )  # fmt: skip
            assert r.returncode == 0, r.stderr[-3000:]
            shutil.rmtree(work / "ckpt" / "2" / "opt_state")
            (work / "built").touch()
    return work


@pytest.fixture
def cudnn_as_xla(monkeypatch) -> list[dict]:
    """Lets the cuDNN attention path run on a CPU: `model.kernels="auto"` picks it, and
    `jax.nn.dot_product_attention` computes with XLA (which takes key lengths too) whatever
    implementation it is asked for. Returns the log of calls, each {"implementation",
    "key_lengths", "mask", "length"}, to check what cuDNN would get."""
    import jax

    from gfm_jax.ops import attention as attention_ops

    real = jax.nn.dot_product_attention
    calls = []

    def as_xla(*args, implementation=None, **kwargs):
        calls.append(
            {
                "implementation": implementation,
                "key_lengths": kwargs.get("key_value_seq_lengths") is not None,
                "mask": kwargs.get("mask") is not None,
                "length": args[0].shape[1],  # query [B, L, N, H]
            }
        )
        return real(*args, implementation="xla", **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", as_xla)
    monkeypatch.setattr(
        attention_ops,
        "implementation",
        lambda kernels, dtype, length, shards=1: {"auto": "cudnn"}.get(kernels, "xla"),
    )
    return calls
