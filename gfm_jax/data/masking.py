"""BERT-style masking from stateless per-window keys (vectorised TensorFlow ops).

Each nucleotide token (ids in the tokenizer's `maskable` range: never specials, padding or N) is
selected with probability `rate`; a selected token becomes <mask> with probability
`mask_fraction`, a random nucleotide token with probability `random_fraction`, and stays
unchanged otherwise. The loss is taken on selected positions only. Every decision is a hash of
(window key, position), so a window is masked the same way whatever batch or host it lands in.

With `span` > 1, spans of `span` consecutive tokens are selected instead (each position starts a
span with probability 1 - (1 - rate) ** (1 / span), so a position is covered with probability
`rate`), and the <mask> / random / keep decision is taken once per span: overlapping k-mers
share k - 1 bases with each neighbour, so only a masked span of k tokens hides a base.
"""

from __future__ import annotations

import tensorflow as tf

from gfm_jax.data import windows
from gfm_jax.data.masking_spec import MaskingSpec


def mask_tokens(
    ids_BxL: tf.Tensor,
    keys_B: tf.Tensor,
    spec: MaskingSpec,
    *,
    mask_id: int,
    maskable: tuple[int, int],
) -> dict[str, tf.Tensor]:
    """Returns inputs (masked ids), targets (original ids) and weights (1.0 where selected)."""
    length = tf.shape(ids_BxL, out_type=tf.int64)[1]
    pos_L = tf.range(length)
    window_keys_B = windows.hash_combine(keys_B, windows.SALT_MASK)[:, None]
    pos_keys_BxL = windows.hash_combine(window_keys_B, pos_L[None, :])
    u_start = windows.uniform_from_key(windows.hash_combine(pos_keys_BxL, 0))
    start_rate = spec.rate if spec.span == 1 else 1.0 - (1.0 - spec.rate) ** (1.0 / spec.span)
    starts_BxL = tf.where(u_start < start_rate, pos_L[None, :], tf.constant(-1, tf.int64))
    # The latest span start within the `span` positions ending here (-1: none covers it).
    span_start_BxL = starts_BxL
    for shift in range(1, spec.span):
        shifted = tf.pad(starts_BxL[:, :-shift], [[0, 0], [shift, 0]], constant_values=-1)
        span_start_BxL = tf.maximum(span_start_BxL, shifted)
    covered = span_start_BxL >= 0
    # One action per span: drawn from the key of the span's first position.
    u_action = windows.uniform_from_key(
        windows.hash_combine(windows.hash_combine(window_keys_B, span_start_BxL), 1)
    )
    lo, hi = maskable
    random_ids = lo + tf.cast(
        tf.math.floormod(windows.hash_combine(pos_keys_BxL, 2), hi - lo), ids_BxL.dtype
    )

    selected = (ids_BxL >= lo) & (ids_BxL < hi) & covered
    to_mask = selected & (u_action < spec.mask_fraction)
    to_random = selected & ~to_mask & (u_action < spec.mask_fraction + spec.random_fraction)

    inputs = tf.where(to_mask, tf.cast(mask_id, ids_BxL.dtype), ids_BxL)
    inputs = tf.where(to_random, random_ids, inputs)
    return {"inputs": inputs, "targets": ids_BxL, "weights": tf.cast(selected, tf.float32)}
