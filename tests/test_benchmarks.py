"""The benchmark scripts run end to end on CPU at tiny sizes (their numbers live in
docs/benchmarks.md, never in tests: nothing here is timed against a target)."""

import importlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from conftest import ROOT


def run_script(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd="scripts", capture_output=True, text=True, timeout=timeout
    )


def test_bench_mfu_refuses_an_unknown_variant_key_by_name():
    result = run_script("bench_mfu.py", "--preset", "tiny", "--variant", "scan_layers=1 bogus=2")
    assert result.returncode != 0
    assert "unknown key 'bogus'" in result.stderr


@pytest.mark.slow
def test_bench_mfu_times_each_variant_and_writes_its_section(tmp_path):
    docs = tmp_path / "benchmarks.md"
    result = run_script(
        *("bench_mfu.py", "--preset", "tiny", "--tokens", "64", "--dtype", "float32"),
        *("--variant", "scan_layers=1 batch=2"),
        *("--variant", "position=learned max_positions=8 batch=2"),
        *("--variant", "remat=full batch=4"),
        *("--repeats", "1", "--steps", "1", "--profile", "--write", str(docs)),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = docs.read_text()
    assert text.count("<!-- bench_mfu tiny -->") == 2
    # 64 tokens do not fit 8 learned positions: that variant is a row saying so, and the
    # variant after it is still timed.
    assert "| position=learned max_positions=8 batch=2 | failed: " in text
    rows = [line for line in text.splitlines() if line.startswith(("| scan_layers", "| remat"))]
    assert len(rows) == 2
    for row in rows:  # tokens/s and step time are positive numbers
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[1].replace(",", "")) > 0 and float(cells[2].replace(",", "")) > 0


@pytest.mark.slow
def test_bench_train_times_both_frameworks_and_the_batch_with_holes():
    result = run_script(
        *("bench_train.py", "--layers", "1", "--hidden", "32", "--heads", "2", "--ffn", "64"),
        *("--tokens", "65", "--batch", "2", "--repeats", "1", "--steps", "1"),
        *("--kernels", "xla,auto", "--holes"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in (
        "gfm_jax (kernels xla)",
        "gfm_jax (kernels auto)",
        "gfm_jax (kernels xla), padding holes",
        "transformers ESM (sdpa)",
    ):
        assert name in result.stdout


@pytest.mark.slow
def test_bench_kernels_times_each_kept_kernel_alone_and_within_auto(tmp_path):
    docs = tmp_path / "benchmarks.md"
    result = run_script(
        *("bench_kernels.py", "--preset", "tiny", "--vocab", "12", "--tokens", "256"),
        *("--batch", "2", "--repeats", "1", "--steps", "1", "--write", str(docs)),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = docs.read_text()
    assert text.count("<!-- kernels cpu -->") == 2
    names = [row.split("|")[1].strip() for row in text.splitlines() if row.startswith("| ")]
    assert names[2:] == [  # after the header: what `auto` runs on a CPU at 256 tokens
        "kernels=xla (the reference)",
        "the reference + blocked",
        "the reference + cpu_gemm",
        "kernels=auto (all of them)",
    ]
    assert "- blocked within `auto`" in text and "- cpu_gemm within `auto`" in text


def test_hlo_bytes_counts_what_each_kernel_reads_and_writes(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    hlo_bytes = importlib.import_module("hlo_bytes")
    x_256x128 = jnp.ones((256, 128), jnp.float32)
    sliced = jax.jit(lambda x: (x * 2 + 1)[:, :64]).lower(x_256x128).compile()
    (kernel,) = hlo_bytes.kernels(sliced.as_text())
    # One fused kernel computes and reads only the half of x the slice keeps.
    assert (kernel.kind, kernel.bytes_read, kernel.bytes_written) == (
        "other",
        256 * 64 * 4,
        256 * 64 * 4,
    )
    w_128x32 = jnp.ones((128, 32), jnp.float32)
    dense = jax.jit(lambda x, w: jnp.tanh(x @ w)).lower(x_256x128, w_128x32).compile()
    found = hlo_bytes.kernels(dense.as_text())
    matmuls = [k for k in found if k.kind == "matmul"]
    assert len(matmuls) == 1 and matmuls[0].bytes_read >= (256 * 128 + 128 * 32) * 4
    assert sum(k.bytes_written for k in found) >= 256 * 32 * 4
    w_128x128 = jnp.ones((128, 128), jnp.float32)
    loop = lambda x, w: jax.lax.fori_loop(0, 5, lambda i, x: jnp.tanh(x @ w), x)  # noqa: E731
    looped = hlo_bytes.kernels(jax.jit(loop).lower(x_256x128, w_128x128).compile().as_text())
    matmuls = [k for k in looped if k.kind == "matmul"]
    assert sum(k.launches for k in matmuls) == 5  # a while loop's body counts once per trip
    assert sum(k.bytes_read for k in matmuls) >= 5 * (256 * 128 + 128 * 128) * 4
    # Of a conditional's branches one runs: the costlier one counts, once.
    cond = lambda p, x, w: jax.lax.cond(p, lambda x: jnp.tanh(x @ w) @ w, lambda x: x * 2, x)  # noqa: E731
    branched = hlo_bytes.kernels(
        jax.jit(cond).lower(True, x_256x128, w_128x128).compile().as_text()
    )
    assert sum(k.kind == "matmul" for k in branched) == 2
    assert all("branch_0" not in k.op_name for k in branched)


@pytest.mark.slow
def test_step_traffic_tables_the_tiny_train_step(tmp_path):
    docs = tmp_path / "benchmarks.md"
    result = run_script(
        *("step_traffic.py", "--preset", "tiny", "--target", "local", "--tokens", "64"),
        *("--dtype", "float32", "--write", str(docs)),
        *("--variant", "scan_layers=0 batch=2", "--variant", "scan_layers=1 batch=2"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = docs.read_text()
    assert text.count("<!-- step_traffic tiny -->") == 2
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| ")]
    matmul = [(int(r[2]), float(r[3].replace(",", ""))) for r in rows if r[1].strip() == "matmul"]
    # The same matmuls whether the layers are unrolled or a scan (a while loop, counted per trip).
    assert len(matmul) == 2 and matmul[0] == matmul[1] and matmul[0][1] > 0
    assert any(r[1].strip().startswith("`backward: encoder/layer_N/") for r in rows)


def test_hlo_bytes_reads_a_loop_bound_from_its_condition(monkeypatch):
    """XLA:TPU prints no `known_trip_count`: the trips of a scan come from `counter < N`."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    hlo_bytes = importlib.import_module("hlo_bytes")
    hlo = """%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[]{:T(128)} constant(29)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}
"""
    blocks = hlo_bytes._computations(hlo)
    assert hlo_bytes._trips(blocks, "condition=%cond, body=%body") == 29
    gpu = 'body=%body, backend_config={"known_trip_count":{"n":"7"}}'
    assert hlo_bytes._trips(blocks, gpu) == 7
    assert hlo_bytes._trips(blocks, "body=%body") == 1  # no bound known: counted once
