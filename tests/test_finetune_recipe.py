"""The fine-tuning recipe's parts: layer-wise learning-rate decay, input masking, early stopping
and the position-aware `flatten` pooling, each against what it must do, and one fine-tune of a
pretrained checkpoint with all of them."""

import re
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import micro_overrides, run_module

from gfm_jax import command_line
from gfm_jax.data.tokenizers import get_tokenizer
from gfm_jax.errors import UserError
from gfm_jax.evaluate import finetune
from gfm_jax.models.heads import pool
from gfm_jax.train import optim

SPLICE = "configs/tasks/splice.py"
SMALL = ["--config.task.train_rows=(0,400)", "--config.task.test_rows=(2000,2128)"]


def test_layer_decay_scales_each_depth_and_leaves_the_head_alone():
    ones = {
        "encoder": {
            "embed": {"embedding": jnp.ones((3, 2))},
            "layer_0": {"w": jnp.ones(2)},
            "layer_1": {"w": jnp.ones(2)},
            "final_norm": {"scale": jnp.ones(2)},
        },
        "head": {"kernel": jnp.ones((2, 2))},
    }
    tx = optim.scale_by_depth(0.5, num_layers=2)
    out, _ = tx.update(ones, tx.init(ones))
    assert float(out["encoder"]["embed"]["embedding"][0, 0]) == 0.125  # 0.5 ** (2 + 1)
    assert float(out["encoder"]["layer_0"]["w"][0]) == 0.25
    assert float(out["encoder"]["layer_1"]["w"][0]) == 0.5
    assert float(out["encoder"]["final_norm"]["scale"][0]) == 1.0
    assert float(out["head"]["kernel"][0, 0]) == 1.0
    # Scanned layers are stacked on the leading axis: one scale per layer.
    stacked = {"encoder": {"layers": {"w": jnp.ones((2, 3))}}}
    out, _ = tx.update(stacked, tx.init(stacked))
    np.testing.assert_array_equal(out["encoder"]["layers"]["w"][:, 0], [0.25, 0.5])


def test_input_masking_masks_sequence_tokens_only_and_repeats_with_its_seed():
    tokenizer = get_tokenizer("char")
    ids = np.full((64, 41), tokenizer.pad_id, np.int32)
    mask = np.zeros((64, 41), bool)
    ids[:, 0], mask[:, :31] = tokenizer.cls_id, True
    ids[:, 1:31] = np.asarray(tokenizer.encode("ACGT" * 7 + "AC"))[None]  # 30 bases
    batch = {"ids": ids, "mask": mask}

    def masked(seed):
        return finetune.input_masking(0.25, tokenizer, np.random.default_rng(seed))(batch)

    out = masked(0)
    hit = out != ids
    assert np.all(out[hit] == tokenizer.mask_id)
    assert not hit[:, 0].any() and not hit[:, 31:].any()  # never CLS, never padding
    assert 0.2 < hit[:, 1:31].mean() < 0.3
    np.testing.assert_array_equal(out, masked(0))
    assert not np.array_equal(out, masked(1))


def test_flatten_pooling_keeps_positions_and_zeroes_the_rest():
    h = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    mask = jnp.array([[False, True, True], [False, True, False]])
    out = pool(h, mask, "flatten")
    np.testing.assert_array_equal(out[0], [0, 0, 2, 3, 4, 5])
    np.testing.assert_array_equal(out[1], [0, 0, 8, 9, 0, 0])


@pytest.mark.slow  # long end to end: in the slow set CI runs
def test_early_stopping_is_the_prefix_of_the_full_run(tmp_path):
    def history(patience):
        config = command_line.load_config(
            SPLICE,
            [*SMALL, "--config.finetune.epochs=5", f"--config.finetune.patience={patience}"],
        )
        return finetune.finetune(config, str(tmp_path), "cnn", 0)["history"]

    full, stopped = history(0), history(1)
    accuracy = [h["val_accuracy"] for h in full]
    first_miss = next(
        (e for e in range(1, len(accuracy)) if accuracy[e] <= max(accuracy[:e])), len(accuracy)
    )
    assert stopped == full[: first_miss + 1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    work = tmp_path_factory.mktemp("recipe") / "w"
    r = run_module(
        "gfm_jax.train",
        "--config",
        "configs/pretrain/tiny.py",
        "--workdir",
        str(work),
        *micro_overrides(**{"train.num_steps": 2, "train.checkpoint_every": 2}),
    )
    assert r.returncode == 0, r.stderr
    shutil.rmtree(work / "ckpt" / "2" / "opt_state")
    return work


@pytest.mark.slow  # long end to end: in the slow set CI runs
def test_the_whole_recipe_fine_tunes_a_pretrained_encoder(ckpt):
    def run(*flags):
        config = command_line.load_config(SPLICE, [*SMALL, "--config.finetune.epochs=2", *flags])
        return finetune.finetune(config, str(ckpt), "pretrained", 0)

    recipe = (
        "--config.finetune.pooling=flatten",
        "--config.finetune.layer_decay=0.5",
        "--config.finetune.input_mask_rate=0.15",
        "--config.finetune.patience=1",
    )
    out = run(*recipe)
    assert out["config"]["finetune"]["layer_decay"] == 0.5
    assert 0.3 < out["test"]["accuracy"] <= 1.0
    # Each part changes the result: none of them is ignored.
    for flag in recipe[1:3]:
        key = flag.split("=")[0]
        plain = run(*[f for f in recipe if not f.startswith(key)])
        assert plain["history"][0]["train_loss"] != out["history"][0]["train_loss"], key


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.finetune.layer_decay=0", "finetune.layer_decay=0.0: give (0, 1]"),
        ("--config.finetune.input_mask_rate=1.0", "finetune.input_mask_rate=1.0: give"),
        ("--config.finetune.patience=-1", "finetune.patience=-1: give 0 (off)"),
    ],
)
def test_bad_recipe_values_are_refused_by_name(flag, message):
    from gfm_jax import config as config_lib

    with pytest.raises(UserError, match=re.escape(message)):
        config_lib.check_finetune(command_line.load_config(SPLICE, [flag]))


def test_a_flatten_probe_keeps_every_position_and_reads_one_strand(tmp_path):
    from gfm_jax.evaluate import probe

    tokens = {"train": np.ones((2, 3, 4)), "test": np.ones((1, 2, 4))}
    out = probe.flattened(tokens)
    assert out["train"].shape == (2, 12) and out["test"].shape == (1, 12)
    np.testing.assert_array_equal(out["test"][0], [1] * 8 + [0] * 4)
    config = command_line.load_config(
        "configs/tasks/species.py",
        ["--config.finetune.pooling=flatten", "--config.finetune.strand=both"],
    )
    with pytest.raises(UserError, match="a flatten probe reads one strand's positions"):
        probe.probe(config, str(tmp_path))


def test_the_transfer_recipe_configs_load_and_pass_their_checks():
    from gfm_jax import config as config_lib

    cpu = command_line.load_config("configs/pretrain/transfer.py")
    gpu = command_line.load_config("configs/pretrain/transfer.py:gpu")
    for c in (cpu, gpu):
        config_lib.check_pretrain(c)
    assert (cpu.model.num_layers, cpu.model.hidden_size) == (4, 96)  # the tiny preset
    assert gpu.model.hidden_size > cpu.model.hidden_size and gpu.model.dtype == "bfloat16"
