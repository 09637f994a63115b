"""Adapters (LoRA, IA3), the RC-equivariant encoder, strand averaging and layer embeddings."""

import dataclasses
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import micro_overrides, run_module
from flax import traverse_util

from gfm_jax.data import fasta
from gfm_jax.data.tokenizers import get_tokenizer
from gfm_jax.evaluate.__main__ import main
from gfm_jax.evaluate.finetune import _train_only
from gfm_jax.evaluate.finetuned import trainable_fn
from gfm_jax.models import adapters
from gfm_jax.models.encoder import Encoder, EncoderConfig, reversal_index, reverse_complement_ids
from gfm_jax.models.heads import MaskedLM

TOK = get_tokenizer("char")
SPECIES = "configs/tasks/species.py:smoke"
SPLICE = "configs/tasks/splice.py:smoke"


def small_config(**changes) -> EncoderConfig:
    base = dict(vocab_size=TOK.vocab_size, num_layers=2, hidden_size=32, num_heads=2, mlp_dim=64)
    return EncoderConfig(**{**base, **changes})


def padded_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CLS + real DNA (lambda phage) of three lengths, padded: [3, 40]."""
    (record,) = fasta.read_fasta(
        pathlib.Path("gfm_jax/data/builtin_files/lambda_phage_NC_001416.fa.gz")
    )
    text = record.sequence().upper()
    ids = np.full((3, 40), TOK.pad_id, np.int32)
    mask = np.zeros((3, 40), bool)
    for i, n in enumerate((40, 31, 9)):
        start = 1000 * (seed + 1) + 97 * i
        ids[i, 0], ids[i, 1:n] = TOK.cls_id, TOK.encode(text[start : start + n - 1])
        mask[i, :n] = True
    return ids, mask


def rc_mismatch(model: nn.Module, params, ids, mask) -> float:
    """max |f(rc x) mapped back - f(x)| over real tokens, for an encoder ([.., 2D]: halves
    swap) or a masked-LM ([.., V]: tokens complement)."""
    apply = jax.jit(lambda i: model.apply({"params": params}, i, mask))
    out, out_rc = apply(ids), apply(reverse_complement_ids(ids, mask, TOK.complement_ids()))
    back = jnp.take_along_axis(out_rc, reversal_index(jnp.asarray(mask))[..., None], axis=1)
    if isinstance(model, MaskedLM):
        back = back[..., jnp.asarray(TOK.complement_ids())]
    else:
        back = jnp.concatenate(jnp.split(back, 2, axis=-1)[::-1], axis=-1)
    return float(jnp.max(jnp.where(mask[..., None], jnp.abs(back - out), 0.0)))


def test_reverse_complement_ids_keep_cls_and_padding_in_place():
    ids, mask = padded_batch()
    rc = np.asarray(reverse_complement_ids(ids, mask, TOK.complement_ids()))
    for row in range(3):
        n = mask[row].sum()
        assert rc[row, 0] == TOK.cls_id and (rc[row, n:] == TOK.pad_id).all()
        assert TOK.decode(rc[row, 1:n]) == fasta.reverse_complement(TOK.decode(ids[row, 1:n]))


SCANNED = pytest.param(True, marks=pytest.mark.slow)  # the same model, its layers in one scan


@pytest.mark.slow  # long end to end: in the slow set CI runs
@pytest.mark.parametrize("scan", [False, SCANNED])
def test_rc_equivariant_encoder_and_mlm_at_init_and_after_training(scan):
    config = small_config(rc_equivariant=True, complement=TOK.complement_ids(), scan_layers=scan)
    ids, mask = padded_batch()
    mlm = MaskedLM(config)
    params = nn.meta.unbox(mlm.init(jax.random.key(0), ids, mask)["params"])
    encoder = Encoder(config)
    assert rc_mismatch(encoder, params["encoder"], ids, mask) < 1e-5
    assert rc_mismatch(mlm, params, ids, mask) < 1e-5

    # A few Adam steps of masked-LM on real DNA move every weight; equivariance holds still.
    tx = optax.adam(1e-2)
    opt = tx.init(params)
    targets = ids.copy()
    inputs = np.where((np.arange(40) % 7 == 3) & mask, TOK.mask_id, ids)

    def loss(p):
        logits = mlm.apply({"params": p}, inputs, mask)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
        return jnp.sum(nll * (inputs == TOK.mask_id)) / jnp.sum(inputs == TOK.mask_id)

    first = float(loss(params))
    grad = jax.jit(jax.grad(loss))
    for _ in range(5):
        grads = grad(params)
        updates, opt = tx.update(grads, opt, params)
        params = optax.apply_updates(params, updates)
    assert float(loss(params)) < first
    other_ids, other_mask = padded_batch(seed=3)
    assert rc_mismatch(encoder, params["encoder"], other_ids, other_mask) < 1e-5
    assert rc_mismatch(mlm, params, other_ids, other_mask) < 1e-5
    # The plain encoder with the same weights is not equivariant: the property is built in.
    plain = Encoder(dataclasses.replace(config, rc_equivariant=False))
    h = plain.apply({"params": params["encoder"]}, ids, mask)
    h_rc = plain.apply(
        {"params": params["encoder"]}, reverse_complement_ids(ids, mask, TOK.complement_ids()), mask
    )
    back = jnp.take_along_axis(h_rc, reversal_index(jnp.asarray(mask))[..., None], axis=1)
    assert float(jnp.max(jnp.where(mask[..., None], jnp.abs(back - h), 0))) > 1e-2


def test_rc_equivariance_needs_a_one_base_tokenizer_and_masked_lm():
    from gfm_jax.errors import UserError

    with pytest.raises(UserError, match="one-token-per-base tokenizer"):
        small_config(
            rc_equivariant=True, complement=get_tokenizer("nt6").complement_ids()
        ).validate()
    with pytest.raises(UserError, match="objective='mlm'"):
        small_config(rc_equivariant=True, complement=TOK.complement_ids(), causal=True).validate()


@pytest.mark.parametrize(
    "kind,scan,activation",
    [
        pytest.param("lora", False, "swiglu", marks=pytest.mark.slow),  # gelu: the same path
        ("ia3", False, "swiglu"),
        *(pytest.param(k, True, "swiglu", marks=pytest.mark.slow) for k in ("lora", "ia3")),
        ("lora", False, "gelu"),
        ("ia3", False, "gelu"),
    ],
)
def test_merged_adapters_give_the_adapted_outputs_from_the_plain_encoder(kind, scan, activation):
    adapter = adapters.Adapter(kind=kind, rank=4)
    base = small_config(scan_layers=scan, activation=activation, use_bias_mlp=True)
    ids, mask = padded_batch()
    model = Encoder(dataclasses.replace(base, adapter=adapter))
    params = nn.meta.unbox(model.init(jax.random.key(0), ids, mask)["params"])
    found, rest = adapters.split(params)
    # Random adapter values (LoRA's B starts at zero, IA3 at one: both would be no-ops).
    leaves, tree = jax.tree.flatten(found)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    found = jax.tree.unflatten(
        tree, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )
    params = {
        **traverse_util.unflatten_dict(
            {**traverse_util.flatten_dict(rest), **traverse_util.flatten_dict(found)}
        )
    }
    adapted = model.apply({"params": params}, ids, mask)
    merged = Encoder(base).apply(
        {"params": adapters.merge(params, adapter, stacked=scan)}, ids, mask
    )
    without = Encoder(base).apply({"params": rest}, ids, mask)
    assert float(jnp.max(jnp.abs(adapted - merged))) < 1e-3  # outputs are O(1): normed
    assert float(jnp.max(jnp.abs(adapted - without))) > 1e-2
    names = {p[-2] for p in traverse_util.flatten_dict(found)}
    expected = {"a", "b"} if kind == "lora" else {"key_ia3", "value_ia3", "mlp_ia3"}
    assert names == expected
    if kind == "lora":  # every projection the MLP has is adapted: gate and up, or up alone
        mlp = {k[-3] for k in traverse_util.flatten_dict(found) if "mlp" in k}
        assert mlp == (
            {"up_lora", "down_lora"} | ({"gate_lora"} if activation != "gelu" else set())
        )


def test_only_adapters_and_head_get_updates_and_optimizer_state():
    attn = {
        "query": {"kernel": np.ones((4, 4), np.float32)},
        "query_lora": {"a": {"kernel": np.ones((4, 2), np.float32)}},
    }
    params = {
        "encoder": {"layer_0": {"attn": attn}},
        "head": {"kernel": np.ones((4, 3), np.float32)},
    }
    tx = _train_only(optax.adamw(0.1, weight_decay=0.5), trainable_fn("lora"))
    state = tx.init(params)
    grads = jax.tree.map(np.ones_like, params)
    new = optax.apply_updates(params, tx.update(grads, state, params)[0])
    flat_new, flat_old = traverse_util.flatten_dict(new), traverse_util.flatten_dict(params)
    for key, value in flat_new.items():
        moved = not np.allclose(value, flat_old[key])
        assert moved == (key[-2] in ("a", "head") or key[0] == "head"), key
    # Adam keeps two moments for the 4x2 adapter and the 4x3 head only: 2 * 20 floats.
    counted = sum(x.size for x in jax.tree.leaves(state) if hasattr(x, "size") and x.ndim > 0)
    assert counted == 2 * (8 + 12)


@pytest.fixture(scope="module")
def pre(tmp_path_factory) -> pathlib.Path:
    work = tmp_path_factory.mktemp("adapters") / "w"
    steps = {"train.num_steps": 2, "train.checkpoint_every": 2}
    r = run_module("gfm_jax.train", "--config", "configs/pretrain/tiny.py", "--workdir", str(work),
                   *micro_overrides(**steps))  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return work


def test_splice_refuses_strand_averaging_in_one_line(tmp_path):
    r = run_module("gfm_jax.evaluate", "finetune", "--config", SPLICE, "--workdir", str(tmp_path),
                   "--strand", "both")  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "task.stranded=True" in line and "--strand forward" in line


def held_out_rows(config: str):
    from gfm_jax import command_line
    from gfm_jax.data import tasks

    task = tasks.load_task(command_line.load_config(config).task)
    return task.test.sequences, [task.label_names[i] for i in task.test.labels]


@pytest.mark.slow
def test_lora_finetune_saves_the_adapter_apart_and_merge_predicts_the_same(pre, tmp_path):
    from gfm_jax import api
    from gfm_jax.errors import UserError

    out = tmp_path / "eval"
    adapter = ["--config.finetune.adapter=lora", "--config.finetune.lora_rank=2"]
    main(["finetune", "--config", SPECIES, "--workdir", str(pre), "--out", str(out), *adapter,
          "--strand", "both"])  # fmt: skip
    (run_json,) = out.glob("species_finetune_pretrained_lora_both_strands_seed0.json")
    result = json.loads(run_json.read_text())
    # Head (32 * 4 + 4) and rank-2 LoRA on 7 projections in 2 layers of width 32, MLP 64.
    lora = 2 * (
        3 * (32 * 2 + 2 * 32) + (32 * 2 + 2 * 32) + 2 * (32 * 2 + 2 * 64) + (64 * 2 + 2 * 32)
    )
    assert result["trainable_params"] == 32 * 4 + 4 + lora
    # Adam's two moments of the trained parameters, and a few step counters.
    assert (
        2 * 4 * result["trainable_params"]
        <= result["optimizer_state_bytes"]
        < 2 * 4 * (result["trainable_params"] + 64)
    )
    model = api.load_finetuned(run_json)  # the JSON names its saved model
    assert model.mode == "lora" and model.meta["stored"] == "lora"
    # The saved tree holds the head and the LoRA matrices only, not the base encoder.
    params_dir = pathlib.Path(result["checkpoint"]) / "ckpt" / "0" / "params"
    tree = ocp.StandardCheckpointer().metadata(params_dir).item_metadata.tree
    names = set(traverse_util.flatten_dict(tree))
    assert names and all(k[0] == "head" or any(p.endswith("_lora") for p in k) for k in names)

    # The saved model reproduces the run's strand-averaged test accuracy.
    sequences, labels = held_out_rows(SPECIES)
    predicted = model.predict(list(sequences), strand="both").argmax(-1)
    accuracy = np.mean([model.label_names[i] == y for i, y in zip(predicted, labels, strict=True)])
    assert accuracy == pytest.approx(result["test"]["accuracy"], abs=1e-9)

    main(["merge", "--finetuned", result["checkpoint"], "--out", str(tmp_path / "merged")])
    merged = api.load_finetuned(tmp_path / "merged")
    assert merged.mode == "full"
    assert not any("lora" in "/".join(k) for k in traverse_util.flatten_dict(merged.params))
    windows = list(sequences[:8])
    np.testing.assert_allclose(merged.predict(windows), model.predict(windows), atol=1e-5)
    with pytest.raises(UserError, match="exists"):
        api.merge_adapters(result["checkpoint"], tmp_path / "merged")
    with pytest.raises(UserError, match="nothing to merge"):
        api.merge_adapters(tmp_path / "merged", tmp_path / "again")
    with pytest.raises(UserError, match="not a fine-tuned model"):
        api.load_finetuned(pre)
    with pytest.raises(UserError, match="depend on the strand"):
        api.load_finetuned(_splice_run(pre, tmp_path)).predict(windows, strand="both")


def _splice_run(pre: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    """A scratch, frozen-backbone splice fine-tune, run twice into one directory (a rerun
    replaces the saved model); returns its saved model."""
    out = tmp_path / "splice"
    for _ in range(2):
        main(["finetune", "--config", SPLICE, "--workdir", str(pre), "--out", str(out),
              "--model", "scratch", "--config.finetune.freeze_backbone=True"])  # fmt: skip
    (run_json,) = out.glob("*_seed0.json")
    result = json.loads(run_json.read_text())
    from gfm_jax import api

    model = api.load_finetuned(result["checkpoint"])
    # A random encoder is not on disk elsewhere: the whole model is saved and reloads as run.
    sequences, labels = held_out_rows(SPLICE)
    predicted = model.predict(list(sequences)).argmax(-1)
    accuracy = np.mean([model.label_names[i] == y for i, y in zip(predicted, labels, strict=True)])
    assert model.meta["stored"] == "full" and model.mode == "frozen"
    assert accuracy == pytest.approx(result["test"]["accuracy"], abs=1e-9)
    return pathlib.Path(result["checkpoint"])


@pytest.mark.slow
def test_embed_layers_poolings_and_strands(pre, tmp_path):
    from gfm_jax import api

    model = api.load(pre)
    seqs = ["ACGTTGCA" * 8, "GGGATTACA" * 3]
    last = model.embed(seqs)
    every = model.embed(seqs, layers="all")
    assert last.shape == (2, 32) and every.shape == (2, model.num_layers + 1, 32)
    np.testing.assert_allclose(every[:, -1], last, atol=1e-6)
    np.testing.assert_allclose(model.embed(seqs, layers=[0, -1])[:, 0], every[:, 0], atol=1e-6)
    tokens = model.embed(seqs, pooling="none")
    assert tokens.shape == (2, 64, 32) and not tokens[1, 27:].any()
    np.testing.assert_allclose(
        tokens[1, :27].max(0), model.embed(seqs, pooling="max")[1], atol=1e-6
    )
    both = model.embed(seqs, strand="both")
    rc = [fasta.reverse_complement(s) for s in seqs]
    np.testing.assert_allclose(both, (last + model.embed(rc)) / 2, atol=1e-5)
    np.testing.assert_allclose(model.embed(rc, strand="both"), both, atol=1e-5)
    from gfm_jax.errors import UserError

    with pytest.raises(UserError, match="layers 0"):
        model.embed(seqs, layers=[5])
    with pytest.raises(UserError, match="per-token"):
        model.embed(seqs, pooling="none", strand="both")


@pytest.mark.slow
def test_rc_equivariant_pretraining_saves_and_embeds_equivariantly(tmp_path):
    from gfm_jax import api

    work = tmp_path / "rc"
    steps = {"train.num_steps": 4, "train.checkpoint_every": 4, "model.rc_equivariant": True}
    r = run_module("gfm_jax.train", "--config", "configs/pretrain/tiny.py", "--workdir", str(work),
                   *micro_overrides(**steps))  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    model = api.load(work)
    (record,) = fasta.read_fasta(pathlib.Path("gfm_jax/data/builtin_files/yeast_chrI.fa.gz"))
    text = record.sequence().upper()
    seqs = [text[i : i + 90] for i in (5000, 9000, 20000)]
    rc = [fasta.reverse_complement(x) for x in seqs]
    tokens, tokens_rc = model.embed(seqs, pooling="none"), model.embed(rc, pooling="none")
    assert tokens.shape == (3, 90, 64)  # both strands' 32 channels
    swapped = np.concatenate([tokens_rc[..., 32:], tokens_rc[..., :32]], axis=-1)[:, ::-1]
    np.testing.assert_allclose(swapped, tokens, atol=1e-5)
    pooled, pooled_rc = model.embed(seqs), model.embed(rc)
    np.testing.assert_allclose(
        np.concatenate([pooled_rc[:, 32:], pooled_rc[:, :32]], -1), pooled, atol=1e-5
    )


@pytest.mark.slow
@pytest.mark.multiprocess
def test_lora_finetunes_alike_on_an_fsdp_mesh_and_in_two_processes(pre, tmp_path):
    """The adapter step is the sharded fine-tuning step: 1 process x 8 devices on a (2, 4, 1)
    mesh and 2 processes x 4 devices (data parallel) train alike and both save a model."""
    import subprocess
    import sys

    from conftest import ROOT

    from gfm_jax import api

    common = [
        *("-m", "gfm_jax.evaluate", "finetune", "--config", SPECIES, "--workdir", str(pre)),
        "--config.finetune.adapter=lora",
    ]
    single = run_module(*common[1:], "--out", str(tmp_path / "one"), "--cpu_devices", "8",
                        "--config.mesh.shape=(2,4,1)")  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    launch = ["bash", "scripts/launch_local.sh", "--processes", "2", "--cpu-devices", "4",
              "--log-dir", str(tmp_path), "--", sys.executable, *common,
              "--out", str(tmp_path / "two")]  # fmt: skip
    two = subprocess.run(launch, cwd=ROOT, capture_output=True, text=True, timeout=600)
    logs = "".join(p.read_text() for p in tmp_path.glob("launch_local.*.log"))
    assert two.returncode == 0, logs[-3000:]
    (a,), (b,) = ((tmp_path / d).glob("*lora_seed0.json") for d in ("one", "two"))
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ra["trainable_params"] == rb["trainable_params"]
    for x, y in zip(ra["history"], rb["history"], strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-4)
    windows = held_out_rows(SPECIES)[0][:16]
    one, two_ = (api.load_finetuned(r["checkpoint"]) for r in (ra, rb))
    np.testing.assert_allclose(one.predict(windows), two_.predict(windows), atol=1e-3)
