import pathlib

import pytest

from gfm_jax import config as config_lib
from gfm_jax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((ROOT / "configs").rglob("*.py"))


def test_there_are_configs():
    assert {p.parent.name for p in CONFIG_FILES} >= {"pretrain", "tasks", "suites"}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_file_loads(path):
    config = config_lib.load_config(str(path))
    if path.parent.name == "pretrain":
        assert config.seed == 0
    else:  # downstream configs: several seeds, reported as mean +- sd
        assert len(config.seeds) >= 3
    text = path.read_text()
    # Every config opens with the command that runs it.
    assert "python -m gfm_jax." in text.split('"""')[1]
    if path.parent.name == "pretrain":
        assert config.train.num_steps > 0 and config.model.name


def test_smoke_mode_and_overrides():
    config = config_lib.load_config(
        str(ROOT / "configs/pretrain/tiny.py") + ":smoke",
        [
            "--config.model.num_layers=3",
            "--config.data.reverse_complement=false",
            "--config.optim.learning_rate=3e-4",
            "--config.mesh.shape=(2,-1,1)",
            "--config.data.genomes=('a.fa','b.fa.gz')",
        ],
    )
    assert config.train.num_steps == 10
    assert config.model.num_layers == 3
    assert config.data.reverse_complement is False
    assert config.optim.learning_rate == pytest.approx(3e-4)
    assert tuple(config.mesh.shape) == (2, -1, 1)
    assert tuple(config.data.genomes) == ("a.fa", "b.fa.gz")


def test_unknown_override_key_names_key_and_choices():
    with pytest.raises(UserError) as e:
        config_lib.load_config(
            str(ROOT / "configs/pretrain/tiny.py"), ["--config.model.num_layerz=3"]
        )
    assert "model.num_layerz" in str(e.value) and "num_layers" in str(e.value)


def test_bad_override_value():
    with pytest.raises(UserError, match="train.num_steps"):
        config_lib.load_config(
            str(ROOT / "configs/pretrain/tiny.py"), ["--config.train.num_steps=ten"]
        )


def test_typo_inside_config_file_is_an_error(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from gfm_jax.config import pretrain_defaults\n"
        "def get_config():\n    c = pretrain_defaults()\n    c.train.num_stepz = 3\n    return c\n"
    )
    with pytest.raises(UserError, match="num_stepz"):
        config_lib.load_config(str(bad))


def test_missing_config_file():
    with pytest.raises(UserError, match="not found"):
        config_lib.load_config("configs/pretrain/nope.py")
