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
SALT_POSITION_HI, SALT_POSITION_LO, SALT_STRAND, SALT_MASK, SALT_GROUP = 1, 2, 3, 4, 5


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


class NCounter:
    """Counts N bases in [start, start + L) from the list of N runs: O(log runs), tiny memory."""

    def __init__(self, run_starts: np.ndarray, run_ends: np.ndarray):
        lengths = run_ends - run_starts
        self._starts = tf.constant(np.concatenate([[-1], run_starts]), tf.int64)
        self._lengths = tf.constant(np.concatenate([[0], lengths]), tf.int64)
        self._before = tf.constant(np.concatenate([[0], np.cumsum(lengths) - lengths]), tf.int64)

    def n_before(self, x: tf.Tensor) -> tf.Tensor:
        """Number of N bases at positions < x (any shape)."""
        flat = tf.reshape(x, [-1])
        k = tf.searchsorted(self._starts, flat, side="right") - 1  # last run starting before x
        inside = tf.clip_by_value(flat - tf.gather(self._starts, k), 0, tf.gather(self._lengths, k))
        return tf.reshape(tf.gather(self._before, k) + inside, tf.shape(x))

    def count(self, starts: tf.Tensor, window_len: int) -> tf.Tensor:
        return self.n_before(starts + window_len) - self.n_before(starts)


class WindowSampler:
    """Maps window keys to (start, strand) over the segments of one split.

    A window picks a file (segment group) by `group_weights` (default: in proportion to the
    file's valid starts), then a start uniformly among that file's valid starts.

    With `max_n_fraction < 1`, up to `ATTEMPTS` candidate starts are drawn per window (each a
    hash of the key and the attempt number) and the first whose N fraction is at most the
    threshold is taken; if none is, the candidate with the fewest N. Attempt 0 is the plain
    draw, so genomes without N get the same windows whatever the threshold.
    """

    ATTEMPTS = 16

    def __init__(
        self,
        segments: Segments,
        window_len: int,
        reverse_complement: bool,
        group_weights: np.ndarray | None = None,
        n_counter: NCounter | None = None,
        max_n_fraction: float = 1.0,
    ):
        counts = segments.num_valid_starts(window_len)
        if counts.sum() == 0:
            longest = int((segments.ends - segments.starts).max(initial=0))
            raise UserError(
                f"data.window_len={window_len} is longer than every segment of the split "
                f"(longest {longest} bases); lower data.window_len or add longer genomes"
            )
        self.window_len = window_len
        self.reverse_complement = reverse_complement
        self.n_counter = n_counter
        self.max_n = int(np.floor(max_n_fraction * window_len))
        # Segments sorted by group, so each group's valid starts are one contiguous range.
        order = np.argsort(segments.groups, kind="stable")
        num_groups = int(segments.groups.max()) + 1
        group_count = np.bincount(segments.groups, counts, minlength=num_groups).astype(np.int64)
        if group_weights is None:
            group_weights = group_count / group_count.sum()
        weights = np.where(group_count > 0, np.asarray(group_weights, np.float64), 0.0)
        self.group_weights = weights / weights.sum()
        cum_weights = np.cumsum(self.group_weights)
        cum_weights[-1] = 1.0
        self._cum_weights = tf.constant(cum_weights, tf.float64)
        self._group_count = tf.constant(np.maximum(group_count, 1), tf.int64)
        self._group_first = tf.constant(np.cumsum(group_count) - group_count, tf.int64)
        self._cum = tf.constant(np.cumsum(counts[order]), tf.int64)
        self._seg_starts = tf.constant(segments.starts[order], tf.int64)

    def _draw(self, keys: tf.Tensor) -> tf.Tensor:
        """A group by weight, then a start uniform over that group's valid starts, per key."""
        u_group = uniform_from_key(hash_combine(keys, SALT_GROUP))
        group = tf.searchsorted(self._cum_weights, u_group, side="right")
        group = tf.minimum(group, self._cum_weights.shape[0] - 1)
        # 62 random bits, so the modulo is uniform enough for any genome size.
        hi = hash_combine(keys, SALT_POSITION_HI)
        lo = hash_combine(keys, SALT_POSITION_LO)
        r = tf.bitwise.bitwise_or(tf.bitwise.left_shift(hi, 30), tf.bitwise.right_shift(lo, 2))
        u = tf.gather(self._group_first, group) + tf.math.floormod(
            r, tf.gather(self._group_count, group)
        )
        seg = tf.searchsorted(self._cum, u, side="right")
        before = tf.where(seg > 0, tf.gather(self._cum, tf.maximum(seg - 1, 0)), 0)
        return tf.gather(self._seg_starts, seg) + (u - before)

    def starts_and_strands(self, keys_B: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if self.n_counter is None or self.max_n >= self.window_len:
            starts_B = self._draw(keys_B)
        else:
            attempts_K = tf.range(self.ATTEMPTS, dtype=tf.int64)
            # Attempt 0 uses the window key itself; later attempts re-hash it.
            keys_BxK = tf.where(
                attempts_K[None, :] == 0,
                keys_B[:, None],
                hash_combine(keys_B[:, None], 1000 + attempts_K),
            )
            starts_BxK = tf.reshape(self._draw(tf.reshape(keys_BxK, [-1])), tf.shape(keys_BxK))
            n_BxK = self.n_counter.count(starts_BxK, self.window_len)
            # The first acceptable attempt, else the first of those with the fewest N (explicit
            # minima: tf.argmax / argmin do not promise which index wins a tie).
            none = tf.constant(self.ATTEMPTS, tf.int64)
            first_ok_B = tf.reduce_min(tf.where(n_BxK <= self.max_n, attempts_K, none), axis=1)
            fewest_n = n_BxK == tf.reduce_min(n_BxK, axis=1, keepdims=True)
            first_fewest_B = tf.reduce_min(tf.where(fewest_n, attempts_K, none), axis=1)
            pick_B = tf.where(first_ok_B < none, first_ok_B, first_fewest_B)
            starts_B = tf.gather(starts_BxK, pick_B, batch_dims=1)
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
