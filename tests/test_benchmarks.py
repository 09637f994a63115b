"""The benchmark scripts run end to end on CPU at tiny sizes (their numbers live in
docs/benchmarks.md, never in tests: nothing here is timed against a target)."""

import subprocess
import sys

import pytest


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
        *("--variant", "scan_layers=1 batch=2", "--variant", "remat=full batch=4"),
        *("--repeats", "1", "--steps", "1", "--profile", "--write", str(docs)),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = docs.read_text()
    assert text.count("<!-- bench_mfu tiny -->") == 2
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
        *("--attention", "xla,blocked", "--holes"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in (
        "gfm_jax (attention xla)",
        "gfm_jax (attention blocked)",
        "gfm_jax (attention xla), padding holes",
        "transformers ESM (sdpa)",
    ):
        assert name in result.stdout
