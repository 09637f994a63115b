"""The Pallas kernels (gfm_jax/models/norm_pallas.py, glu_pallas.py) compiled for a GPU,
against JAX differentiating the same functions: values and every gradient, at nt_v2_500m's
widths.

The CPU suite runs the kernels through Pallas's interpreter; only a GPU compiles them with
Triton; the last test checks that the defaults take them on a GPU under remat and a scan.
Skipped without a GPU:
    python -m pytest tests/test_gpu_pallas.py
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfm_jax.models import glu_pallas, norm_pallas
from gfm_jax.models.norm_vjp import normalize

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (Triton kernels)"),
]


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_pallas_norm_kernels_on_the_gpu_match_jax(kind):
    dtype = jnp.bfloat16
    keys = jax.random.split(jax.random.key(0), 7)
    shape = (4, 1024, 1024)  # 4,096 rows: 256 tiles forward, 64 programs backward
    x = (jax.random.normal(keys[0], shape) * 3).at[0, 0].add(90.0).astype(dtype)
    h = jax.random.normal(keys[1], shape).astype(dtype)
    h_bias, scale, bias = (1 + 0.3 * jax.random.normal(k, (1024,)) for k in keys[2:5])
    bias = bias if kind == "layernorm" else None
    w_s, w_y = (jax.random.normal(k, shape) for k in keys[5:])
    assert norm_pallas.supported(4 * 1024, 1024)

    def loss(s, y):
        return jnp.sum(s.astype(jnp.float32) * w_s) + jnp.sum(jnp.sin(y.astype(jnp.float32)) * w_y)

    def pallas(x, h, h_bias, scale, bias):
        s, y = norm_pallas.add_norm(x, h, h_bias, scale, bias, kind, 1e-5, dtype)
        x2, y2 = norm_pallas.norm_with_residual(s, scale, bias, kind, 1e-5, dtype)
        return loss(x2, y) + loss(s, y2)

    def plain(x, h, h_bias, scale, bias):
        s = (x.astype(jnp.float32) + h.astype(jnp.float32) + h_bias).astype(dtype)
        y = normalize(s, scale, bias, kind, 1e-5, dtype)
        return loss(s, y) + loss(s, y)

    args = (x, h, h_bias, scale, bias)
    argnums = tuple(i for i, a in enumerate(args) if a is not None)
    got, got_grads = jax.jit(jax.value_and_grad(pallas, argnums))(*args)
    want, want_grads = jax.jit(jax.value_and_grad(plain, argnums))(*args)
    assert str(jax.make_jaxpr(jax.grad(pallas, argnums))(*args)).count("pallas_call") == 3
    np.testing.assert_allclose(got, want, rtol=1e-2)
    for g, w in zip(got_grads, want_grads, strict=True):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, w, atol=2e-2 * float(np.abs(w).max()))


def test_pallas_swiglu_backward_on_the_gpu_matches_jax():
    gate_up = (jax.random.normal(jax.random.key(0), (4, 1024, 2, 4096)) * 3).astype(jnp.bfloat16)
    cotangent = jax.random.normal(jax.random.key(1), (4, 1024, 4096))
    assert glu_pallas.supported(4 * 1024, 4096)

    def loss(fn, gate_up):
        return jnp.sum(fn(gate_up).astype(jnp.float32) * cotangent)

    def plain(gate_up):
        return jax.nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1]

    kernel = glu_pallas.swiglu
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda g: loss(kernel, g)))(gate_up))
    assert jaxpr.count("pallas_call") == 1
    got = jax.jit(jax.grad(lambda g: loss(kernel, g)))(gate_up)
    want = jax.jit(jax.grad(lambda g: loss(plain, g)))(gate_up)
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=2e-2 * float(np.abs(want).max()))


def test_swiglu_fused_into_the_down_projection_on_the_gpu_matches_jax():
    keys = jax.random.split(jax.random.key(0), 3)
    gate_up = (jax.random.normal(keys[0], (4, 1024, 2, 4096)) * 3).astype(jnp.bfloat16)
    w = jax.random.normal(keys[1], (4096, 1024)) * 0.02
    cotangent = jax.random.normal(keys[2], (4, 1024, 1024))
    assert glu_pallas.down_supported(4 * 1024, 4096, 1024)

    def loss(fn, gate_up, w):
        return jnp.sum(fn(gate_up, w).astype(jnp.float32) * cotangent)

    def plain(gate_up, w):
        h = jax.nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1]
        return h @ w.astype(jnp.bfloat16)

    def grads(fn):
        return jax.jit(jax.grad(lambda g, w: loss(fn, g, w), (0, 1)))(gate_up, w)

    kernel = glu_pallas.swiglu_down
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda g, w: loss(kernel, g, w), (0, 1)))(gate_up, w))
    assert jaxpr.count("pallas_call") == 1
    # The kernel keeps dy @ W^T in float32 where JAX rounds it to bfloat16 first: bf16 tolerance.
    for g, x in zip(grads(kernel), grads(plain), strict=True):
        g, x = np.asarray(g, np.float32), np.asarray(x, np.float32)
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, x, atol=2e-2 * float(np.abs(x).max()))


@pytest.mark.parametrize(
    "other",
    [dict(remat="full"), dict(scan_layers=True), dict(remat="save_dots", dtype="bfloat16")],
)
def test_encoder_defaults_on_the_gpu_take_the_kernels_under_remat_and_scan(other):
    """On a GPU `norm_grad` and `glu_grad` default (`auto`) to the Pallas kernels, and so does
    every path a config can take: remat, a scan over layers, float32 (the presets' dtype) and
    bfloat16. The MLM model's loss and every parameter gradient, compiled by Triton, against
    the norms' written pass with XLA's SwiGLU pass (4 x 256 tokens of 128 features: whole
    tiles; XLA attention, which float32 needs)."""
    import dataclasses

    from gfm_jax.models.encoder import EncoderConfig
    from gfm_jax.models.heads import MaskedLM

    cfg = EncoderConfig(
        vocab_size=64, num_layers=2, hidden_size=128, num_heads=2, mlp_dim=256, attention="xla",
        **other,
    )  # fmt: skip
    ids = jax.random.randint(jax.random.key(4), (4, 256), 0, cfg.vocab_size)
    mask = jnp.ones(ids.shape, bool).at[1, 200:].set(False)

    def run(cfg):
        model = MaskedLM(cfg)
        params = jax.jit(model.init)(jax.random.key(0), ids, mask)

        def loss(p):
            out = model.apply(p, ids, mask).astype(jnp.float32)
            return jnp.sum(jnp.sin(out) * mask[..., None])

        kernels = str(jax.make_jaxpr(jax.grad(loss))(params)).count("pallas_call")
        return jax.jit(jax.value_and_grad(loss))(params), kernels

    (got, got_grads), kernels = run(cfg)
    (want, want_grads), none = run(dataclasses.replace(cfg, norm_grad="written", glu_grad="xla"))
    assert kernels > 0 and none == 0
    # float32: XLA may run a GPU's float32 matmuls in TF32, where the two paths' rounding
    # differences in a matmul's inputs can flip its roundings; a wrong formula is off by O(1).
    tol = 5e-2 if cfg.dtype == "bfloat16" else 5e-3
    assert abs(float(got) - float(want)) <= tol * abs(float(want)) + 1e-3
    largest = max(float(np.abs(w).max()) for w in jax.tree.leaves(want_grads))
    for (path, w), g in zip(
        jax.tree_util.tree_leaves_with_path(want_grads), jax.tree.leaves(got_grads), strict=True
    ):
        name = jax.tree_util.keystr(path)
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        # The key bias's gradient is zero in exact arithmetic (softmax ignores a shift shared
        # by all keys): both sides are rounding noise, measured against the largest gradient.
        scale = largest if "['key']['bias']" in name else float(np.abs(w).max())
        err = float(np.abs(g - w).max())
        assert np.isfinite(g).all()
        assert err <= tol * scale + 1e-5, f"{name}: max error {err:.3g} against {scale:.3g}"
