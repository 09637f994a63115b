"""tf.data: step range -> global window indices -> windows -> tokens -> masks -> host batches.

A window of `data.window_len` bases becomes CLS + `tokenizer.num_tokens(window_len)` tokens (or,
with `data.window_tokens` = T, a window of `tokenizer.bases_for_tokens(T)` bases becomes CLS + T
tokens).

The dataset is `Dataset.range(first_step, last_step)`; each element (a step) is mapped by one
vectorised function that builds this host's slice of that step's global batch. Window indices of
step s are `s * global_batch + [0, global_batch)`, and host h of H takes the h-th contiguous
slice of them, so the global batch is the same for any number of hosts and resuming at step s
needs no iterator state. `to_global` turns a host batch into a global `jax.Array`.

`data.length_warmup` trains on shorter windows first (as HyenaDNA does): stage i's windows are
used up to its step, then the next stage's; which stage a step is in depends on the step only,
so resuming inside any stage is exact. Held-out windows always have the final length.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from gfm_jax.data import masking_spec, windows
from gfm_jax.data.corpus import Corpus
from gfm_jax.data.masking import mask_tokens
from gfm_jax.data.tokenizers import Tokenizer
from gfm_jax.errors import UserError

# Held-out windows do not depend on the training seed, so evaluations of different runs compare.
EVAL_SEED = 0x5EED


def hide_gpus_from_tensorflow() -> None:
    """Keeps TensorFlow off any accelerator JAX is using: tf.data runs on the host CPU only.

    Process-wide, so entry points call it from main. Once TensorFlow has started (a second
    call in one process), its devices are fixed and this leaves them as they are.
    """
    # TensorFlow raises "Visible devices cannot be modified after being initialized".
    with contextlib.suppress(RuntimeError):
        tf.config.set_visible_devices([], "GPU")


def window_size(tokenizer: Tokenizer, data: ml_collections.ConfigDict, length: int = 0):
    """(bases, tokens without CLS) of a window: `length` in the unit of the config's window
    (tokens if `data.window_tokens` is set, else bases), or the config's window itself."""
    if int(data.window_tokens) > 0:
        num_tokens = int(length or data.window_tokens)
        window_len = tokenizer.bases_for_tokens(num_tokens)
    else:
        window_len = int(length or data.window_len)
        num_tokens = tokenizer.num_tokens(window_len)
    if num_tokens < 1:
        raise UserError(
            f"data.window_len={window_len} gives no {tokenizer.name} token; make windows longer"
        )
    return window_len, num_tokens


def warmup_stages(data: ml_collections.ConfigDict, final: int) -> list[tuple[int, int]]:
    """`data.length_warmup` checked: (last step, length) pairs, steps and lengths increasing."""
    stages = [tuple(int(x) for x in stage) for stage in data.length_warmup]
    ok = all(len(s) == 2 for s in stages)
    if ok:
        steps = [0] + [s[0] for s in stages]
        lengths = [0] + [s[1] for s in stages] + [final]
        ok = all(a < b for a, b in zip(steps, steps[1:], strict=False)) and all(
            a < b for a, b in zip(lengths, lengths[1:], strict=False)
        )
    if not ok:
        raise UserError(
            f"data.length_warmup={data.length_warmup}: give (last_step, length) pairs with "
            f"both increasing and every length under the final window's ({final}), e.g. "
            "((1000, 1024), (2000, 4096))"
        )
    return stages


class WindowPipeline:
    """Builds masked, tokenized windows of a corpus for the 'train' and 'val' splits."""

    def __init__(
        self, corpus: Corpus, tokenizer: Tokenizer, data: ml_collections.ConfigDict, seed: int
    ):
        self.tokenizer = tokenizer
        # Tokens per window (without CLS), and the bases each window is cut from.
        self.window_len, self.num_tokens = window_size(tokenizer, data)
        final = self.num_tokens if int(data.window_tokens) > 0 else self.window_len
        self.stages = warmup_stages(data, final)
        self.seeds = {"train": int(seed), "val": EVAL_SEED}
        self.masking = masking_spec.from_config(data, tokenizer.default_mask_span)
        if float(data.repeat_weight) < 0.0:
            raise UserError(f"data.repeat_weight={data.repeat_weight}: must be >= 0")
        self.repeat_weight = float(data.repeat_weight)
        self.prefetch = int(data.prefetch)
        # A variable, not a constant: a constant would be embedded in the graph (2 GB limit).
        self.genome = tf.Variable(corpus.codes, trainable=False, dtype=tf.uint8)
        n_counter = windows.NCounter(*corpus.n_runs())
        segments = {
            s: corpus.split(s, data.val_fraction, data.val_start, data.val_records, data.val_ranges)
            for s in ("train", "val")
        }
        # Training mixes files by data.weights / data.size_temperature; held-out windows weigh
        # every held-out base equally.
        self.train_weights = corpus.file_weights(
            segments["train"], self.window_len, tuple(data.weights), float(data.size_temperature)
        )

        def samplers(window_len: int) -> dict[str, windows.WindowSampler]:
            return {
                split: windows.WindowSampler(
                    segments[split],
                    window_len,
                    reverse_complement=bool(data.reverse_complement) and split == "train",
                    group_weights=self.train_weights if split == "train" else None,
                    n_counter=n_counter,
                    max_n_fraction=float(data.max_n_fraction),
                )
                for split in ("train", "val")
            }

        self.samplers = samplers(self.window_len)
        # Per warm-up stage: its last step and its windows' (bases, tokens, samplers).
        self.warmup = []
        for last_step, length in self.stages:
            bases, tokens = window_size(tokenizer, data, length)
            self.warmup.append((last_step, (bases, tokens, samplers(bases)["train"])))
        self.files = corpus.files

    def tokens_at(self, step: int) -> int:
        """Tokens per window (CLS included) of train step `step` (1-based), warm-up included."""
        for last_step, (_, tokens, _) in self.warmup:
            if step <= last_step:
                return 1 + tokens
        return 1 + self.num_tokens

    def describe_mixture(self) -> str:
        parts = [f"{f} {w:.1%}" for f, w in zip(self.files, self.train_weights, strict=True)]
        return "training mixture: " + ", ".join(parts)

    def windows_for_indices(
        self, split: str, indices_B: tf.Tensor, stage: tuple | None = None
    ) -> dict[str, tf.Tensor]:
        """The masked windows of the given global indices (a pure function of split, index),
        of the final length or of a warm-up `stage` (bases, tokens, sampler)."""
        window_len, num_tokens, sampler = stage or (
            self.window_len, self.num_tokens, self.samplers[split]
        )  # fmt: skip
        keys_B = windows.window_keys(self.seeds[split], indices_B)
        starts_B, strands_B = sampler.starts_and_strands(keys_B)
        codes_BxL = windows.gather_windows(self.genome, starts_B, strands_B, window_len)
        ids_BxT = self.tokenizer.ids_from_codes(codes_BxL)[:, :num_tokens]
        # Every sequence starts with CLS (as in Nucleotide Transformer): it gives the model an
        # absolute anchor that rotary positions alone lack, and a token to pool for classifiers.
        cls_Bx1 = tf.fill([tf.shape(ids_BxT)[0], 1], tf.cast(self.tokenizer.cls_id, ids_BxT.dtype))
        ids_BxT = tf.concat([cls_Bx1, ids_BxT], axis=1)
        batch = mask_tokens(
            ids_BxT,
            keys_B,
            self.masking,
            mask_id=self.tokenizer.mask_id,
            maskable=self.tokenizer.maskable,
        )
        if self.repeat_weight != 1.0:
            # Down-weight repeats in the loss by the soft-masked fraction of each token.
            frac_BxT = self.tokenizer.repeat_fraction(codes_BxL)[:, :num_tokens]
            scale_BxT = 1.0 - (1.0 - self.repeat_weight) * frac_BxT
            scale_BxT = tf.concat([tf.ones_like(scale_BxT[:, :1]), scale_BxT], axis=1)  # CLS
            batch["weights"] = batch["weights"] * scale_BxT
        batch["index"] = indices_B
        return batch

    def dataset(
        self,
        split: str,
        *,
        global_batch: int,
        first_step: int,
        last_step: int,
        process_index: int = 0,
        process_count: int = 1,
    ) -> tf.data.Dataset:
        """Host `process_index`'s slices of the global batches of steps [first_step, last_step)
        (the dataset's step s builds the batch of train step s + 1), warm-up stages first."""
        per_host = host_batch_size(global_batch, process_count)
        offset = process_index * per_host
        stages = self.warmup if split == "train" else []
        ranges, start = [], first_step
        for last, stage in [*stages, (last_step, None)]:
            if min(last, last_step) > start:
                ranges.append((start, min(last, last_step), stage))
                start = min(last, last_step)
        ds = None
        for first, last, stage in ranges or [(first_step, first_step, None)]:

            def build(step: tf.Tensor, stage=stage) -> dict[str, tf.Tensor]:
                indices = step * global_batch + offset + tf.range(per_host, dtype=tf.int64)
                return self.windows_for_indices(split, indices, stage)

            part = tf.data.Dataset.range(first, last)
            part = part.map(build, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            ds = part if ds is None else ds.concatenate(part)
        return ds.prefetch(self.prefetch)


def host_batch_size(
    global_batch: int, process_count: int, key: str = "train.global_batch_size"
) -> int:
    """Each process's share of a global batch; `key` is the config key a user would change."""
    if global_batch % process_count:
        raise UserError(
            f"{key}={global_batch} does not divide over {process_count} processes; "
            f"make {key} a multiple of the process count"
        )
    return global_batch // process_count


def host_slice(sharding: jax.sharding.Sharding, global_batch: int) -> dict[str, int]:
    """Which contiguous slice of each global batch this process builds, as `dataset`'s
    (process_index, process_count): the rows its devices hold. Where the batch axis is not
    split across processes (a mesh whose data x fsdp lies within each process, such as one
    spanning processes along `sequence` only), every process builds the whole batch."""
    index_map = sharding.addressable_devices_indices_map((global_batch,))
    rows = [s[0].indices(global_batch)[:2] for s in index_map.values()]
    lo, hi = min(r[0] for r in rows), max(r[1] for r in rows)
    return dict(process_index=lo // (hi - lo), process_count=global_batch // (hi - lo))


def to_global(
    batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding
) -> dict[str, jax.Array]:
    """This host's slice of a batch -> global arrays sharded along the batch axis."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def global_batches(
    ds: tf.data.Dataset, sharding: jax.sharding.Sharding, keys: tuple[str, ...]
) -> Iterator[dict[str, jax.Array]]:
    """Global arrays of the given keys of each host batch of `ds`."""
    for batch in ds.as_numpy_iterator():
        yield to_global({k: batch[k] for k in keys}, sharding)
