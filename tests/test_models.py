"""The encoder family: positions, causal masks, attention paths, layer scan, presets."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfm_jax.errors import UserError
from gfm_jax.models import presets
from gfm_jax.models.attention import (
    alibi_bias,
    alibi_slopes,
    at_even_length,
    attend,
    attend_by_lengths,
    reference_attention,
    resolve_implementation,
    right_padded_lengths,
)
from gfm_jax.models.blocked_attention import blocked_attention
from gfm_jax.models.encoder import EncoderConfig
from gfm_jax.models.heads import MaskedLM
from gfm_jax.models.layers import Mlp
from gfm_jax.train import flops

SMALL = EncoderConfig(vocab_size=12, num_layers=2, hidden_size=32, num_heads=4, mlp_dim=64)


def qkv(length=16):
    keys = jax.random.split(jax.random.key(1), 3)
    return [jax.random.normal(k, (2, length, 4, 8)) for k in keys]


@pytest.mark.parametrize("position, causal", [("rope", False), ("alibi", False), ("rope", True)])
def test_attention_path_matches_the_einsum_reference(position, causal):
    q, k, v = qkv()
    mask = jnp.ones((2, 16), bool).at[1, 11:].set(False)  # padding in the second row
    bias = alibi_bias(4, 16) if position == "alibi" else None
    got = attend(q, k, v, mask, "xla", bias, causal)
    want = reference_attention(q, k, v, mask, bias, causal)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(
    "mask_kind, length, position, causal",
    [
        ("right_padded", 16, "rope", False),
        ("right_padded", 17, "alibi", True),
        ("holes", 16, "rope", True),
        ("holes", 17, "alibi", False),
        ("empty_row", 16, "rope", False),
    ],
)
def test_key_lengths_path_equals_the_mask_and_falls_back_where_lengths_cannot_say_it(
    mask_kind, length, position, causal
):
    """The cuDNN path hands right-padded masks over as key lengths; a mask with holes, or a
    row that keeps no key, must take the dense-mask branch. Run here with the xla
    implementation in both branches, which takes both forms."""
    q, k, v = qkv(length)
    mask = jnp.ones((2, length), bool).at[1, 11:].set(False)
    if mask_kind == "holes":
        mask = mask.at[0, 3].set(False)
    if mask_kind == "empty_row":
        mask = mask.at[0].set(False)
    lengths, right_padded = right_padded_lengths(mask)
    np.testing.assert_array_equal(lengths, mask.sum(-1))
    assert bool(right_padded) is (mask_kind == "right_padded")
    bias = alibi_bias(4, length) if position == "alibi" else None
    attention = functools.partial(
        jax.nn.dot_product_attention, bias=bias, is_causal=causal, implementation="xla"
    )
    cotangent = jax.random.normal(jax.random.key(3), q.shape)

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v) * cotangent)

    by_lengths = lambda q, k, v: attend_by_lengths(attention, attention, q, k, v, mask)  # noqa: E731
    reference = lambda q, k, v: reference_attention(q, k, v, mask, bias, causal)  # noqa: E731
    np.testing.assert_allclose(by_lengths(q, k, v), reference(q, k, v), atol=1e-5)
    got = jax.grad(lambda *a: loss(by_lengths, *a), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(lambda *a: loss(reference, *a), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)


@pytest.mark.parametrize(
    "mask_kind, position, causal",
    [("right_padded", "rope", False), ("holes", "alibi", False), ("right_padded", "alibi", True)],
)
def test_odd_lengths_padded_to_even_give_the_same_values_and_gradients(mask_kind, position, causal):
    """cuDNN trains only at even lengths, so odd windows (CLS + 2^n) get one masked key and one
    dropped query; with XLA in its place here, nothing may change, values or gradients."""
    length = 17
    q, k, v = qkv(length)
    mask = jnp.ones((2, length), bool).at[1, 11:].set(False)
    if mask_kind == "holes":
        mask = mask.at[0, 3].set(False)
    bias = alibi_bias(4, length) if position == "alibi" else None
    seen_lengths = []

    def xla_by_lengths(q, k, v, mask, bias):
        seen_lengths.append(q.shape[1])
        by = functools.partial(
            jax.nn.dot_product_attention, bias=bias, is_causal=causal, implementation="xla"
        )
        return attend_by_lengths(by, by, q, k, v, mask)

    padded = lambda q, k, v: at_even_length(xla_by_lengths, q, k, v, mask, bias)  # noqa: E731
    reference = lambda q, k, v: reference_attention(q, k, v, mask, bias, causal)  # noqa: E731
    np.testing.assert_allclose(padded(q, k, v), reference(q, k, v), atol=1e-5)
    assert seen_lengths == [length + 1]
    cotangent = jax.random.normal(jax.random.key(3), q.shape)
    got = jax.grad(lambda *a: jnp.sum(padded(*a) * cotangent), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(lambda *a: jnp.sum(reference(*a) * cotangent), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)


@pytest.mark.parametrize(
    "length, causal, scan_layers",
    # The odd, causal, scanned case is slow (CI runs it): the default suite stays under 10 minutes.
    [(16, False, False), pytest.param(17, True, True, marks=pytest.mark.slow)],
)
def test_encoder_moves_kept_tokens_first_for_cudnn_and_changes_nothing(
    cudnn_as_xla, length, causal, scan_layers
):
    """On the cuDNN path the encoder reorders each row's tokens (kept first) so attention gets
    key lengths at an even length, never a mask or a per-layer check; outputs at kept tokens
    and parameter gradients must equal the einsum reference's, for holes, right padding and
    an empty row."""
    cfg = dataclasses.replace(SMALL, causal=causal, scan_layers=scan_layers)
    ids = jax.random.randint(jax.random.key(2), (3, length), 0, cfg.vocab_size)
    mask = jnp.ones((3, length), bool).at[0, 3].set(False).at[0, 9].set(False)  # holes
    mask = mask.at[1, 11:].set(False).at[2].set(False)  # right padding; an empty row
    cotangent = jax.random.normal(jax.random.key(3), (3, length, cfg.hidden_size))
    cotangent = cotangent * mask[..., None]  # what padded tokens hold is unused

    def run(attention):
        from gfm_jax.models.encoder import Encoder

        model = Encoder(dataclasses.replace(cfg, attention=attention))
        params = jax.jit(model.init)(jax.random.key(0), ids, mask)["params"]

        def loss(params):
            out = model.apply({"params": params}, ids, mask)
            return jnp.sum(out * cotangent), out

        (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return out * mask[..., None], grads

    got_out, got_grads = run("cudnn")
    calls = list(cudnn_as_xla)
    want_out, want_grads = run("reference")
    assert calls and all(
        c["implementation"] == "cudnn" and c["key_lengths"] and not c["mask"] for c in calls
    ), calls
    assert {c["length"] for c in calls} == {length + length % 2}
    np.testing.assert_allclose(got_out, want_out, atol=1e-5)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        # Float32 sums over 48 tokens: the bound scales with the gradient's size.
        np.testing.assert_allclose(g, w, atol=1e-6 * float(np.abs(w).max()) + 1e-6)


def test_key_lengths_path_saves_no_score_sized_residual():
    """Differentiating lax.cond keeps both branches' residuals; the dense-mask branch is
    rematerialised, so nothing of [B, N, L, L] or [B, 1, L, L] size is held for the backward."""
    length = 64
    q, k, v = qkv(length)
    mask = jnp.ones((2, length), bool).at[1, 40:].set(False)
    attention = functools.partial(jax.nn.dot_product_attention, implementation="xla")
    # A fast branch that saves only its inputs, like cuDNN's (q, k, v, output, statistics):
    # any score-sized residual must then come from the fallback.
    fast = jax.checkpoint(attention)
    _, vjp = jax.vjp(lambda q, k, v: attend_by_lengths(fast, attention, q, k, v, mask), q, k, v)
    sizes = [leaf.size for leaf in jax.tree_util.tree_leaves(vjp)]
    assert sizes and max(sizes) < 2 * length * length, sizes


@pytest.mark.parametrize("position, causal", [("rope", False), ("alibi", False), ("alibi", True)])
@pytest.mark.parametrize("heads_per_block, streams", [(1, 1), (3, 2), (4, 3)])
def test_blocked_attention_values_and_gradients_match_the_reference(
    position, causal, heads_per_block, streams
):
    q, k, v = qkv()
    mask = jnp.ones((2, 16), bool).at[1, 11:].set(False)
    slopes = alibi_slopes(4) if position == "alibi" else None
    bias = alibi_bias(4, 16) if position == "alibi" else None
    cotangent = jax.random.normal(jax.random.key(7), q.shape)

    def blocked(q, k, v):
        out = blocked_attention(
            q,
            k,
            v,
            mask,
            causal=causal,
            alibi_slopes_N=slopes,
            heads_per_block=heads_per_block,
            streams=streams,
        )
        return jnp.sum(out * cotangent), out

    def reference(q, k, v):
        out = reference_attention(q, k, v, mask, bias, causal)
        return jnp.sum(out * cotangent), out

    (_, got), got_grads = jax.value_and_grad(blocked, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    (_, want), want_grads = jax.value_and_grad(reference, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    np.testing.assert_allclose(got, want, atol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_auto_attention_picks_blocked_for_long_windows_on_cpu_and_explicit_choices_stay():
    assert jax.default_backend() == "cpu"
    assert resolve_implementation("auto", jnp.float32, 512) == "blocked"
    assert resolve_implementation("auto", jnp.float32, 129) == "xla"  # short: scores fit cache
    assert resolve_implementation("xla", jnp.bfloat16, 512) == "xla"


def test_model_outputs_agree_across_attention_implementations():
    ids = jnp.asarray(np.random.default_rng(0).integers(5, 12, (2, 16)))
    mask = jnp.ones((2, 16), bool).at[0, 12:].set(False)
    for position in ("rope", "alibi"):
        outs = []
        for implementation in ("blocked", "xla", "reference"):
            cfg = dataclasses.replace(SMALL, position=position, attention=implementation)
            model = MaskedLM(cfg)
            params = model.init(jax.random.key(0), ids)
            outs.append(model.apply(params, ids, mask))
        np.testing.assert_allclose(outs[0], outs[2], atol=1e-5)
        np.testing.assert_allclose(outs[1], outs[2], atol=1e-5)


def test_causal_attention_does_not_see_the_future():
    model = MaskedLM(dataclasses.replace(SMALL, causal=True))
    ids = jnp.asarray(np.random.default_rng(0).integers(5, 12, (1, 10)))
    params = model.init(jax.random.key(0), ids)
    changed = ids.at[0, 7].set((ids[0, 7] - 4) % 7 + 5)  # another base at position 7
    a, b = model.apply(params, ids), model.apply(params, changed)
    np.testing.assert_allclose(a[0, :7], b[0, :7], atol=1e-6)  # positions before 7 unchanged
    assert not np.allclose(a[0, 7:], b[0, 7:])


def test_alibi_slopes_follow_the_geometric_rule():
    np.testing.assert_allclose(alibi_slopes(8), [2.0 ** (-i) for i in range(1, 9)])
    assert alibi_slopes(12).shape == (12,)  # non-power of two: interleaved extra slopes
    bias = alibi_bias(2, 4)
    assert bias.shape == (1, 2, 4, 4) and float(bias[0, 0, 0, 3]) == pytest.approx(-3 / 16)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(position="alibi"),
        dict(position="learned", max_positions=16),
        dict(activation="geglu", tie_embeddings=True),
        dict(activation="gelu", use_bias_mlp=True, norm="rmsnorm"),
    ],
)
def test_variants_build_and_differ(overrides):
    cfg = dataclasses.replace(SMALL, **overrides)
    ids = jnp.asarray(np.random.default_rng(0).integers(5, 12, (2, 16)))
    model = MaskedLM(cfg)
    params = model.init(jax.random.key(0), ids)
    logits = model.apply(params, ids)
    assert logits.shape == (2, 16, 12) and bool(jnp.isfinite(logits).all())
    names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert any("position_embed" in n for n in names) == (cfg.position == "learned")
    assert any("decoder_bias" in n for n in names) == cfg.tie_embeddings


def test_learned_positions_refuse_longer_sequences():
    model = MaskedLM(dataclasses.replace(SMALL, position="learned", max_positions=8))
    with pytest.raises(UserError, match="max_positions=8"):
        model.init(jax.random.key(0), jnp.zeros((1, 9), jnp.int32))


def test_scanned_layers_equal_the_loop():
    ids = jnp.asarray(np.random.default_rng(0).integers(5, 12, (2, 16)))
    loop, scan = MaskedLM(SMALL), MaskedLM(dataclasses.replace(SMALL, scan_layers=True))
    params = nn.meta.unbox(loop.init(jax.random.key(0), ids))
    encoder = dict(params["params"]["encoder"])
    layers = [encoder.pop(f"layer_{i}") for i in range(SMALL.num_layers)]
    encoder["layers"] = {"block": jax.tree.map(lambda *x: jnp.stack(x), *layers)}
    stacked = {"params": {**params["params"], "encoder": encoder}}
    abstract = jax.eval_shape(scan.init, jax.random.key(0), ids)
    assert jax.tree.structure(nn.meta.unbox(abstract)) == jax.tree.structure(stacked)
    np.testing.assert_allclose(scan.apply(stacked, ids), loop.apply(params, ids), atol=1e-5)


@pytest.mark.parametrize("name", sorted(presets.PUBLISHED))
def test_preset_parameter_counts_are_within_one_percent_of_the_published(name):
    pub = presets.PUBLISHED[name]
    cfg = EncoderConfig.from_config(presets.get(name), pub["vocab"])
    shapes = jax.eval_shape(
        lambda r: MaskedLM(cfg).init(r, jnp.zeros((1, 8), jnp.int32)), jax.random.key(0)
    )
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert abs((count + pub["published_extra"]) / pub["params"] - 1) < 0.01
    line = presets.compare_to_published(name, count, pub["vocab"])
    assert f"{count:,} parameters" in line and "%" in line


def test_model_flops_per_token_by_hand():
    # 2 layers x (attention 4*32*32 + SwiGLU 3*32*64) + head (32*32 + 32*12) = 21,888 matmul
    # parameters; attention scores 12 * 2 layers * 16 tokens * 32 = 12,288 FLOPs per token.
    assert flops.matmul_params(SMALL) == 21_888
    assert flops.train_flops_per_token(SMALL, 16) == 6 * 21_888 + 12_288


def test_gelu_is_the_exact_erf_form_as_in_esm_and_nucleotide_transformer():
    from math import erf, sqrt

    from gfm_jax.models.layers import exact_gelu

    xs = np.linspace(-4, 4, 17)
    want = [0.5 * x * (1 + erf(x / sqrt(2))) for x in xs]
    np.testing.assert_allclose(exact_gelu(jnp.asarray(xs)), want, atol=1e-6)


@pytest.mark.parametrize(
    "activation, use_bias, matmul", [("swiglu", False, "xla"), ("geglu", True, "cpu_gemm")]
)
def test_glu_runs_gate_and_up_as_one_matmul_with_checkpoint_parameters(
    activation, use_bias, matmul
):
    x = jax.random.normal(jax.random.key(1), (2, 8, 16))
    mlp = Mlp(16, 32, activation, use_bias, 0.02, jnp.float32, matmul)
    boxed = mlp.init(jax.random.key(0), x)
    assert str(jax.make_jaxpr(mlp.apply)(boxed, x)).count("dot_general") == 2  # gate+up, down

    # gate and up are the kernels (and biases) a DenseGeneral builds: the plain GELU MLP's
    # `up` is one; values, shapes and logical axes are what checkpoints hold.
    dense = Mlp(16, 32, "gelu", use_bias, 0.02, jnp.float32, matmul).init(jax.random.key(0), x)
    is_box = lambda v: isinstance(v, nn.Partitioned)  # noqa: E731
    names = lambda tree: jax.tree.map(lambda v: v.names, tree, is_leaf=is_box)  # noqa: E731
    for name in ("gate", "up"):
        assert names(boxed["params"][name]) == names(dense["params"]["up"])
    for a, b in zip(*(jax.tree.leaves(t["params"]["up"]) for t in (boxed, dense)), strict=True):
        np.testing.assert_array_equal(a, b)

    def reference(p, x):  # the two projections written out
        act = (
            jax.nn.silu
            if activation == "swiglu"
            else functools.partial(jax.nn.gelu, approximate=False)
        )
        proj = {n: x @ p[n]["kernel"] + (p[n]["bias"] if use_bias else 0) for n in ("gate", "up")}
        return (act(proj["gate"]) * proj["up"]) @ p["down"]["kernel"] + (
            p["down"]["bias"] if use_bias else 0
        )

    params = nn.meta.unbox(boxed)
    fused = lambda p, x: jnp.sum(mlp.apply(p, x) ** 2)  # noqa: E731
    plain = lambda p, x: jnp.sum(reference(p["params"], x) ** 2)  # noqa: E731
    np.testing.assert_allclose(
        jax.jit(mlp.apply)(params, x), reference(params["params"], x), rtol=1e-5, atol=1e-6
    )
    got, want = (jax.jit(jax.grad(f, (0, 1)))(params, x) for f in (fused, plain))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_norm_with_written_backward_pass_matches_jax_differentiation(kind):
    """`norm_grad="written"` (models/norm_vjp.py) writes the norms' backward pass out: the
    values must be JAX's bit for bit (the same forward function) and the gradients (input,
    scale, bias) JAX's to rounding, in float32 and bfloat16, also on rows whose mean is 30
    times their spread (where a one-pass variance of x itself would cancel); a whole model
    built with it must train as the default one does."""
    from gfm_jax.models.layers import Norm

    x = jax.random.normal(jax.random.key(0), (3, 5, 64)) * 3
    x = x.at[0].add(90.0)  # mean / std = 30 in the first row
    cotangent = jax.random.normal(jax.random.key(1), x.shape)
    for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)):
        got_want = []
        for grad in ("written", "xla"):
            norm = Norm(kind, 1e-5, dtype, grad)
            params = norm.init(jax.random.key(2), x.astype(dtype))
            leaves, tree = jax.tree.flatten(params)  # scale and bias: different noise
            keys = jax.random.split(jax.random.key(3), len(leaves))
            leaves = [p + jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
            params = jax.tree.unflatten(tree, leaves)

            def loss(p, x, norm=norm):
                return jnp.sum(norm.apply(p, x).astype(jnp.float32) * cotangent)

            y = jax.jit(norm.apply)(params, x.astype(dtype))
            got_want.append((y, jax.jit(jax.grad(loss, (0, 1)))(params, x.astype(dtype))))
            assert y.dtype == dtype
        (y, grads), (want_y, want_grads) = got_want
        np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(want_y, np.float32))
        for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
            g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
            np.testing.assert_allclose(g, w, atol=tol * float(np.abs(w).max()))

    ids = jax.random.randint(jax.random.key(4), (2, 16), 0, SMALL.vocab_size)
    cfg = dataclasses.replace(SMALL, norm=kind)
    outs = []
    for grad in ("written", "xla"):
        model = MaskedLM(dataclasses.replace(cfg, norm_grad=grad))
        params = model.init(jax.random.key(0), ids)
        outs.append(jax.value_and_grad(lambda p, m=model: jnp.sum(m.apply(p, ids) ** 2))(params))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-6)
    for g, w in zip(*(jax.tree.leaves(o[1]) for o in outs), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(np.abs(w).max()))


def test_auto_kernel_choices_pick_the_pallas_kernels_on_gpus_only(monkeypatch):
    """`norm_grad="auto"` and `glu_grad="auto"` (the defaults) are the Pallas kernels where an
    H100 timed them faster and JAX's own elsewhere, so a CPU step's program has no kernel
    call; on a mesh of several devices, whose calls XLA cannot partition, neither; explicit
    choices pass through; an unknown one is a config error naming the key."""
    from gfm_jax import config as config_lib
    from gfm_jax import sharding
    from gfm_jax.models.layers import resolve_glu_grad, resolve_norm_grad

    for resolve in (resolve_norm_grad, resolve_glu_grad):
        assert resolve("auto", backend="gpu") == "pallas"
        assert resolve("auto", backend="cuda") == "pallas"
        assert resolve("auto", backend="cpu") == "xla"
        assert resolve("auto", backend="tpu") == "xla"
        assert resolve("xla", backend="gpu") == "xla"
    assert resolve_norm_grad("written", backend="cpu") == "written"
    assert resolve_glu_grad("fused", backend="cpu") == "fused"
    cfg = EncoderConfig.from_config(presets.get("tiny"), 16)
    assert (cfg.norm_grad, cfg.glu_grad) == ("auto", "auto")
    with pytest.raises(UserError, match="model.norm_grad must be one of auto, xla, written, pal"):
        dataclasses.replace(SMALL, norm_grad="fused").validate()
    with pytest.raises(UserError, match="model.glu_grad must be one of auto, xla, pallas, fused"):
        dataclasses.replace(SMALL, glu_grad="written").validate()

    # The model's calls, counted in its program at a shape both kernels take (staged out for
    # a GPU's lowering, so this runs on a CPU). Attention and matmul are named: their "auto"
    # reads the backend too.
    tokens = jnp.zeros((8, 64), jnp.int32)
    small = dataclasses.replace(SMALL, activation="swiglu", attention="xla", matmul="xla")

    def kernel_calls(mesh=None, **kernels) -> int:
        model = MaskedLM(dataclasses.replace(small, **kernels), mesh, config_lib.DEFAULT_RULES)
        jaxpr = str(jax.make_jaxpr(lambda t: model.init(jax.random.key(0), t))(tokens))
        return jaxpr.count("platform_index")

    explicit = kernel_calls(norm_grad="pallas", glu_grad="pallas")
    assert explicit > 0
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert kernel_calls() == 0
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert kernel_calls() == explicit
    assert kernel_calls(sharding.make_mesh((2, 2, 2))) == 0


@pytest.mark.parametrize(
    "kind, dtype, features",
    [
        ("layernorm", jnp.float32, 128),  # 64-row forward tiles, 2 backward steps a program
        ("rmsnorm", jnp.bfloat16, 128),
        pytest.param("rmsnorm", jnp.float32, 128, marks=pytest.mark.slow),
        pytest.param("layernorm", jnp.bfloat16, 128, marks=pytest.mark.slow),
        # one backward step of more rows than a program's cap; one-row backward tiles
        pytest.param("layernorm", jnp.float32, 32, marks=pytest.mark.slow),
        pytest.param("layernorm", jnp.float32, 8192, marks=pytest.mark.slow),
    ],
)
def test_pallas_norm_kernels_match_jax_differentiation(kind, dtype, features):
    """The Pallas kernels of models/norm_pallas.py (run by Pallas's interpreter here; the GPU
    suite runs them compiled): (s, norm(s)) for s = x + h + h_bias, and (x, norm(x)), with the
    gradients of every input (the residual's gradient added in the kernel, the column sums
    for scale, bias and h_bias) against JAX differentiating the same function, on rows whose
    mean is 30 times their spread."""
    from gfm_jax.models import norm_pallas
    from gfm_jax.models.norm_vjp import normalize

    assert norm_pallas.supported(1024, 128) and norm_pallas.supported(32768, 1024)
    assert not norm_pallas.supported(1024, 96)  # features not a power of two
    assert not norm_pallas.supported(1000, 128)  # rows not whole tiles
    keys = jax.random.split(jax.random.key(0), 7)
    shape = (4, 131072 // features // 4, features)
    x = (jax.random.normal(keys[0], shape) * 3).at[0, 0].add(90.0).astype(dtype)
    h = jax.random.normal(keys[1], shape).astype(dtype)
    h_bias, scale, bias = (1 + 0.3 * jax.random.normal(k, (features,)) for k in keys[2:5])
    bias = bias if kind == "layernorm" else None
    w_s, w_y = (jax.random.normal(k, shape) for k in keys[5:])

    def loss(s, y):
        return jnp.sum(s.astype(jnp.float32) * w_s) + jnp.sum(jnp.sin(y.astype(jnp.float32)) * w_y)

    def plain_add_norm(x, h, h_bias, scale, bias):
        s = (x.astype(jnp.float32) + h.astype(jnp.float32) + h_bias).astype(dtype)
        return loss(s, normalize(s, scale, bias, kind, 1e-5, dtype))

    def pallas_add_norm(x, h, h_bias, scale, bias):
        return loss(*norm_pallas.add_norm(x, h, h_bias, scale, bias, kind, 1e-5, dtype, True))

    def plain_norm(x, scale, bias):
        return loss(x, normalize(x, scale, bias, kind, 1e-5, dtype))

    def pallas_norm(x, scale, bias):
        args = (kind, 1e-5, dtype, True)
        return loss(*norm_pallas.norm_with_residual(x, scale, bias, *args))

    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for got_fn, want_fn, args in (
        (pallas_add_norm, plain_add_norm, (x, h, h_bias, scale, bias)),
        (pallas_norm, plain_norm, (x, scale, bias)),
    ):
        argnums = tuple(i for i, a in enumerate(args) if a is not None)
        got, got_grads = jax.value_and_grad(got_fn, argnums)(*args)
        want, want_grads = jax.value_and_grad(want_fn, argnums)(*args)
        np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == jnp.float32 else 1e-2)
        for g, w in zip(got_grads, want_grads, strict=True):
            assert g.dtype == w.dtype
            g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
            np.testing.assert_allclose(g, w, atol=tol * float(np.abs(w).max()))


def test_pallas_norms_leave_meshes_of_several_devices_and_remat_alone():
    """`norm_grad="pallas"` takes the residual stream through the kernels on one device only
    (XLA cannot partition their calls), and blocks hand their MLP output on only without remat
    or a scan (the pair would keep one more activation per layer than the sum)."""
    from gfm_jax import sharding
    from gfm_jax.models.encoder import fuses_residual, hands_on_mlp_output

    pallas = dataclasses.replace(SMALL, norm_grad="pallas")
    one = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    assert fuses_residual(pallas, None) and fuses_residual(pallas, one)
    assert not fuses_residual(pallas, sharding.make_mesh((2, 2, 2)))
    assert not fuses_residual(dataclasses.replace(SMALL, norm_grad="written"), None)
    assert hands_on_mlp_output(pallas, None)
    for other in (dict(remat="full"), dict(scan_layers=True)):
        assert not hands_on_mlp_output(dataclasses.replace(pallas, **other), None)


@pytest.mark.parametrize(
    "interpret, hidden, other, expected_kernels",
    [
        # Not interpreted, on a CPU: the kernels are staged out, but lowering (jit) for the CPU
        # takes XLA's path (pallas_gpu.on_gpu), so such a model still runs and evaluates here.
        pytest.param(False, 128, {}, 5 * SMALL.num_layers - 1, marks=pytest.mark.slow),
        # Interpreted, unrolled: one forward kernel per norm but the first (it has no add),
        # one backward kernel per norm and SwiGLU's.
        (True, 128, {}, 5 * SMALL.num_layers - 1),
        # With remat the first norm of every block has no add either, and its forward pass
        # runs again; scanned: the loop body's; a width the norms' kernels do not take:
        # SwiGLU's alone.
        pytest.param(True, 128, dict(remat="full"), 5 * SMALL.num_layers, marks=pytest.mark.slow),
        pytest.param(True, 128, dict(scan_layers=True), None, marks=pytest.mark.slow),
        pytest.param(True, 96, {}, SMALL.num_layers, marks=pytest.mark.slow),
        # SwiGLU's backward pass inside the down projection's input-gradient matmul instead.
        pytest.param(
            True,
            128,
            dict(glu_grad="fused", mlp_dim=128),
            5 * SMALL.num_layers - 1,
            marks=pytest.mark.slow,
        ),
    ],
)
def test_encoder_with_pallas_kernels_matches_the_written_pass(
    interpret, hidden, other, expected_kernels, monkeypatch
):
    """`norm_grad="pallas"` with `glu_grad="pallas"` (or "fused"): the blocks take the residual
    stream through the Pallas kernels: the attention output and its bias, and the previous
    block's MLP output, are added in the norms' kernels. The encoder's outputs and every parameter
    gradient equal the written pass's to float32 rounding, with the kernels (interpreted)
    and with the CPU lowering's XLA path; the jaxpr holds the kernels counted."""
    from gfm_jax.models import pallas_gpu

    monkeypatch.setattr(pallas_gpu, "INTERPRET", interpret)
    ids = jax.random.randint(jax.random.key(4), (4, 64), 0, SMALL.vocab_size)
    mask = jnp.ones(ids.shape, bool).at[1, 40:].set(False)

    def run(cfg):
        model = MaskedLM(cfg)
        params = model.init(jax.random.key(0), ids, mask)
        leaves, tree = jax.tree.flatten(params)  # norms' scales and biases away from 1 and 0
        keys = jax.random.split(jax.random.key(5), len(leaves))
        leaves = [
            p + 0.2 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)
        ]
        params = jax.tree.unflatten(tree, leaves)

        def loss(p):
            return jnp.sum(jnp.sin(model.apply(p, ids, mask)) * mask[..., None])

        kernels = str(jax.make_jaxpr(jax.grad(loss))(params)).count("pallas_call")
        return jax.jit(jax.value_and_grad(loss))(params), kernels

    cfg = dataclasses.replace(SMALL, hidden_size=hidden, num_heads=4, use_bias_attn=True, **other)
    glu_grad = other.get("glu_grad", "pallas")
    (want, want_grads), none = run(dataclasses.replace(cfg, norm_grad="written", glu_grad="xla"))
    (got, got_grads), kernels = run(dataclasses.replace(cfg, norm_grad="pallas", glu_grad=glu_grad))
    assert none == 0
    assert kernels > 0 if expected_kernels is None else kernels == expected_kernels
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(np.abs(w).max()))


@pytest.mark.parametrize("dtype", [pytest.param(jnp.float32, marks=pytest.mark.slow), jnp.bfloat16])
def test_pallas_swiglu_backward_matches_jax_differentiation(dtype, monkeypatch):
    """`glu_grad="pallas"`: SwiGLU's backward pass as the kernel of models/glu_pallas.py
    (interpreted here; the GPU suite compiles it) gives JAX's gradients of gate and up, and
    the MLP's values and parameter gradients equal JAX's path; a width the kernel does not
    take (96) stays JAX's."""
    from gfm_jax.models import glu_pallas, pallas_gpu
    from gfm_jax.models.layers import Mlp

    assert glu_pallas.supported(32768, 4096) and not glu_pallas.supported(32768, 3072)
    gate_up = (jax.random.normal(jax.random.key(0), (2, 128, 2, 128)) * 3).astype(dtype)
    cotangent = jax.random.normal(jax.random.key(1), (2, 128, 128))

    def loss(fn, gate_up):
        return jnp.sum(fn(gate_up).astype(jnp.float32) * cotangent)

    plain = lambda gu: jax.nn.silu(gu[:, :, 0]) * gu[:, :, 1]  # noqa: E731
    kernel = lambda gu: glu_pallas.swiglu(gu, True)  # noqa: E731
    np.testing.assert_array_equal(kernel(gate_up), plain(gate_up))  # the same forward pass
    got, want = (jax.grad(functools.partial(loss, f))(gate_up) for f in (kernel, plain))
    assert got.dtype == want.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    np.testing.assert_allclose(got, want, atol=tol * float(np.abs(want).max()))

    monkeypatch.setattr(pallas_gpu, "INTERPRET", True)
    x = jax.random.normal(jax.random.key(2), (2, 64, 32))
    for mlp_dim, kernels in ((128, 1), (96, 0)):
        grads = []
        for glu_grad in ("pallas", "xla"):
            mlp = Mlp(32, mlp_dim, "swiglu", False, 0.02, jnp.float32, "xla", glu_grad)
            params = mlp.init(jax.random.key(3), x)

            def mlp_loss(p, x, mlp=mlp):
                return jnp.sum(jnp.sin(mlp.apply(p, x)))

            jaxpr = str(jax.make_jaxpr(jax.grad(mlp_loss, (0, 1)))(params, x))
            assert jaxpr.count("pallas_call") == (kernels if glu_grad == "pallas" else 0)
            grads.append(jax.grad(mlp_loss, (0, 1))(params, x))
        for g, w in zip(*(jax.tree.leaves(g) for g in grads), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6 * float(np.abs(w).max()))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_swiglu_fused_into_the_down_projection_matches_jax_differentiation(dtype, monkeypatch):
    """`glu_grad="fused"`: SwiGLU's backward pass inside the down projection's input-gradient
    matmul (one Pallas kernel, interpreted here) gives JAX's gradients of gate/up and of the
    down kernel; the MLP keeps the parameters `dense` would own (same tree, same initial
    values), its values and gradients equal JAX's path, through the kernel and through the CPU
    lowering's XLA path; shapes the kernel's blocks do not take stay JAX's."""
    from gfm_jax.models import glu_pallas, pallas_gpu
    from gfm_jax.models.layers import Mlp

    assert glu_pallas.down_supported(32768, 4096, 1024)
    for rows, features, hidden in ((32768 + 64, 4096, 1024), (32768, 4096 + 64, 1024)):
        assert not glu_pallas.down_supported(rows, features, hidden)
    assert not glu_pallas.down_supported(32768, 4096, 1024 + 32)
    # 256 rows, 256 features, 128 hidden: a 2 x 2 grid and two steps of the hidden-axis loop,
    # so a wrong index map or loop offset shows.
    gate_up = (jax.random.normal(jax.random.key(0), (2, 128, 2, 256)) * 3).astype(dtype)
    w = jax.random.normal(jax.random.key(1), (256, 128)) * 0.1
    cotangent = jax.random.normal(jax.random.key(2), (2, 128, 128))

    def loss(fn, gate_up, w):
        return jnp.sum(fn(gate_up, w).astype(jnp.float32) * cotangent)

    def plain(gu, w):
        return (jax.nn.silu(gu[:, :, 0]) * gu[:, :, 1]) @ w.astype(dtype)

    kernel = lambda gu, w: glu_pallas.swiglu_down(gu, w, True)  # noqa: E731
    got, want = (jax.grad(functools.partial(loss, f), (0, 1))(gate_up, w) for f in (kernel, plain))
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for g, x in zip(got, want, strict=True):
        g, x = np.asarray(g, np.float32), np.asarray(x, np.float32)
        np.testing.assert_allclose(g, x, atol=tol * float(np.abs(x).max()))

    x = jax.random.normal(jax.random.key(3), (2, 64, 64))
    # Not interpreted, the kernel is staged (the GPU branch) and the CPU runs the other one.
    for interpret, length, kernels in ((True, 64, 1), (False, 64, 1), (True, 48, 0)):
        monkeypatch.setattr(pallas_gpu, "INTERPRET", interpret)
        xs = x[:, :length]
        runs = []
        for glu_grad in ("fused", "xla"):
            mlp = Mlp(64, 128, "swiglu", True, 0.02, jnp.float32, "xla", glu_grad)
            params = mlp.init(jax.random.key(4), xs)

            def mlp_loss(p, x, mlp=mlp):
                return jnp.sum(jnp.sin(mlp.apply(p, x)))

            jaxpr = str(jax.make_jaxpr(jax.grad(mlp_loss, (0, 1)))(params, xs))
            assert jaxpr.count("pallas_call") == (kernels if glu_grad == "fused" else 0)
            runs.append((params, jax.jit(jax.value_and_grad(mlp_loss, (0, 1)))(params, xs)))
        (p_fused, (v_fused, g_fused)), (p_xla, (v_xla, g_xla)) = runs
        assert jax.tree.structure(p_fused) == jax.tree.structure(p_xla)
        for a, b in zip(jax.tree.leaves(p_fused), jax.tree.leaves(p_xla), strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(v_fused, v_xla, rtol=1e-5)
        for g, w in zip(jax.tree.leaves(g_fused), jax.tree.leaves(g_xla), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6 * float(np.abs(w).max()))
