"""Long windows: the `sequence` mesh axis (ring and gather attention) against one device, the
memory-efficient chunked attention, the sequence-length warm-up and RoPE context extension."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_data_pipeline import collect, make_pipeline
from test_distributed import one_process, train_losses, two_processes
from test_ops import assert_values_and_grads_close, einsum_attention, padded_mask, qkv

from gfm_jax import config as config_lib
from gfm_jax import ops, sharding
from gfm_jax.data.corpus import load_corpus
from gfm_jax.errors import UserError
from gfm_jax.evaluate import pretrained
from gfm_jax.models.attention import alibi_slopes, rope_tables
from gfm_jax.models.encoder import EncoderConfig
from gfm_jax.models.heads import MaskedLM
from gfm_jax.ops import attention as attention_ops
from gfm_jax.ops import context_parallel
from gfm_jax.train.losses import training_loss_sum
from gfm_jax.train.step import causal_objective, mlm_objective

RULES = config_lib.DEFAULT_RULES


@pytest.fixture(params=["ring", "gather"])
def mode(request, monkeypatch):
    """Runs the test with each context-parallel implementation as the default."""
    monkeypatch.setitem(attention_ops.CONTEXT_PARALLEL, jax.default_backend(), request.param)
    return request.param


@pytest.mark.parametrize(
    "position, causal, mask_kind, length",
    [
        pytest.param("rope", False, "holes", 16, marks=pytest.mark.slow),
        pytest.param("alibi", True, "holes", 16, marks=pytest.mark.slow),
        pytest.param("alibi", False, "empty_row", 16, marks=pytest.mark.slow),
        ("rope", True, "holes", 13),  # queries padded to whole chunks
    ],
)
def test_chunked_attention_equals_the_einsum_reference(
    monkeypatch, position, causal, mask_kind, length
):
    monkeypatch.setattr(context_parallel, "SCORE_BUDGET", 2 * 4 * length * 4)  # chunks of 4
    mask = padded_mask(length, mask_kind)
    slopes = alibi_slopes(4) if position == "alibi" else None
    # A row without keys (all padding) gives zeros and passes no gradient; its output is
    # unused, so the other rows are compared with the reference.
    rows = slice(1, 2) if mask_kind == "empty_row" else slice(None)

    def chunked(q, k, v):
        out = context_parallel.local_attention(q, k, v, mask, causal=causal, alibi_slopes_N=slopes)
        return out[rows]

    assert_values_and_grads_close(
        chunked, lambda q, k, v: einsum_attention(q, k, v, mask, slopes, causal)[rows], qkv(length)
    )
    if mask_kind == "empty_row":
        q, k, v = qkv(length)
        out = context_parallel.local_attention(q, k, v, mask, causal=causal, alibi_slopes_N=slopes)
        np.testing.assert_array_equal(out[0], 0.0)


@pytest.mark.parametrize(
    "mesh_shape, position, causal",
    [
        ((2, 1, 1, 4), "rope", True),
        pytest.param((1, 1, 1, 8), "alibi", True, marks=pytest.mark.slow),
        pytest.param((1, 1, 2, 4), "alibi", False, marks=pytest.mark.slow),
    ],
)
def test_sequence_sharded_attention_equals_the_reference(mode, mesh_shape, position, causal):
    """Keys, padding, causal masks and ALiBi distances are global across the shards; the
    sequence axis composes with data and tensor (heads) sharding."""
    mesh = sharding.make_mesh(mesh_shape)
    mask = padded_mask(64, "holes").at[1, 40:].set(False)
    slopes = alibi_slopes(4) if position == "alibi" else None
    assert_values_and_grads_close(
        lambda q, k, v: ops.attend(
            q, k, v, mask, alibi_slopes_N=slopes, causal=causal, mesh=mesh, rules=RULES
        ),
        lambda q, k, v: einsum_attention(q, k, v, mask, slopes, causal),
        qkv(64),
    )


def loss_and_grads(cfg: EncoderConfig, mesh, batch: dict) -> tuple[float, list]:
    """The train step's loss (mean over targets) and gradient, as the step computes them."""
    model = MaskedLM(cfg, mesh, RULES)
    params = model.init(jax.random.key(0), batch["inputs"][:, :8])["params"]
    params = jax.device_get(nn.meta.unbox(params))
    objective = causal_objective(model, 0, (5, 9)) if cfg.causal else mlm_objective(model, 0)

    def loss(p):
        sums = objective(p, batch)
        return training_loss_sum(sums) / sums["weight_sum"]

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    return float(value), jax.tree.leaves(jax.device_get(grads))


def genome_batch(length: int) -> dict:
    """Two windows of real sequence (the built-in human chr17 piece, as ids 5..8), the second
    padded over its last quarter, masked-LM targets at 15%."""
    from gfm_jax.data import builtin, fasta

    path = builtin.resolve("builtin:human_hg19_chr17_1-40000.fa.gz")[0]
    text = fasta.decode_codes(fasta.read_fasta(path)[0].codes).upper()
    seq = np.frombuffer(text[20000 : 20000 + 2 * length].encode(), np.uint8)
    ids = np.select([seq == b for b in b"ACGT"], [5, 6, 7, 8], 9).astype(np.int32)
    ids = ids.reshape(2, length)
    ids[:, 0] = 1
    ids[1, -length // 4 :] = 0
    rng = np.random.default_rng(0)
    weights = ((rng.random(ids.shape) < 0.15) & (ids > 1)).astype(np.float32)
    return {"inputs": np.where(weights > 0, 4, ids), "targets": ids, "weights": weights}


@pytest.mark.parametrize(
    "impl, length, causal, extra",
    [
        # ring attention itself is checked by the default suite above; the whole step here
        pytest.param("ring", 256, True, {"position": "alibi"}, marks=pytest.mark.slow),
        pytest.param("gather", 512, False, {}, marks=pytest.mark.slow),
        pytest.param("ring", 1000, False, {"scan_layers": True, "remat": "full"},
                     marks=pytest.mark.slow),  # padded to 8 x 125
        pytest.param("gather", 1000, True, {}, marks=pytest.mark.slow),
        *(
            pytest.param(impl, 4096, causal, extra, marks=pytest.mark.slow)
            for impl in ("ring", "gather")
            for causal, extra in ((False, {}), (True, {}), (True, {"position": "alibi"}))
        ),
    ],
)  # fmt: skip
def test_sequence_axis_gives_the_loss_and_gradients_of_one_device(
    monkeypatch, impl, length, causal, extra
):
    """Masked-LM and causal, with padding, on real sequence: the sequence axis alone and with
    fsdp and tensor give the single device's loss and gradients."""
    monkeypatch.setitem(attention_ops.CONTEXT_PARALLEL, jax.default_backend(), impl)
    cfg = EncoderConfig(
        vocab_size=12, num_layers=2, hidden_size=32, num_heads=4, mlp_dim=64, causal=causal,
        **extra,
    )  # fmt: skip
    batch = genome_batch(length)
    one = loss_and_grads(cfg, sharding.make_mesh((1, 1, 1, 1), jax.devices()[:1]), batch)
    # The sequence axis alone, and (slow cases) with fsdp and tensor.
    for shape in [(1, 1, 1, 8), (1, 2, 2, 2)] if length > 256 else [(1, 1, 1, 8)]:
        got = loss_and_grads(cfg, sharding.make_mesh(shape), batch)
        assert abs(got[0] - one[0]) < 1e-5, (shape, got[0], one[0])
        worst = max(float(np.max(np.abs(a - b))) for a, b in zip(got[1], one[1], strict=True))
        assert worst < 1e-5, (shape, worst)


def test_long_windows_pick_memory_efficient_attention():
    assert ops.implementation("auto", jnp.float32, 8192) == "chunked"
    assert ops.implementation("auto", jnp.float32, 512, shards=8) == "gather"  # measured, CPU
    assert ops.implementation("xla", jnp.float32, 512, shards=8) == "gather"  # whole-program
    assert attention_ops.length_axes(sharding.make_mesh((2, 1, 1, 4)), RULES) == (("sequence",), 4)
    # A sharded window is padded to a multiple of the shards; the added tokens are masked.
    mask = ops.TokenMask.create(
        jnp.ones((2, 13), bool), "auto", jnp.float32, mesh=sharding.make_mesh((1, 1, 1, 8)),
        rules=RULES,
    )  # fmt: skip
    assert mask.keep_BxL.shape == (2, 16) and not mask.keep_BxL[:, 13:].any()
    x = jnp.arange(2 * 13 * 3.0).reshape(2, 13, 3)
    np.testing.assert_array_equal(mask.exit(mask.enter(x)), x)


def test_mesh_takes_a_sequence_axis_and_old_three_axis_shapes():
    assert dict(sharding.make_mesh((1, 1, 1, 8)).shape)["sequence"] == 8
    assert dict(sharding.make_mesh((2, -1, 1)).shape) == {
        "data": 2, "fsdp": 4, "tensor": 1, "sequence": 1,
    }  # fmt: skip
    with pytest.raises(UserError, match="needs 3 devices but 8"):
        sharding.make_mesh((1, 1, 1, 3))


def test_rope_scaling_interpolates_positions_or_raises_the_base():
    cos, sin = rope_tables(64, 16, 10000.0)
    lin_cos, lin_sin = rope_tables(64, 16, 10000.0, scaling="linear", factor=4.0)
    np.testing.assert_allclose(lin_cos[:, 8], cos[:, 2], atol=1e-6)  # position 8 -> 2
    np.testing.assert_allclose(lin_sin[:, 60], sin[:, 15], atol=1e-6)
    ntk_cos, _ = rope_tables(64, 16, 10000.0, scaling="ntk", factor=4.0)
    want, _ = rope_tables(64, 16, 10000.0 * 4.0 ** (16 / 14))
    np.testing.assert_allclose(ntk_cos, want, atol=1e-6)
    np.testing.assert_allclose(ntk_cos[..., 0], cos[..., 0], atol=1e-6)  # fastest unchanged
    for key, bad in (("rope_scaling", "yarn"), ("rope_factor", 0.5)):
        model = config_lib.pretrain_defaults().model
        model[key] = bad
        with pytest.raises(UserError, match=f"model.{key}"):
            EncoderConfig.from_config(model, vocab_size=12, mask_id=4)


def test_length_warmup_uses_each_stage_up_to_its_step_and_resumes_exactly():
    corpus = load_corpus(["builtin"])
    p = make_pipeline(corpus, window_len=64, length_warmup=((3, 16), (5, 32)))
    stream = collect(p.dataset("train", global_batch=4, first_step=0, last_step=8))
    assert [b["inputs"].shape[1] for b in stream] == [17, 17, 17, 33, 33, 65, 65, 65]
    assert [p.tokens_at(step) for step in range(1, 9)] == [17, 17, 17, 33, 33, 65, 65, 65]
    for first in (2, 4, 6):  # inside each stage
        resumed = collect(p.dataset("train", global_batch=4, first_step=first, last_step=8))
        for a, b in zip(stream[first:], resumed, strict=True):
            np.testing.assert_array_equal(a["inputs"], b["inputs"])
            np.testing.assert_array_equal(a["weights"], b["weights"])
    val = collect(p.dataset("val", global_batch=4, first_step=0, last_step=2))
    assert {b["inputs"].shape[1] for b in val} == {65}
    for bad in (((3, 64),), ((5, 16), (3, 32)), ((3,),), ((0, 16),)):
        with pytest.raises(UserError, match="data.length_warmup"):
            make_pipeline(corpus, window_len=64, length_warmup=bad)


@pytest.mark.slow
def test_two_processes_equal_one_on_the_sequence_axis_with_a_length_warmup(tmp_path):
    """2 processes x 4 devices, the window sharded over all 8, equal 1 x 8, through a warm-up
    stage boundary; and a run stopped inside the warm-up resumes to the same parameters."""
    overrides = {
        "mesh.shape": "(1,1,1,8)",
        "data.window_len": 511,
        "data.length_warmup": "((3,127),)",
        "train.num_steps": 6,
        "train.checkpoint_every": 2,
    }
    two_processes(tmp_path / "two", tmp_path / "logs", **overrides)
    one_process(tmp_path / "one", **overrides)
    two, one = train_losses(tmp_path / "two"), train_losses(tmp_path / "one")
    assert sorted(two) == sorted(one) == list(range(1, 7))
    for step in one:
        assert abs(two[step] - one[step]) < 1e-5, (step, two[step], one[step])
    one_process(tmp_path / "split", **overrides, **{"train.stop_at_step": 2})
    one_process(tmp_path / "split", **overrides)
    a, b = (pretrained.load(tmp_path / d).params for d in ("one", "split"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("tokenizer, size", [("char", 1_000_000), ("nt6", 0)])
def test_windows_of_a_megabase_are_built_index_pure(tokenizer, size):
    """1 Mb windows (char: 1,000,001 tokens; nt6: 166,666 tokens of 999,996 bases) from the
    built-in S. aureus genome, the same whichever step range asks for them."""
    corpus = load_corpus(["builtin:saureus_NCTC8325_NC_007795.fa.gz"])
    p = make_pipeline(
        corpus, tokenizer=tokenizer, window_len=size, window_tokens=0 if size else 166_666,
        val_fraction=0.4, val_start=0.6,
    )  # fmt: skip
    assert p.window_len >= 999_996
    a = collect(p.dataset("train", global_batch=1, first_step=0, last_step=2))
    b = collect(p.dataset("train", global_batch=1, first_step=1, last_step=2))
    assert a[0]["inputs"].shape == (1, 1 + p.num_tokens)
    np.testing.assert_array_equal(a[1]["inputs"], b[0]["inputs"])
    np.testing.assert_array_equal(a[1]["weights"], b[0]["weights"])
    assert 0.13 < float(a[0]["weights"].astype(bool).mean()) < 0.17
