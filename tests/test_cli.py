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


def test_a_batch_the_devices_do_not_divide_stops_before_compiling(tmp_path):
    r = run_module(
        *("gfm_jax.train", "--config", "configs/pretrain/tiny.py:smoke"),
        *("--workdir", str(tmp_path), "--cpu_devices", "3"),
    )
    assert_one_line_error(r, "train.global_batch_size=16", "multiple of 3")
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--config.train.num_steps=ten"], ["config key 'train.num_steps' is an int", "'ten'"]),
        (["--config.data.reverse_complement=maybe"], ["'data.reverse_complement' is a bool"]),
        (
            ["--config=configs/pretrain/nope.py"],
            ["config file 'configs/pretrain/nope.py' not found"],
        ),
        (["--config", "configs/suites/gue.py:smoke"], ["configs/suites/gue.py: TypeError"]),
        (["--wrokdir=x"], ["Unknown command line flag 'wrokdir'"]),
    ],
)
def test_bad_command_lines_of_train(tmp_path, args, needles):
    # The last --config wins, so a bad file given after the good one is the one loaded.
    r = run_module(
        "gfm_jax.train",
        "--config",
        "configs/pretrain/tiny.py",
        "--workdir",
        str(tmp_path),
        *args,
    )
    assert_one_line_error(r, "gfm_jax.train: error:", *needles)
    assert not (tmp_path / "ckpt").exists()


def test_bad_command_lines_of_evaluate(tmp_path):
    common = ["--config", "configs/tasks/splice.py", "--workdir", str(tmp_path)]
    r = run_module("gfm_jax.evaluate", "finetune", *common, "--config.task.nmae=x")
    assert_one_line_error(r, "unknown config key 'task.nmae'", "name")
    r = run_module("gfm_jax.evaluate", "finetune", *common, "--config.finetune.epochs=1.5")
    assert_one_line_error(r, "config key 'finetune.epochs' is an int; got '1.5'")
    r = run_module("gfm_jax.evaluate", "probe", *common, "--model", "cnn")
    assert_one_line_error(r, "--model=cnn", "pretrained|scratch")
    r = run_module("gfm_jax.evaluate", "finetnue", *common)
    assert_one_line_error(r, "unknown mode 'finetnue'", "finetune")


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
    assert not (tmp_path / "w").exists()  # a failed start leaves no workdir behind


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
