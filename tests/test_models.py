"""The encoder family: positions, causal masks, attention paths, layer scan, presets."""

import ast
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfm_jax import ops
from gfm_jax.errors import UserError
from gfm_jax.models import presets
from gfm_jax.models.attention import alibi_slopes, apply_rope, rope_tables
from gfm_jax.models.encoder import Block, Encoder, EncoderConfig
from gfm_jax.models.heads import MaskedLM
from gfm_jax.models.layers import Mlp
from gfm_jax.ops.attention import alibi_bias
from gfm_jax.train import flops

SMALL = EncoderConfig(vocab_size=12, num_layers=2, hidden_size=32, num_heads=4, mlp_dim=64)


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
    bias = alibi_bias(alibi_slopes(2), 4)
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
    cfg = EncoderConfig.from_config(presets.get(name), pub["vocab"], mask_id=2)
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
    "activation, use_bias, kernels", [("swiglu", False, "xla"), ("geglu", True, "auto")]
)
def test_glu_runs_gate_and_up_as_one_matmul_with_checkpoint_parameters(
    activation, use_bias, kernels
):
    x = jax.random.normal(jax.random.key(1), (2, 8, 16))
    mlp = Mlp(16, 32, activation, use_bias, 0.02, jnp.float32, kernels)
    boxed = mlp.init(jax.random.key(0), x)
    assert str(jax.make_jaxpr(mlp.apply)(boxed, x)).count("dot_general") == 2  # gate+up, down

    # gate and up are the kernels (and biases) a DenseGeneral builds: the plain GELU MLP's
    # `up` is one; values, shapes and logical axes are what checkpoints hold.
    dense = Mlp(16, 32, "gelu", use_bias, 0.02, jnp.float32, kernels).init(jax.random.key(0), x)
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


def test_rope_gradient_equals_autodiff_of_the_rotation():
    x = jax.random.normal(jax.random.key(0), (2, 6, 3, 8))
    w = jax.random.normal(jax.random.key(1), x.shape)
    cos, sin = rope_tables(6, 8, 10000.0)
    # The host-computed tables equal the angles computed in float32 by XLA.
    angles = jnp.arange(6.0)[:, None] / 10000.0 ** (jnp.arange(0, 8, 2) / 8)
    angles = jnp.concatenate([angles, angles], -1)[None, :, None, :]
    np.testing.assert_allclose(cos, jnp.cos(angles), atol=1e-6)
    np.testing.assert_allclose(sin, jnp.sin(angles), atol=1e-6)

    def plain(x):
        x1, x2 = jnp.split(x, 2, axis=-1)
        return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin

    np.testing.assert_allclose(apply_rope(x, (cos, sin)), plain(x), atol=1e-6)
    got = jax.grad(lambda x: jnp.sum(apply_rope(x, (cos, sin)) * w))(x)
    want = jax.grad(lambda x: jnp.sum(plain(x) * w))(x)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # Rotation preserves norms per position pair: a check that does not rest on the code above.
    np.testing.assert_allclose(
        jnp.linalg.norm(apply_rope(x, (cos, sin)), axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5
    )
    # Reordered tokens carry their positions: the tables at `order` are the rows of the plain.
    order = jnp.array([[5, 0, 3, 1, 2, 4]])
    np.testing.assert_array_equal(rope_tables(6, 8, 10000.0, order)[0], cos[0][order])


def small(name: str, **overrides) -> EncoderConfig:
    """A preset's architecture (activation, positions, biases, norm, tying) at a small width."""
    cfg = EncoderConfig.from_config(presets.get(name), 12, mask_id=3)
    sizes = dict(num_layers=2, hidden_size=32, num_heads=4, mlp_dim=48, max_positions=300)
    return dataclasses.replace(cfg, **sizes, **overrides)


def run_encoder(cfg: EncoderConfig, ids, mask, cotangent, params=None):
    """(outputs at kept tokens, parameter gradients) of sum(encoder(ids) * cotangent)."""
    model = Encoder(cfg)
    if params is None:
        params = jax.jit(model.init)(jax.random.key(0), ids, mask)["params"]

    def loss(params):
        out = model.apply({"params": params}, ids, mask).astype(jnp.float32)
        return jnp.sum(out * cotangent), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return out * mask[..., None], grads, params


def holes_and_padding(batch: int, length: int) -> jax.Array:
    mask = jnp.ones((batch, length), bool).at[0, 3].set(False).at[0, 9].set(False)  # holes
    return mask.at[1, length * 3 // 4 :].set(False)  # right padding


# (kernels, dtype, tolerance, length): what `kernels="auto"` runs on this CPU (the blocked
# attention from 256 tokens and the CPU dense matmul) and the cuDNN path's token layout
# (emulated with XLA's attention), in float32 and bfloat16, against `kernels="xla"` in float32.
# The default suite checks each preset once; CI's slow set runs the whole matrix.
KEPT = [("auto", "float32", 1e-5, 257), ("cudnn", "float32", 1e-5, 17)]
KEPT += [("auto", "bfloat16", 5e-2, 257), ("cudnn", "bfloat16", 5e-2, 17)]
QUICK = {"tiny": 0, "nt_v2_50m": 1, "nt_v1_500m": 3, "dnabert2_117m": 0, "omnigenome_52m": 2}
# nt_v2_500m and nt_v1_2500m share nt_v2_50m's and nt_v1_500m's code: in the slow set only.
CASES = [
    pytest.param(name, *kept, marks=() if QUICK.get(name) == i else pytest.mark.slow)
    for name in sorted(presets.PRESETS)
    for i, kept in enumerate(KEPT)
]


@pytest.mark.parametrize("name, kernels, dtype, tol, length", CASES)
def test_every_kept_kernel_matches_the_reference_on_every_preset(
    name, kernels, dtype, tol, length, request
):
    causal = name == "nt_v2_50m"  # one causal architecture among them
    ids = jax.random.randint(jax.random.key(2), (2, length), 0, 12)
    mask = holes_and_padding(2, length)
    cotangent = jax.random.normal(jax.random.key(3), (2, length, 32)) * mask[..., None]
    want_out, want_grads, params = run_encoder(
        small(name, kernels="xla", causal=causal), ids, mask, cotangent
    )
    calls = request.getfixturevalue("cudnn_as_xla") if kernels == "cudnn" else None
    cfg = small(name, kernels="auto", causal=causal, dtype=dtype)
    got_out, got_grads, _ = run_encoder(cfg, ids, mask, cotangent, params)
    if calls is not None:
        if cfg.position == "alibi":  # tokens keep their order: lengths where the mask allows
            assert "cudnn" in {c["implementation"] for c in calls}
        else:  # kept tokens first: key lengths, never a mask or a check
            assert calls and all(c["key_lengths"] and not c["mask"] for c in calls), calls
        assert {c["length"] for c in calls} == {length + length % 2}  # even, for cuDNN
    scale = float(jnp.abs(want_out).max())
    np.testing.assert_allclose(got_out, want_out, atol=tol * scale)
    # Against the largest gradient: some are zero in exact arithmetic (the key bias's).
    grad_scale = max(float(np.abs(w).max()) for w in jax.tree.leaves(want_grads))
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(g, w, atol=tol * grad_scale)


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_block_returns_one_array_for_every_config(name, cudnn_as_xla):
    x = jax.random.normal(jax.random.key(0), (2, 8, 32))
    keep = jnp.ones((2, 8), bool).at[1, 5:].set(False)
    for kernels in ("xla", "auto"):
        cfg = small(name, kernels=kernels, dtype="bfloat16")
        mask = ops.TokenMask.create(keep, kernels, jnp.bfloat16)
        rope = rope_tables(8, cfg.head_dim, cfg.rope_base, mask.order_BxL)
        block = Block(cfg)
        params = block.init(jax.random.key(0), x, mask, rope)
        out = block.apply(params, x, mask, rope)
        assert isinstance(out, jax.Array) and out.shape == x.shape


@pytest.mark.slow  # compiles scan and remat twice: in the slow set CI runs
def test_token_layout_passes_through_scanned_and_rematerialised_layers(cudnn_as_xla):
    """The cuDNN layout (a TokenMask pytree and reordered RoPE tables) broadcast through
    `nn.scan` and `nn.remat` gives the reference's values and gradients."""
    length = 17
    ids = jax.random.randint(jax.random.key(2), (2, length), 0, 12)
    mask = holes_and_padding(2, length)
    cotangent = jax.random.normal(jax.random.key(3), (2, length, 32)) * mask[..., None]
    cfg = small("nt_v2_50m", scan_layers=True, remat="full")
    want_out, want_grads, params = run_encoder(
        dataclasses.replace(cfg, kernels="xla"), ids, mask, cotangent
    )
    cudnn_as_xla.clear()
    got_out, got_grads, _ = run_encoder(cfg, ids, mask, cotangent, params)
    assert cudnn_as_xla and all(c["key_lengths"] for c in cudnn_as_xla)
    np.testing.assert_allclose(got_out, want_out, atol=1e-5)
    grad_scale = max(float(np.abs(w).max()) for w in jax.tree.leaves(want_grads))
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5 * grad_scale)


def test_model_modules_import_the_ops_interface_only(root):
    """The model describes the model: it imports `gfm_jax.ops`, never a kernel module."""
    for path in sorted((root / "gfm_jax" / "models").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for n in names:
                kernel = n.startswith("gfm_jax.ops.") or "pallas" in n or "jax.experimental" in n
                assert not kernel, f"{path.name} imports {n}"
