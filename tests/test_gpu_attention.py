"""cuDNN attention on a GPU against the float32 einsum reference: values and gradients.

The CPU suite reaches the cuDNN path only with XLA standing in for the kernel, so these run
wherever a GPU is present:
    python -m pytest tests/test_gpu_attention.py
On a machine without one they are skipped.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_ops import einsum_attention

from gfm_jax import ops
from gfm_jax.models.attention import alibi_slopes

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (cuDNN attention)"),
]

HEADS, HEAD_DIM = 4, 64


def _inputs(length: int, mask_kind: str):
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (
        jax.random.normal(key, (2, length, HEADS, HEAD_DIM), jnp.float32).astype(jnp.bfloat16)
        for key in keys[:3]
    )
    cotangent = jax.random.normal(keys[3], q.shape, jnp.float32)
    mask = jnp.ones((2, length), bool).at[1, length - 37 :].set(False)  # right padding
    if mask_kind == "holes":
        mask = mask.at[0, length // 3].set(False)
    if mask_kind == "empty_row":  # all padding, as a last batch padded with empty rows
        mask = mask.at[0].set(False)
    # Only kept query rows enter the loss: what padded rows attend to means nothing (cuDNN and
    # the reference may differ there), as the model's loss weights them zero.
    return q, k, v, mask, cotangent * mask[:, :, None, None]


def _loss_and_grads(fn, q, k, v, cotangent):
    def loss(q, k, v):
        return jnp.sum(fn(q, k, v).astype(jnp.float32) * cotangent)

    value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)
    return fn(q, k, v).astype(jnp.float32), value, grads


@pytest.mark.parametrize(
    "length, mask_kind, position, causal, layout",
    [
        # As the encoder hands it tokens for RoPE or learned positions (`TokenMask`, kept
        # tokens first): key lengths, no check; an empty row stays finite.
        (256, "right_padded", "rope", False, True),
        (256, "right_padded", "rope", True, True),
        (256, "empty_row", "rope", False, True),
        # A plain mask, as with ALiBi: each call checks it; holes take XLA's attention.
        (256, "right_padded", "rope", False, False),
        (256, "holes", "rope", False, False),
        (256, "holes", "alibi", False, False),
        (256, "right_padded", "alibi", True, False),
        (257, "right_padded", "alibi", False, False),  # odd: XLA's attention
    ],
)
def test_cudnn_attention_values_and_gradients_match_the_reference(
    length, mask_kind, position, causal, layout
):
    q, k, v, mask, cotangent = _inputs(length, mask_kind)
    slopes = alibi_slopes(HEADS) if position == "alibi" else None
    token_mask = ops.TokenMask(mask, length, keys_prefix=mask_kind != "holes") if layout else mask

    def cudnn(q, k, v):
        return ops.attend(q, k, v, token_mask, kernels="auto", alibi_slopes_N=slopes, causal=causal)

    def reference(q, k, v):
        f32 = (x.astype(jnp.float32) for x in (q, k, v))
        return einsum_attention(*f32, mask, slopes, causal)

    out, value, grads = jax.jit(lambda *a: _loss_and_grads(cudnn, *a))(q, k, v, cotangent)
    want_out, want_value, want_grads = _loss_and_grads(reference, q, k, v, cotangent)
    rows = np.asarray(mask)[:, :, None, None]
    np.testing.assert_allclose(np.where(rows, out, 0), np.where(rows, want_out, 0), atol=3e-2)
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(value, want_value, rtol=2e-2, atol=1.0)
    for name, got, want in zip("qkv", grads, want_grads, strict=True):
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        scale = np.abs(want).max()
        err = np.abs(got - want).max()
        assert err <= 3e-2 * scale, f"d{name}: max error {err:.3g} against max |grad| {scale:.3g}"


@pytest.mark.parametrize(
    "length, causal, position", [(257, False, "rope"), (256, True, "rope"), (257, False, "alibi")]
)
def test_encoder_on_cudnn_matches_the_reference_with_holes(length, causal, position):
    """The whole encoder on real cuDNN (kept tokens moved first, key lengths, an odd length
    padded once; ALiBi keeps the order and checks) against `kernels="xla"` in float32:
    outputs at kept tokens and parameter gradients, for holes, right padding and an empty row.
    The CPU suite checks the layout with cuDNN's call stood in by XLA's; this is the kernel."""
    import dataclasses

    from gfm_jax.models.encoder import Encoder, EncoderConfig

    cfg = EncoderConfig(
        vocab_size=64, num_layers=2, hidden_size=128, num_heads=2, mlp_dim=256,
        causal=causal, position=position,
    )  # fmt: skip
    assert ops.implementation("auto", jnp.bfloat16, length) == "cudnn"
    ids = jax.random.randint(jax.random.key(2), (3, length), 0, cfg.vocab_size)
    mask = jnp.ones((3, length), bool).at[0, 3].set(False).at[0, length // 2].set(False)
    mask = mask.at[1, length - 40 :].set(False).at[2].set(False)  # right padding; an empty row
    cotangent = jax.random.normal(jax.random.key(3), (3, length, cfg.hidden_size)) * mask[..., None]

    def run(kernels, dtype):
        model = Encoder(dataclasses.replace(cfg, kernels=kernels, dtype=dtype))
        params = jax.jit(model.init)(jax.random.key(0), ids, mask)["params"]

        def loss(params):
            out = model.apply({"params": params}, ids, mask).astype(jnp.float32)
            return jnp.sum(out * cotangent), out

        (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return np.asarray(out * mask[..., None]), grads

    got_out, got_grads = run("auto", "bfloat16")
    want_out, want_grads = run("xla", "float32")
    assert np.isfinite(got_out).all()
    np.testing.assert_allclose(got_out, want_out, atol=0.1)  # unit-scale normed outputs, bf16
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(want_grads)]
    scale = max(float(np.abs(w).max()) for w in jax.tree.leaves(want_grads))
    for name, g, w in zip(
        names, jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True
    ):
        err = np.abs(np.asarray(g, np.float32) - np.asarray(w, np.float32)).max()
        assert err <= 5e-2 * scale, f"{name}: max error {err:.3g} against {scale:.3g}"
