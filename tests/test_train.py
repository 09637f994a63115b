import dataclasses
import json

import jax
import numpy as np
import pytest
import tensorflow as tf
from conftest import micro_overrides, run_module

from gfm_jax import command_line, sharding
from gfm_jax import config as config_lib
from gfm_jax.data.corpus import load_corpus
from gfm_jax.data.masking_spec import target_capacity
from gfm_jax.data.pipeline import WindowPipeline, to_global
from gfm_jax.data.tokenizers import get_tokenizer
from gfm_jax.evaluate import pretrained
from gfm_jax.models.encoder import EncoderConfig
from gfm_jax.models.heads import MaskedLM
from gfm_jax.ops import attention as attention_ops
from gfm_jax.train import optim
from gfm_jax.train import state as state_lib
from gfm_jax.train import step as step_lib
from gfm_jax.train.loop import train


def micro_config(**extra):
    extra = {"train.peak_tflops": 0.2, **extra}  # CPUs are not in the peak table
    return command_line.load_config("configs/pretrain/tiny.py", micro_overrides(**extra))


@pytest.fixture(scope="module")
def real_batches():
    config = micro_config()
    pipe = WindowPipeline(load_corpus(["builtin"]), get_tokenizer("char"), config.data, seed=0)
    ds = pipe.dataset("train", global_batch=16, first_step=0, last_step=3)
    return [{k: b[k] for k in ("inputs", "targets", "weights")} for b in ds.as_numpy_iterator()]


def run_steps(mesh, batches, micro_batches=1, **model_overrides):
    """Three train steps; returns (losses, grad norms, final params) on the host."""
    config = micro_config()
    rules = tuple(tuple(r) for r in config.mesh.rules)
    model_cfg = EncoderConfig.from_config(config.model, 12)
    model = MaskedLM(dataclasses.replace(model_cfg, **model_overrides), mesh, rules)
    tx = optim.make_optimizer(config.optim, 10)
    init = lambda rng: model.init(rng, np.zeros((1, 64), np.int32))["params"]  # noqa: E731
    state, shardings = state_lib.create_sharded_state(init, tx, jax.random.key(0), mesh, rules)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    objective = step_lib.mlm_objective(model, pad_id=4)
    step = step_lib.compile_train_step(  # as gfm_jax/train/program.py builds it
        step_lib.make_train_step(objective, tx, micro_batches, batch_sharding),
        shardings,
        batch_sharding,
    )
    losses, grad_norms = [], []
    for b in batches:
        state, m = step(state, to_global(b, batch_sharding))
        losses.append(float(m["loss_sum"] / m["weight_sum"]))
        grad_norms.append(float(m["grad_norm"]))
    return np.array(losses), np.array(grad_norms), jax.device_get(state.params)


def assert_runs_close(a, b, atol):
    np.testing.assert_allclose(a[0], b[0], atol=atol, rtol=0)  # losses
    np.testing.assert_allclose(a[1], b[1], atol=atol, rtol=0)  # gradient norms
    for x, y in zip(jax.tree.leaves(a[2]), jax.tree.leaves(b[2]), strict=True):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)  # parameters after 3 updates


@pytest.mark.slow  # slow set (CI runs it): keeps the default suite under 10 minutes
def test_sharded_meshes_match_one_device(real_batches, monkeypatch):
    reference = run_steps(sharding.make_mesh((1, 1, 1), jax.devices()[:1]), real_batches)
    for shape in [(8, 1, 1), (2, 4, 1), (2, 2, 2)]:
        assert_runs_close(run_steps(sharding.make_mesh(shape), real_batches), reference, 1e-5)
    # The CPU's blocked attention, here at 64 tokens, runs per (batch, head) shard under
    # shard_map; beside the plain-XLA reference on one device: same numbers.
    monkeypatch.setattr(attention_ops, "BLOCKED_MIN_LENGTH", 0)
    blocked = run_steps(sharding.make_mesh((2, 2, 2)), real_batches, kernels="auto")
    reference = run_steps(
        sharding.make_mesh((1, 1, 1), jax.devices()[:1]), real_batches, kernels="xla"
    )
    assert_runs_close(blocked, reference, 1e-5)


@pytest.mark.slow  # long end to end: in the slow set CI runs
def test_causal_objective_predicts_only_from_tokens_and_cudnn_order_changes_nothing(
    real_batches, cudnn_as_xla
):
    """Next-token targets are taken only from positions holding a token: the output at a
    padding hole is unspecified (on the cuDNN path it comes after, and sees, every kept
    token). With holes, the causal sums of the cuDNN path equal XLA attention's."""
    config = micro_config()
    tokenizer = get_tokenizer("char")
    (lo, hi), pad_id = tokenizer.maskable, tokenizer.pad_id
    ids = np.array(real_batches[0]["targets"][:4])
    ids[:, 5::7] = pad_id  # holes
    kept = ids != pad_id
    nucleotide = (ids[:, 1:] >= lo) & (ids[:, 1:] < hi)
    model_cfg = dataclasses.replace(EncoderConfig.from_config(config.model, 12), causal=True)
    sums = {}
    for kernels in ("xla", "auto"):  # auto: the cuDNN path, emulated (`cudnn_as_xla`)
        model = MaskedLM(dataclasses.replace(model_cfg, kernels=kernels))
        params = model.init(jax.random.key(0), ids[:1])["params"]
        objective = step_lib.causal_objective(model, pad_id, (lo, hi))
        sums[kernels] = jax.device_get(jax.jit(objective)(params, {"targets": ids}))
    assert sums["xla"]["weight_sum"] == (nucleotide & kept[:, :-1]).sum() < nucleotide.sum()
    for key in ("loss_sum", "correct_sum", "weight_sum"):
        np.testing.assert_allclose(sums["auto"][key], sums["xla"][key], rtol=1e-6)


@pytest.mark.slow  # slow set (CI runs it): keeps the default suite under 10 minutes
def test_cudnn_token_order_on_a_sharded_mesh_matches_one_device(real_batches, cudnn_as_xla):
    """The cuDNN path reorders tokens inside the sharded step (kept first, per row); with
    padding holes in the batches, 3 steps on a (2, 2, 2) mesh equal XLA attention's on one
    device, which takes the mask as it is."""
    holes = []
    for b in real_batches:
        b = {k: np.array(v) for k, v in b.items()}
        b["inputs"][::2, 5::7] = 4  # pad_id of run_steps: holes in every other row
        b["weights"][::2, 5::7] = 0.0
        holes.append(b)
    reference = run_steps(sharding.make_mesh((1, 1, 1), jax.devices()[:1]), holes, kernels="xla")
    cudnn_as_xla.clear()
    reordered = run_steps(sharding.make_mesh((2, 2, 2)), holes, kernels="auto")
    assert cudnn_as_xla and all(c["key_lengths"] and not c["mask"] for c in cudnn_as_xla)
    assert_runs_close(reordered, reference, 1e-5)


@pytest.mark.slow  # slow set (CI runs it): keeps the default suite under 10 minutes
def test_remat_does_not_change_the_step(real_batches):
    mesh = sharding.make_mesh((-1, 1, 1))
    plain = run_steps(mesh, real_batches[:2])
    for remat in ("full", "save_dots"):
        assert_runs_close(run_steps(mesh, real_batches[:2], remat=remat), plain, 1e-6)


@pytest.mark.slow  # slow set (CI runs it): keeps the default suite under 10 minutes
def test_micro_batches_equal_one_batch(real_batches):
    mesh = sharding.make_mesh((2, 2, 2))
    whole = run_steps(mesh, real_batches)
    assert_runs_close(run_steps(mesh, real_batches, micro_batches=4), whole, 1e-5)


@pytest.mark.slow  # long end to end: in the slow set CI runs
def test_mlm_head_at_target_slots_gives_the_full_loss_and_gradients(real_batches):
    config = micro_config()
    model = MaskedLM(EncoderConfig.from_config(config.model, 12))
    batch = {k: np.asarray(v) for k, v in real_batches[0].items()}
    params = model.init(jax.random.key(0), batch["inputs"][:1])["params"]
    length = batch["inputs"].shape[1]
    most = int((batch["weights"] > 0).sum(axis=1).max())

    def run(capacity):
        objective = step_lib.mlm_objective(model, pad_id=4, max_targets=capacity)
        total = lambda p: objective(p, batch)["loss_sum"]  # noqa: E731
        return jax.jit(objective)(params, batch), jax.jit(jax.grad(total))(params)

    full, full_grads = run(None)
    slotted, slotted_grads = run(most)  # just enough slots for the fullest row
    assert most < length and int(slotted["dropped_targets"]) == 0
    for key in ("loss_sum", "correct_sum", "weight_sum"):
        np.testing.assert_allclose(slotted[key], full[key], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(slotted_grads), jax.tree.leaves(full_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # gradients of a sum: ~30

    short, _ = run(most - 3)  # too few slots: the last targets of the fullest rows are dropped
    per_row = (batch["weights"] > 0).sum(axis=1)
    assert int(short["dropped_targets"]) == int(np.maximum(per_row - (most - 3), 0).sum()) > 0
    assert float(short["weight_sum"]) == float(full["weight_sum"]) - int(short["dropped_targets"])


def test_target_capacity_bounds_the_masked_tokens_of_real_windows():
    config = micro_config()
    pipe = WindowPipeline(load_corpus(["builtin"]), get_tokenizer("char"), config.data, seed=3)
    ds = pipe.dataset("train", global_batch=64, first_step=0, last_step=16)
    counts = np.concatenate([(b["weights"] > 0).sum(axis=1) for b in ds.as_numpy_iterator()])
    capacity = target_capacity(1 + pipe.num_tokens, pipe.masking)
    assert capacity < 1 + pipe.num_tokens and counts.max() <= capacity
    assert target_capacity(513, dataclasses.replace(pipe.masking, rate=0.15, span=1)) == 128


def read_metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_on_real_windows_and_checkpoints_are_written(tmp_path):
    config = micro_config(
        **{
            "train.num_steps": 40,
            "train.eval_every": 40,
            "train.checkpoint_every": 20,
            "optim.learning_rate": 3e-3,
        }
    )
    final = train(config, tmp_path)
    rows = read_metrics(tmp_path)
    val = [r for r in rows if r["split"] == "val"]
    trn = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in val] == [0, 40]
    assert val[-1]["loss"] < val[0]["loss"] - 0.5
    assert trn[-1]["loss"] < trn[0]["loss"]
    assert final["loss"] == val[-1]["loss"]
    assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == [
        20,
        40,
    ]
    assert all(r["tokens_per_sec"] > 0 for r in trn)
    assert all(0 < r["mfu"] < 1 for r in trn)  # micro_config sets train.peak_tflops
    # TensorBoard events hold the same training losses as metrics.jsonl.
    (events,) = (tmp_path / "tensorboard" / "train").iterdir()
    tb_losses = [
        float(tf.make_ndarray(v.tensor))
        for e in tf.compat.v1.train.summary_iterator(str(events))
        for v in e.summary.value
        if v.tag == "loss"
    ]
    np.testing.assert_allclose(tb_losses, [r["loss"] for r in trn], rtol=1e-6)


@pytest.mark.slow  # long end to end: in the slow set CI runs
def test_nt6_tokens_train_and_report_bits_per_base(tmp_path):
    config = micro_config(
        **{
            "data.tokenizer": "nt6",
            "data.window_len": 384,
            "train.global_batch_size": 32,
            "train.num_steps": 30,
            "train.eval_every": 30,
            "train.checkpoint_every": 30,
            "optim.learning_rate": 1e-2,
        }
    )
    train(config, tmp_path)
    val = [r for r in read_metrics(tmp_path) if r["split"] == "val"]
    # 4,107 classes learn slowly: a few dozen steps only start to move the loss off ln(4107).
    assert val[0]["loss"] == pytest.approx(np.log(4107), abs=0.05)
    assert val[-1]["loss"] < val[0]["loss"] - 0.03
    # Per-token loss over 6 bases per token: bits per base = loss / ln 2 / 6.
    assert val[-1]["bits_per_base"] == pytest.approx(val[-1]["loss"] / np.log(2) / 6)
    assert pretrained.describe(tmp_path).tokenizer.name == "nt6"


@pytest.mark.slow  # about 70 s; the SIGKILL resume test in test_checkpoint.py is also slow
def test_resume_in_a_new_process_equals_the_uninterrupted_run(tmp_path):
    common = [
        "--config",
        "configs/pretrain/tiny.py",
        *micro_overrides(
            **{
                "train.num_steps": 8,
                "train.checkpoint_every": 4,
                "train.eval_every": 8,
            }
        ),
    ]
    whole, split = tmp_path / "whole", tmp_path / "split"
    r = run_module("gfm_jax.train", *common, "--workdir", str(whole))
    assert r.returncode == 0, r.stderr
    r = run_module(
        "gfm_jax.train", *common, "--workdir", str(split), "--config.train.stop_at_step=4"
    )
    assert r.returncode == 0, r.stderr
    assert not (split / "ckpt" / "8").exists()
    r = run_module("gfm_jax.train", *common, "--workdir", str(split))
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "/4" in r.stdout

    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    rules = config_lib.DEFAULT_RULES
    params = []
    for workdir in (whole, split):
        pre = pretrained.describe(workdir)
        assert pre.step == 8
        params.append(jax.device_get(pretrained.load_params(workdir, pre, mesh, rules)))
    for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    # The held-out loss after the resumed run is the uninterrupted one too.
    assert read_metrics(whole)[-1] == read_metrics(split)[-1]


@pytest.mark.slow  # long end to end: in the slow set CI runs
def test_bpe_is_trained_saved_with_the_run_and_restored_for_evaluation(tmp_path):
    config = micro_config(
        **{
            "data.tokenizer": "bpe",
            "data.bpe_vocab_size": 256,
            "data.window_tokens": 32,
            "train.num_steps": 10,
            "train.eval_every": 10,
            "train.checkpoint_every": 10,
        }
    )
    train(config, tmp_path)
    assert (tmp_path / "tokenizer.json").exists()
    val = [r for r in read_metrics(tmp_path) if r["split"] == "val"]
    assert val[0]["loss"] == pytest.approx(np.log(256), abs=0.1)
    described = pretrained.describe(tmp_path)
    assert described.tokenizer.name == "bpe" and described.tokenizer.vocab_size == 256
    assert described.model_config.vocab_size == 256
    text = "ACGTTGCAAGGCTTAACCGGTTAAGCT"
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    assert described.tokenizer.spec()["json"] == saved["json"]
    assert len(described.tokenizer.encode(text)) < len(text)


@pytest.mark.slow  # slow set (CI runs it): keeps the default suite under 10 minutes
def test_causal_objective_trains_the_same_backbone(tmp_path):
    config = micro_config(
        **{
            "train.objective": "causal",
            "train.num_steps": 30,
            "train.eval_every": 30,
            "train.checkpoint_every": 30,
            "optim.learning_rate": 3e-3,
            "optim.z_loss": 1e-4,
        }
    )
    train(config, tmp_path)
    val = [r for r in read_metrics(tmp_path) if r["split"] == "val"]
    assert val[-1]["loss"] < val[0]["loss"] - 0.5
    # The causal baseline counts every next nucleotide, not 15% of them.
    assert 1.2 < val[0]["unigram_entropy"] < 1.45
    assert pretrained.describe(tmp_path).model_config.causal
