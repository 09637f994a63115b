"""The CPU dense-layer matmul (gfm_jax/models/matmul.py) and the rotary embedding's hand-written
gradient agree with plain autodiff, and the CPU train gradient's matmuls keep the form XLA:CPU
gives YNNPACK."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from gfm_jax.errors import UserError
from gfm_jax.models.attention import apply_rope, rope_tables
from gfm_jax.models.encoder import EncoderConfig
from gfm_jax.models.heads import MaskedLM
from gfm_jax.models.matmul import cpu_gemm_dot_general, resolve_matmul

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
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    lhs, rhs = jax.random.normal(k1, lhs_shape), jax.random.normal(k2, rhs_shape)
    out_shape = lax.dot_general(lhs, rhs, dims).shape
    weights = jax.random.normal(k3, out_shape)

    def loss(dot, a, b):
        return jnp.sum(jnp.tanh(dot(a, b, dims)) * weights)

    want = jax.value_and_grad(lambda a, b: loss(lax.dot_general, a, b), argnums=(0, 1))(lhs, rhs)
    got = jax.jit(jax.value_and_grad(lambda a, b: loss(cpu_gemm_dot_general, a, b), (0, 1)))(
        lhs, rhs
    )
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(got[1], want[1], strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_auto_matmul_resolves_by_backend_and_bad_names_are_refused():
    assert resolve_matmul("auto") == ("cpu_gemm" if jax.default_backend() == "cpu" else "xla")
    assert resolve_matmul("xla") == "xla"
    with pytest.raises(UserError, match="model.matmul"):
        EncoderConfig(
            vocab_size=8, num_layers=1, hidden_size=8, num_heads=2, mlp_dim=8, matmul="blas"
        ).validate()


GELU_ENCODER = EncoderConfig(
    vocab_size=12,
    num_layers=2,
    hidden_size=32,
    num_heads=4,
    mlp_dim=64,  # wider than hidden: a widening and a narrowing dense layer
    activation="gelu",
    use_bias_mlp=True,
)


def _masked_lm_loss(config: EncoderConfig, length: int):
    """An MLM-style loss of params over 2 fixed windows (the first one padded), and params."""
    ids = jnp.asarray(np.random.default_rng(0).integers(5, 12, (2, length)))
    mask = jnp.ones((2, length), bool).at[0, length * 3 // 4 :].set(False)
    model = MaskedLM(config)

    def loss(p):
        return jnp.mean(jax.nn.log_softmax(model.apply(p, ids, mask))[..., 5])

    return loss, model.init(jax.random.key(0), ids)


@pytest.mark.slow  # slow set (CI runs it): keeps the default suite under 10 minutes
def test_encoder_loss_and_gradients_agree_between_matmuls():
    results, params = [], None
    for matmul in ("xla", "cpu_gemm"):
        loss, init = _masked_lm_loss(dataclasses.replace(GELU_ENCODER, matmul=matmul), 16)
        params = init if params is None else params  # one set of params for both
        results.append(jax.jit(jax.value_and_grad(loss))(params))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-6)
    for g, w in zip(jax.tree.leaves(results[1][1]), jax.tree.leaves(results[0][1]), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def _dots_not_contracting_the_lhs_last_axis(hlo: str) -> list[str]:
    """Dots of optimized HLO text whose left operand is not contracted over its last axis.
    XLA:CPU gives YNNPACK only the other kind; these it runs as Eigen contractions, which the
    CPU train step paid for in about 15% of its time (docs/benchmarks.md)."""
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


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's matmul lowering")
def test_cpu_train_gradient_matmuls_all_contract_the_lhs_last_axis():
    # Both dense-layer cases (widening and narrowing) and the blocked attention's backward.
    config = dataclasses.replace(GELU_ENCODER, attention="blocked", matmul="cpu_gemm")
    loss, params = _masked_lm_loss(config, 32)
    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    assert _dots_not_contracting_the_lhs_last_axis(hlo) == []


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

    np.testing.assert_allclose(apply_rope(x, cos, sin), plain(x), atol=1e-6)
    got = jax.grad(lambda x: jnp.sum(apply_rope(x, cos, sin) * w))(x)
    want = jax.grad(lambda x: jnp.sum(plain(x) * w))(x)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # Rotation preserves norms per position pair: a check that does not rest on the code above.
    np.testing.assert_allclose(
        jnp.linalg.norm(apply_rope(x, cos, sin), axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5
    )
