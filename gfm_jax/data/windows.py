"""Index-pure windows: window i of a stream is a pure function of (seed, i).

`(seed, i) -> (start, strand)` uses a stateless integer hash, vectorised over a batch of indices
in TensorFlow ops (so it runs inside tf.data without the GIL). A start is uniform over every
valid start of every segment of the split, so records are mixed in proportion to their length.
Resuming at step k only needs the indices of step k; the stream does not depend on the number of
hosts, because each host takes its own slice of the same global indices.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from gfm_jax.data import fasta
from gfm_jax.data.corpus import Segments
from gfm_jax.errors import UserError

_MASK32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # < 2**27, so (x < 2**32) * _MIX fits in int64 without overflow
_GOLDEN = 0x9E3779B9

# Salts keep the hashes for different decisions independent.
SALT_POSITION_HI, SALT_POSITION_LO, SALT_STRAND, SALT_MASK = 1, 2, 3, 4


def _mix32(x: tf.Tensor) -> tf.Tensor:
    """A 32-bit integer finaliser on int64 tensors holding values in [0, 2**32)."""
    for _ in range(2):
        x = tf.bitwise.bitwise_and(
            tf.bitwise.bitwise_xor(tf.bitwise.right_shift(x, 16), x) * _MIX, _MASK32
        )
    return tf.bitwise.bitwise_xor(tf.bitwise.right_shift(x, 16), x)


def hash_combine(key: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    """Mixes an int64 value (any range) into a 32-bit key; both broadcast."""
    key = tf.cast(key, tf.int64)
    value = tf.cast(value, tf.int64)
    for part in (tf.bitwise.bitwise_and(value, _MASK32), tf.bitwise.right_shift(value, 32)):
        key = _mix32(tf.bitwise.bitwise_and(tf.bitwise.bitwise_xor(key, part) + _GOLDEN, _MASK32))
    return key


def window_keys(seed: int, indices: tf.Tensor) -> tf.Tensor:
    """One 32-bit key per window index; everything random about window i derives from it."""
    return hash_combine(hash_combine(tf.constant(0, tf.int64), seed), indices)


def uniform_from_key(key: tf.Tensor) -> tf.Tensor:
    """32-bit keys -> float64 in [0, 1)."""
    return tf.cast(key, tf.float64) / float(2**32)


class WindowSampler:
    """Maps window keys to (start, strand) over the segments of one split."""

    def __init__(self, segments: Segments, window_len: int, reverse_complement: bool):
        counts = segments.num_valid_starts(window_len)
        if counts.sum() == 0:
            longest = int((segments.ends - segments.starts).max(initial=0))
            raise UserError(
                f"data.window_len={window_len} is longer than every segment of the split "
                f"(longest {longest} bases); lower data.window_len or add longer genomes"
            )
        self.window_len = window_len
        self.reverse_complement = reverse_complement
        self.total = int(counts.sum())
        self._cum = tf.constant(np.cumsum(counts), tf.int64)
        self._seg_starts = tf.constant(segments.starts, tf.int64)

    def starts_and_strands(self, keys_B: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # 62 random bits, so the modulo is uniform enough for any genome size.
        hi = hash_combine(keys_B, SALT_POSITION_HI)
        lo = hash_combine(keys_B, SALT_POSITION_LO)
        r = tf.bitwise.bitwise_or(tf.bitwise.left_shift(hi, 30), tf.bitwise.right_shift(lo, 2))
        u_B = tf.math.floormod(r, self.total)
        seg_B = tf.searchsorted(self._cum, u_B, side="right")
        before_B = tf.where(seg_B > 0, tf.gather(self._cum, tf.maximum(seg_B - 1, 0)), 0)
        starts_B = tf.gather(self._seg_starts, seg_B) + (u_B - before_B)
        if self.reverse_complement:
            strands_B = tf.equal(tf.bitwise.bitwise_and(hash_combine(keys_B, SALT_STRAND), 1), 1)
        else:
            strands_B = tf.zeros_like(starts_B, tf.bool)
        return starts_B, strands_B


def _complement_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint8)
    for code, partner in ((fasta.A, fasta.T), (fasta.C, fasta.G), (fasta.N, fasta.N)):
        for bit in (0, fasta.SOFT_MASK_BIT):
            table[code | bit] = partner | bit
            table[partner | bit] = code | bit
    return table


COMPLEMENT = _complement_table()


def reverse_complement_codes(codes_BxL: tf.Tensor) -> tf.Tensor:
    """Reverse complement of base codes along the last axis (keeps the soft-mask bit)."""
    comp = tf.gather(tf.constant(COMPLEMENT), tf.cast(codes_BxL, tf.int32))
    return tf.reverse(comp, axis=[-1])


def gather_windows(
    genome: tf.Variable, starts_B: tf.Tensor, strands_B: tf.Tensor, window_len: int
) -> tf.Tensor:
    """One gather of B x L base codes, reverse-complemented where strands_B is True."""
    positions_BxL = starts_B[:, None] + tf.range(window_len, dtype=tf.int64)[None, :]
    codes_BxL = tf.gather(genome, positions_BxL)
    return tf.where(strands_B[:, None], reverse_complement_codes(codes_BxL), codes_BxL)
