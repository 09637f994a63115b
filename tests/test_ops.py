"""The ops behind `model.kernels` (gfm_jax/ops): each implementation against a plain einsum
reference written here, values and gradients, and the forms that make the CPU kernels fast."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from gfm_jax import ops
from gfm_jax.models.attention import alibi_slopes
from gfm_jax.ops import attention as attention_ops
from gfm_jax.ops.blocked_attention import blocked_attention
from gfm_jax.ops.cpu_gemm import cpu_gemm_dot_general


def einsum_attention(q, k, v, keep_BxL, slopes=None, causal=False):
    """softmax(q k^T / sqrt(H) - slope |i - j|) v over kept keys, float32, written out."""
    length = q.shape[1]
    s = jnp.einsum("bqnh,bknh->bnqk", q, k) * q.shape[-1] ** -0.5
    if slopes is not None:
        pos = jnp.arange(length)
        s = s - slopes[None, :, None, None] * jnp.abs(pos[:, None] - pos[None, :])
    keep = keep_BxL[:, None, None, :]
    if causal:
        keep = keep & jnp.tril(jnp.ones((length, length), bool))
    p = jax.nn.softmax(jnp.where(keep, s, -1e30), axis=-1)
    return jnp.einsum("bnqk,bknh->bqnh", p, v)


def qkv(length=16, batch=2):
    keys = jax.random.split(jax.random.key(1), 3)
    return [jax.random.normal(k, (batch, length, 4, 8)) for k in keys]


def padded_mask(length, kind="right_padded"):
    mask = jnp.ones((2, length), bool).at[1, 11:].set(False)
    if kind == "holes":
        mask = mask.at[0, 3].set(False)
    if kind == "empty_row":
        mask = mask.at[0].set(False)
    return mask


def assert_values_and_grads_close(fn, reference, args, atol=1e-5):
    cotangent = jax.random.normal(jax.random.key(3), reference(*args).shape)
    np.testing.assert_allclose(fn(*args), reference(*args), atol=atol)
    argnums = tuple(range(len(args)))
    got = jax.grad(lambda *a: jnp.sum(fn(*a) * cotangent), argnums)(*args)
    want = jax.grad(lambda *a: jnp.sum(reference(*a) * cotangent), argnums)(*args)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=atol)


@pytest.mark.parametrize(
    "position, causal",
    # rope without causality is also checked through every preset (test_models); slow set only
    [pytest.param("rope", False, marks=pytest.mark.slow), ("alibi", False), ("rope", True)],
)
def test_xla_attention_equals_the_einsum_reference(position, causal):
    mask = padded_mask(16, "holes")
    slopes = alibi_slopes(4) if position == "alibi" else None
    assert_values_and_grads_close(
        lambda q, k, v: ops.attend(
            q, k, v, mask, kernels="xla", alibi_slopes_N=slopes, causal=causal
        ),
        lambda q, k, v: einsum_attention(q, k, v, mask, slopes, causal),
        qkv(),
    )


@pytest.mark.parametrize("position, causal", [("rope", False), ("alibi", False), ("alibi", True)])
@pytest.mark.parametrize("heads_per_block, streams", [(1, 1), (3, 2), (4, 3)])
def test_blocked_attention_equals_the_einsum_reference(position, causal, heads_per_block, streams):
    mask = padded_mask(16, "holes")
    slopes = alibi_slopes(4) if position == "alibi" else None

    def blocked(q, k, v):
        return blocked_attention(
            q, k, v, mask, causal=causal, alibi_slopes_N=slopes,
            heads_per_block=heads_per_block, streams=streams,
        )  # fmt: skip

    reference = lambda q, k, v: einsum_attention(q, k, v, mask, slopes, causal)  # noqa: E731
    assert_values_and_grads_close(blocked, reference, qkv())


@pytest.mark.parametrize(
    "mask_kind, position, causal",
    [
        # one mask that is a prefix and one that is not by default; the rest in the slow set
        pytest.param("right_padded", "rope", False, marks=pytest.mark.slow),
        ("right_padded", "alibi", True),
        pytest.param("holes", "rope", True, marks=pytest.mark.slow),
        ("holes", "alibi", False),
        pytest.param("empty_row", "rope", False, marks=pytest.mark.slow),
    ],
)
def test_cudnn_path_takes_key_lengths_only_where_they_say_the_mask(
    cudnn_as_xla, mask_kind, position, causal
):
    """Given a plain mask, the cuDNN path checks on the device whether each row keeps a
    prefix of its keys: then key lengths, else XLA's dense mask (both branches run here with
    XLA, which takes both forms, so they must agree with the reference)."""
    mask = padded_mask(16, mask_kind)
    slopes = alibi_slopes(4) if position == "alibi" else None
    kw = dict(kernels="auto", alibi_slopes_N=slopes, causal=causal)
    assert_values_and_grads_close(
        lambda q, k, v: ops.attend(q, k, v, mask, **kw),
        lambda q, k, v: einsum_attention(q, k, v, mask, slopes, causal),
        qkv(),
    )
    assert {c["implementation"] for c in cudnn_as_xla} == {"cudnn", "xla"}  # both branches


@pytest.mark.parametrize("mask_kind", ["right_padded", "holes", "empty_row"])
def test_cudnn_path_runs_key_lengths_exactly_where_the_mask_is_a_prefix(mask_kind):
    """A stand-in whose dense-mask branch returns zeros shows which branch ran."""
    q, k, v = qkv()
    mask = padded_mask(16, mask_kind)

    def by(q, k, v, implementation, **kw):
        if implementation == "xla":
            return jnp.zeros_like(q)
        return jax.nn.dot_product_attention(q, k, v, implementation="xla", **kw)

    out = jax.jit(lambda *a: attention_ops._by_lengths_or_mask(by, *a, mask))(q, k, v)
    if mask_kind == "right_padded":
        np.testing.assert_allclose(out, einsum_attention(q, k, v, mask), atol=1e-5)
    else:
        assert not np.any(out)


def test_cudnn_fallback_branch_keeps_no_score_sized_residual():
    """Differentiating lax.cond keeps both branches' residuals; the dense-mask branch is
    rematerialised, so nothing of [B, N, L, L] or [B, 1, L, L] size is held for the backward."""
    length = 64
    q, k, v = qkv(length)
    mask = padded_mask(length)
    # A fast branch that saves only its inputs, like cuDNN's: any score-sized residual must
    # then come from the fallback.
    by = lambda q, k, v, implementation, **kw: jax.checkpoint(  # noqa: E731
        lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla", **kw)
    )(q, k, v)
    _, vjp = jax.vjp(lambda *a: attention_ops._by_lengths_or_mask(by, *a, mask), q, k, v)
    sizes = [leaf.size for leaf in jax.tree_util.tree_leaves(vjp)]
    assert sizes and max(sizes) < 2 * length * length, sizes


@pytest.mark.parametrize("length, reorder", [(16, True), (17, True), (17, False)])
def test_token_mask_layout_round_trips_and_puts_kept_tokens_first(cudnn_as_xla, length, reorder):
    keep = padded_mask(length, "holes")
    x = jax.random.normal(jax.random.key(0), (2, length, 3))
    mask = ops.TokenMask.create(keep, "auto", jnp.bfloat16, reorder=reorder)
    inside = mask.enter(x)
    assert inside.shape[1] == mask.keep_BxL.shape[1] == length + length % 2
    np.testing.assert_array_equal(mask.exit(inside), x)
    if reorder:
        counts = keep.sum(-1)
        prefix = jnp.arange(inside.shape[1])[None] < counts[:, None]
        np.testing.assert_array_equal(mask.keep_BxL, prefix)
        assert mask.keys_prefix
    else:
        assert mask.order_BxL is None and not mask.keys_prefix
    # Off the cuDNN path the layout is the identity.
    plain = ops.TokenMask.create(keep, "xla", jnp.bfloat16)
    assert plain.order_BxL is None
    np.testing.assert_array_equal(plain.enter(x), x)


def test_implementations_chosen_for_this_cpu():
    assert jax.default_backend() == "cpu"
    assert ops.implementation("auto", jnp.float32, 512) == "blocked"
    assert ops.implementation("auto", jnp.float32, 129) == "xla"  # short: scores fit cache
    assert ops.implementation("xla", jnp.bfloat16, 512) == "xla"
    assert ops.dot_general("auto") is cpu_gemm_dot_general
    assert ops.dot_general("xla") is lax.dot_general
    with pytest.raises(ValueError, match="kernels"):
        ops.implementation("cudnn", jnp.float32, 16)


DENSE = (((2,), (0,)), ((), ()))


@pytest.mark.parametrize(
    "lhs_shape, rhs_shape, dims",
    [
        ((2, 5, 8), (8, 16), DENSE),  # K <= N: the activation is transposed
        ((2, 5, 16), (16, 8), DENSE),  # K > N: the output gradient is transposed
        ((2, 5, 8), (8, 3, 2, 4), DENSE),  # fused q/k/v kernel [D, 3, N, H]
        ((2, 5, 2, 4), (2, 4, 8), (((2, 3), (0, 1)), ((), ()))),  # attention output [N, H, D]
        ((3, 5, 8), (3, 8, 4), (((2,), (1,)), ((0,), (0,)))),  # batched: falls through
    ],
)
def test_cpu_gemm_values_and_gradients_equal_dot_general(lhs_shape, rhs_shape, dims):
    k1, k2 = jax.random.split(jax.random.key(0))
    lhs, rhs = jax.random.normal(k1, lhs_shape), jax.random.normal(k2, rhs_shape)
    assert_values_and_grads_close(
        jax.jit(lambda a, b: jnp.tanh(cpu_gemm_dot_general(a, b, dims))),
        lambda a, b: jnp.tanh(lax.dot_general(a, b, dims)),
        (lhs, rhs),
    )


def dots_not_contracting_the_lhs_last_axis(hlo: str) -> list[str]:
    """Dots of optimized HLO text whose left operand is not contracted over its last axis:
    XLA:CPU hands YNNPACK only the other kind and runs these as slower Eigen contractions."""
    ranks = {
        name: len(dims.split(",")) if dims else 0
        for name, dims in re.findall(r"%([\w.\-]+) = \w+\[([\d,]*)\]", hlo)
    }
    dot = re.compile(
        r"%[\w.\-]+ = \S+ dot\(%([\w.\-]+), %[\w.\-]+\), "
        r"(?:lhs_batch_dims=\{[\d,]*\}, )?lhs_contracting_dims=\{([\d,]*)\}"
    )
    found = dot.findall(hlo)
    assert found, "no dot in the HLO: the pattern no longer matches XLA's text"
    return [lhs for lhs, dims in found if dims != str(ranks[lhs] - 1)]


def test_cpu_kernels_train_gradient_matmuls_all_contract_the_lhs_last_axis():
    """Both dense-layer cases (widening and narrowing) and the blocked attention's backward
    pass, in the gradient of a small GELU encoder with `kernels="auto"` at 256 tokens."""
    from gfm_jax.models.encoder import EncoderConfig
    from gfm_jax.models.heads import MaskedLM

    cfg = EncoderConfig(
        vocab_size=12, num_layers=1, hidden_size=32, num_heads=4, mlp_dim=64,
        activation="gelu", use_bias_mlp=True,
    )  # fmt: skip
    ids = jnp.asarray(np.random.default_rng(0).integers(5, 12, (2, 256)))
    model = MaskedLM(cfg)
    params = model.init(jax.random.key(0), ids)
    loss = lambda p: jnp.mean(jax.nn.log_softmax(model.apply(p, ids))[..., 5])  # noqa: E731
    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    assert dots_not_contracting_the_lhs_last_axis(hlo) == []
