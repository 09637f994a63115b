"""Byte-pair encoding trained on the corpus (DNABERT-2 style), with the `tokenizers` library.

The vocabulary is learned from the training segments only (held-out bases never shape it), then
its ids are laid out as [PAD]0 [UNK]1 [CLS]2 [SEP]3 [MASK]4 N5, then the bases and merges in the
order the trainer made them, so the maskable ids (everything that is not special or N) form one
range. N never merges: each N is its own token, as in the Nucleotide Transformer. The trained
tokenizer is saved with the run (`<workdir>/tokenizer.json`, and inside every checkpoint's
`meta`), so a resumed run and the evaluation scripts use exactly the same one.

Token lengths vary, so a window has no exact token count: a window of L bases is given
ceil(SLACK * L / bases_per_token) token slots (the mean over the training text), padded, and
tokens past that are dropped; with `data.window_tokens` = T it is cut from
ceil(SLACK * T * bases_per_token) bases and holds exactly T tokens unless N inflates it.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf
import tokenizers
from tokenizers import models, pre_tokenizers, trainers

from gfm_jax.data import fasta
from gfm_jax.data.checkpoint_vocab import role_ids
from gfm_jax.data.corpus import Corpus, Segments
from gfm_jax.data.tokenizers import Tokenizer
from gfm_jax.errors import UserError

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SLACK = 1.25
_WORD_BASES = 1000  # training text is cut into words of this many bases
_UPPER = np.frombuffer(fasta.BASES.encode(), np.uint8)


class BpeTokenizer(Tokenizer):
    """A BPE vocabulary behind the common tokenizer interface: trained here (the layout above),
    or a published one (DNABERT-2's: [UNK]0 [CLS]1 [SEP]2 [PAD]3 [MASK]4, no N token, so N
    encodes as [UNK]). Special tokens (and N) come before every other id."""

    def __init__(self, backend: tokenizers.Tokenizer, bases_per_token: float):
        self.name = "bpe"
        self._tok = backend
        vocab = backend.get_vocab()
        self.vocab = tuple(sorted(vocab, key=vocab.get))
        roles = role_ids(self.vocab, "BPE tokenizer")
        self.pad_id, self.unk_id, self.cls_id, self.mask_id = (
            roles[r] for r in ("pad", "unk", "cls", "mask")
        )
        added = json.loads(backend.to_str()).get("added_tokens", [])
        front = {t["id"] for t in added if t.get("special")} | {vocab.get("N", roles["unk"])}
        first = min(set(range(len(self.vocab) + 1)) - front)
        if max(front) > first:
            raise UserError(
                f"BPE tokenizer: the special tokens (and N) must take the first ids; they have "
                f"{sorted(front)}"
            )
        self._decodable = first - ("N" in vocab and vocab["N"] == first - 1)
        self.maskable = (first, len(self.vocab))
        self.bases_per_token = float(bases_per_token)

    # --- building, saving, loading ------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterator[str], vocab_size: int) -> BpeTokenizer:
        """Learns merges from upper-case sequence text; deterministic for the same input."""
        texts = list(texts)
        if vocab_size < len(SPECIALS) + 5 + 1:
            raise UserError(f"data.bpe_vocab_size={vocab_size}: need room for at least one merge")
        raw = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
        raw.pre_tokenizer = pre_tokenizers.Split("N", behavior="isolated")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIALS),
            initial_alphabet=list("ACGTN"),
            show_progress=False,
        )
        raw.train_from_iterator(texts, trainer=trainer)
        backend = _relayout(raw)
        total_bases = sum(len(t) for t in texts)
        total_tokens = sum(len(e.ids) for e in backend.encode_batch(texts))
        return cls(backend, total_bases / max(total_tokens, 1))

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> BpeTokenizer:
        return cls(tokenizers.Tokenizer.from_str(spec["json"]), spec["bases_per_token"])

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "bases_per_token": self.bases_per_token,
            "json": self._tok.to_str(),
        }

    def save(self, path: pathlib.Path) -> None:
        # Atomic (a crash never leaves half a tokenizer behind), and one temporary file per
        # process: every host of a multi-host run trains the same tokenizer and may save it
        # into a shared workdir at the same moment.
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.spec()))
        tmp.replace(path)

    @classmethod
    def load(cls, path: pathlib.Path) -> BpeTokenizer:
        try:
            return cls.from_spec(json.loads(path.read_text()))
        except UserError:
            raise
        except Exception as e:  # the Rust library raises plain Exception on a bad file
            raise UserError(
                f"{path}: not a gfm_jax BPE tokenizer ({e}); delete it to retrain"
            ) from None

    # --- the tokenizer interface --------------------------------------------------------------
    def num_tokens(self, window_len: int) -> int:
        return math.ceil(SLACK * window_len / self.bases_per_token)

    def bases_for_tokens(self, tokens: int) -> int:
        return math.ceil(SLACK * tokens * self.bases_per_token)

    def encode(self, sequence: str) -> np.ndarray:
        text = fasta.decode_codes(self._codes(sequence) & ~np.uint8(fasta.SOFT_MASK_BIT))
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

    def decode(self, ids: np.ndarray) -> str:
        ids = [int(i) for i in np.asarray(ids) if self._decodable <= i < self.vocab_size]
        return "".join(self.vocab[i] for i in ids)

    def _encodings(self, codes_BxL: np.ndarray) -> list:
        upper = _UPPER[codes_BxL & ~np.uint8(fasta.SOFT_MASK_BIT)]
        texts = [row.tobytes().decode() for row in upper]
        return self._tok.encode_batch(texts, add_special_tokens=False)

    def _batch_ids(self, codes_BxL: np.ndarray, num_tokens: int) -> np.ndarray:
        out = np.full((codes_BxL.shape[0], num_tokens), self.pad_id, np.int32)
        for row, enc in zip(out, self._encodings(codes_BxL), strict=True):
            ids = enc.ids[:num_tokens]
            row[: len(ids)] = ids
        return out

    def _batch_repeat_fraction(self, codes_BxL: np.ndarray, num_tokens: int) -> np.ndarray:
        soft = (codes_BxL >= fasta.SOFT_MASK_BIT).astype(np.float64)
        before = np.pad(np.cumsum(soft, axis=1), ((0, 0), (1, 0)))  # soft bases before each pos
        out = np.zeros((codes_BxL.shape[0], num_tokens), np.float32)
        for r, enc in enumerate(self._encodings(codes_BxL)):
            spans = np.asarray(enc.offsets[:num_tokens], np.int64).reshape(-1, 2)
            start, end = spans[:, 0], spans[:, 1]
            out[r, : len(spans)] = (before[r, end] - before[r, start]) / np.maximum(end - start, 1)
        return out

    def ids_from_codes(self, codes_BxL: tf.Tensor) -> tf.Tensor:
        return self._numpy_per_token(self._batch_ids, codes_BxL, tf.int32)

    def repeat_fraction(self, codes_BxL: tf.Tensor) -> tf.Tensor:
        return self._numpy_per_token(self._batch_repeat_fraction, codes_BxL, tf.float32)


def _relayout(raw: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """The trained tokenizer with N moved to id 5, right after the specials."""
    spec = json.loads(raw.to_str())
    trained = spec["model"]["vocab"]  # token -> id
    order = [*SPECIALS, "N"] + [t for t in sorted(trained, key=trained.get) if t not in SPECIALS]
    order = list(dict.fromkeys(order))
    spec["model"]["vocab"] = {t: i for i, t in enumerate(order)}
    for added in spec.get("added_tokens", []):
        added["id"] = spec["model"]["vocab"][added["content"]]
    return tokenizers.Tokenizer.from_str(json.dumps(spec))


def training_texts(corpus: Corpus, segments: Segments, max_bases: int) -> Iterator[str]:
    """Upper-case words of the training segments, at most `max_bases` spread over all of them."""
    total = int((segments.ends - segments.starts).sum())
    stride = max(1, math.ceil(total / max(max_bases, 1)))  # keep every stride-th word
    word = 0
    for start, end in zip(segments.starts, segments.ends, strict=True):
        for lo in range(int(start), int(end), _WORD_BASES):
            if word % stride == 0:
                codes = corpus.codes[lo : min(lo + _WORD_BASES, int(end))]
                yield fasta.decode_codes(codes & ~np.uint8(fasta.SOFT_MASK_BIT))
            word += 1


def load_or_train(
    path: pathlib.Path, corpus: Corpus, segments: Segments, vocab_size: int, max_bases: int
) -> BpeTokenizer:
    """The run's BPE tokenizer: read from `path` if it exists (resume), else trained and saved.

    A run resumed with another `vocab_size` keeps its tokenizer, and the checkpoint's model
    shape check refuses it if the vocabulary differs.
    """
    if path.exists():
        return BpeTokenizer.load(path)
    tok = BpeTokenizer.train(training_texts(corpus, segments, max_bases), vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(path)
    return tok
