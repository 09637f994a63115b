import pathlib

import pytest
from absl import flags
from ml_collections import config_flags

from gfm_jax import command_line
from gfm_jax import config as config_lib
from gfm_jax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((ROOT / "configs").rglob("*.py"))
TINY = str(ROOT / "configs/pretrain/tiny.py")


def test_there_are_configs():
    assert {p.parent.name for p in CONFIG_FILES} >= {"pretrain", "tasks", "suites"}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_file_loads(path):
    config = command_line.load_config(str(path))
    if path.parent.name == "pretrain":
        assert config.seed == 0
    else:  # downstream configs: several seeds, reported as mean +- sd
        assert len(config.seeds) >= 3
    text = path.read_text()
    # Every config opens with the command that runs it.
    assert "python -m gfm_jax." in text.split('"""')[1]
    if path.parent.name == "pretrain":
        assert config.train.num_steps > 0 and config.model.name


def test_smoke_mode_and_overrides_of_every_type():
    config = command_line.load_config(
        TINY + ":smoke",
        [
            "--config.model.num_layers=3",  # int
            "--config.data.reverse_complement=false",  # bool
            "--config.optim.learning_rate=3e-4",  # float
            "--config.optim.end_lr_fraction=1",  # float, written as an int
            "--config.mesh.shape=(2,-1,1)",  # tuple of ints
            "--config.data.val_records=('chrM','chrY')",  # tuple of strings
            "--config.data.genomes=a.fa",  # one value for a tuple of strings
            "--config.train.init_from=runs/other",  # string
            "--config.data.tokenizer=kmer3",
        ],
    )
    assert config.train.num_steps == 10  # from the :smoke argument
    assert config.model.num_layers == 3 and isinstance(config.model.num_layers, int)
    assert config.data.reverse_complement is False
    assert config.optim.learning_rate == pytest.approx(3e-4)
    assert config.optim.end_lr_fraction == 1.0 and isinstance(config.optim.end_lr_fraction, float)
    assert config.mesh.shape == (2, -1, 1)
    assert config.data.genomes == ("a.fa",)
    assert config.data.val_records == ("chrM", "chrY")
    assert config.train.init_from == "runs/other" and config.data.tokenizer == "kmer3"
    assert config.train.log_every == 5  # untouched keys keep the file's values
    assert config.is_locked


def test_overrides_of_a_task_config():
    config = command_line.load_config(
        str(ROOT / "configs/tasks/splice.py"),
        ["--config.seeds=(4,5)", "--config.task.test_rows=()", "--config.finetune.pooling=mean"],
    )
    assert config.seeds == (4, 5) and config.task.test_rows == ()
    assert config.finetune.pooling == "mean" and config.task.train_rows == (0, 2000)


def test_unknown_override_key_names_key_and_choices():
    with pytest.raises(UserError) as e:
        command_line.load_config(TINY, ["--config.model.num_layerz=3"])
    message = str(e.value)
    assert "'model.num_layerz'" in message and "num_layers" in message and "\n" not in message
    with pytest.raises(UserError, match=r"unknown config key 'trian.num_steps' \(under <top>"):
        command_line.load_config(TINY, ["--config.trian.num_steps=3"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.num_steps=ten", "config key 'train.num_steps' is an int; got 'ten'"),
        ("train.num_steps=1.5", "config key 'train.num_steps' is an int; got '1.5'"),
        ("optim.learning_rate=fast", "config key 'optim.learning_rate' is a float; got 'fast'"),
        ("data.reverse_complement=maybe", "is a bool; got 'maybe' (use true or false)"),
        ("mesh.shape=(2, 1", "config key 'mesh.shape' is a tuple; got '(2, 1'"),
        # config_flags would keep any text as a tuple of one string
        ("mesh.shape=abc", "config key 'mesh.shape' is a tuple; got 'abc'"),
        ("mesh.rules=foo", "config key 'mesh.rules' is a tuple; got 'foo'"),
    ],
)
def test_a_value_of_the_wrong_type_names_key_and_type(override, message):
    with pytest.raises(UserError) as e:
        command_line.load_config(TINY, [f"--config.{override}"])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_typo_inside_config_file_is_an_error(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from gfm_jax.config import pretrain_defaults\n"
        "def get_config():\n    c = pretrain_defaults()\n    c.train.num_stepz = 3\n    return c\n"
    )
    with pytest.raises(UserError) as e:
        command_line.load_config(str(bad))
    assert str(e.value).startswith(f"config file {bad}: unknown key 'num_stepz'")
    assert "did you mean 'num_steps'?" in str(e.value)


def test_config_file_that_raises_is_one_line(tmp_path):
    raises = tmp_path / "raises.py"
    raises.write_text("def get_config(mode='default'):\n    raise ValueError(f'no mode {mode}')\n")
    with pytest.raises(UserError) as e:
        command_line.load_config(f"{raises}:fast")
    assert str(e.value) == f"config file {raises}: ValueError: no mode fast; fix the file"
    # get_config without an argument, given one
    with pytest.raises(UserError, match="gue.py: get_config.*drop or fix it"):
        command_line.load_config(str(ROOT / "configs/suites/gue.py") + ":smoke")
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    with pytest.raises(UserError, match="broken.py: SyntaxError"):
        command_line.load_config(str(broken))


def test_each_file_loads_afresh(tmp_path):
    # config_flags reuses one module name for every file; a file without get_config must not
    # run the one a file loaded before it defined.
    command_line.load_config(TINY)
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(UserError, match="empty.py: it has no get_config()"):
        command_line.load_config(str(empty))
    not_a_dict = tmp_path / "dict.py"
    not_a_dict.write_text("def get_config():\n    return {'seed': 1}\n")
    with pytest.raises(UserError, match="get_config.. must return a ConfigDict"):
        command_line.load_config(str(not_a_dict))


def test_missing_config_file():
    with pytest.raises(UserError, match="config file 'configs/pretrain/nope.py' not found"):
        command_line.load_config("configs/pretrain/nope.py")
    with pytest.raises(UserError, match="nope.py' not found"):
        command_line.load_config("configs/pretrain/nope.py", ["--config.seed=1"])


def command_line_flags(argv: list[str]) -> flags.FlagValues:
    """`--config` and `--workdir`, defined as the entry points define them."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
    flags.mark_flag_as_required("config", flag_values=fv)
    flags.DEFINE_string("workdir", None, "the run's directory", flag_values=fv, required=True)
    return fv


def test_parse_flags_of_a_command_line():
    argv = ["prog", "--config", TINY + ":smoke", "--workdir", "w", "--config.train.num_steps", "7"]
    fv = command_line_flags(argv)
    assert command_line.parse_flags(fv, argv) == ["prog"]
    assert fv.config.train.num_steps == 7 and fv.config.train.eval_every == 10
    assert fv.workdir == "w"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workdir", "w"], "--config is required; see --help"),
        (["--config", TINY], "--workdir is required; see --help"),
        (
            ["--config", TINY, "--workdir", "w", "--wrokdir=x"],
            "Unknown command line flag 'wrokdir'",
        ),
    ],
)
def test_parse_flags_errors_are_one_line(args, message):
    argv = ["prog", *args]
    with pytest.raises(UserError) as e:
        command_line.parse_flags(command_line_flags(argv), argv)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_environment_defaults_of_the_distributed_flags_are_checked(monkeypatch):
    from gfm_jax import distributed

    monkeypatch.setenv("JAX_NUM_PROCESSES", "abc")
    with pytest.raises(UserError, match="JAX_NUM_PROCESSES='abc' is not an integer"):
        distributed.define_flags(flags.FlagValues())
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    fv = flags.FlagValues()
    distributed.define_flags(fv)
    assert fv["num_processes"].default == 2


def test_an_unknown_config_mode_is_refused_by_name():
    for spec in ("configs/pretrain/tiny.py:smokek", "configs/tasks/splice.py:fast"):
        with pytest.raises(UserError, match="unknown config mode .* choose default, smoke"):
            command_line.load_config(str(ROOT / spec))
    assert command_line.load_config(TINY + ":smoke").train.num_steps == 10


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.learning_rate=-0.001", "optim.learning_rate=-0.001 must be positive"),
        ("train.num_steps=0", "train.num_steps=0 must be at least 1"),
        ("train.micro_batches=0", "train.micro_batches=0 must be at least 1"),
        ("train.eval_every=0", "train.eval_every=0 must be at least 1"),
    ],
)
def test_values_no_run_can_use_are_refused_before_anything_is_written(override, message):
    from gfm_jax.train.loop import train

    config = command_line.load_config(TINY, [f"--config.{override}"])
    with pytest.raises(UserError, match=message):
        config_lib.check_pretrain(config)
    workdir = ROOT / "runs" / "never_written"
    with pytest.raises(UserError, match=message):
        train(config, workdir)
    assert not workdir.exists()


def test_a_batch_the_mesh_does_not_divide_is_named_with_the_fix():
    import jax

    from gfm_jax import sharding

    mesh = sharding.make_mesh((2, 2, 2))  # 8 CPU devices: batches split 4 ways
    batch = sharding.batch_sharding(mesh, config_lib.DEFAULT_RULES)
    sharding.check_batch_divides(16, 2, batch)
    with pytest.raises(UserError, match="global_batch_size=6 .* multiple of 4"):
        sharding.check_batch_divides(6, 1, batch)
    with pytest.raises(UserError, match="micro_batches=4 x 4 batch shards"):
        sharding.check_batch_divides(8, 4, batch)
    assert len(jax.devices()) == 8
