"""Entry points: bad inputs give one line naming the key / file and the fix, never a traceback."""

import pytest
from conftest import micro_overrides, run_module


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unknown_config_key(tmp_path):
    r = run_module(
        "gfm_jax.train",
        "--config",
        "configs/pretrain/tiny.py",
        "--workdir",
        str(tmp_path),
        "--config.train.num_stepz=5",
    )
    assert_one_line_error(r, "unknown config key 'train.num_stepz'", "num_steps")
    assert not (tmp_path / "ckpt").exists()


def test_a_file_that_is_not_fasta(tmp_path):
    not_fasta = tmp_path / "labels.csv"
    not_fasta.write_text("sequence,label\nACGT,EI\n")
    r = run_module(
        "gfm_jax.train",
        "--config",
        "configs/pretrain/tiny.py",
        "--workdir",
        str(tmp_path / "w"),
        f"--config.data.genomes=('{not_fasta}',)",
    )
    assert_one_line_error(r, "labels.csv:1", "FASTA")


@pytest.mark.parametrize("mode", ["finetune", "report"])
def test_workdir_without_checkpoint(tmp_path, mode):
    args = ["--workdir", str(tmp_path)]
    if mode == "finetune":
        args += ["--config", "configs/tasks/splice.py"]
    r = run_module("gfm_jax.evaluate", mode, *args)
    assert_one_line_error(r, str(tmp_path))


def test_mesh_that_does_not_divide_the_devices(tmp_path):
    r = run_module(
        "gfm_jax.train",
        "--config",
        "configs/pretrain/tiny.py",
        "--workdir",
        str(tmp_path),
        *micro_overrides(),
        "--config.mesh.shape=(2,1,1)",
    )
    assert_one_line_error(r, "mesh.shape=(2, 1, 1)", "1 are available")
