"""Tokenizers behind one interface: text <-> ids in numpy, base codes -> ids in tf.data.

`ids_from_codes` turns a whole batch of windows (uint8 base codes [B, L]) into token ids
[B, num_tokens(L)] in one vectorised call, so the input pipeline never runs Python per example.
Reverse complementing happens on base codes before tokenization, so it is consistent with every
tokenizer by construction.
"""

from __future__ import annotations

import abc
import itertools
from typing import Any

import numpy as np
import tensorflow as tf

from gfm_jax.data import fasta
from gfm_jax.errors import UserError


class Tokenizer(abc.ABC):
    """The interface every tokenizer implements."""

    name: str
    vocab: tuple[str, ...]
    pad_id: int
    mask_id: int
    cls_id: int
    unk_id: int
    bases_per_token: float  # nominal, for reporting losses in bits per base
    # Ids [start, stop) that masking may select and draws random replacements from: the
    # nucleotide tokens (never specials or N).
    maskable: tuple[int, int]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @abc.abstractmethod
    def num_tokens(self, window_len: int) -> int:
        """Tokens per window of `window_len` bases (without CLS)."""

    @abc.abstractmethod
    def encode(self, sequence: str) -> np.ndarray:
        """Text -> int32 ids. Raises UserError on letters the tokenizer cannot represent."""

    @abc.abstractmethod
    def decode(self, ids: np.ndarray) -> str:
        """Ids -> text (uppercase; special tokens dropped)."""

    @abc.abstractmethod
    def ids_from_codes(self, codes_BxL: tf.Tensor) -> tf.Tensor:
        """uint8 base codes [B, L] -> int32 ids [B, num_tokens(L)], padded with pad_id."""

    def spec(self) -> dict[str, Any]:
        """What a checkpoint records to rebuild this tokenizer."""
        return {"name": self.name, "vocab_size": self.vocab_size}

    def _codes(self, sequence: str) -> np.ndarray:
        try:
            return fasta.encode_text(sequence)
        except ValueError as e:
            raise UserError(f"{self.name} tokenizer: {e} in sequence {sequence[:40]!r}") from None


class CharTokenizer(Tokenizer):
    """One token per nucleotide, in the HyenaDNA / Caduceus id layout.

    Ids: [CLS]0 [SEP]1 [BOS]2 [MASK]3 [PAD]4 [RESERVED]5 [UNK]6 A7 C8 G9 T10 N11. Case is folded
    (soft-masking is not a token property). With `rna=True`, decode writes U instead of T (and
    encode accepts both).
    """

    SPECIALS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")

    def __init__(self, rna: bool = False):
        self.name = "char_rna" if rna else "char"
        letters = ("A", "C", "G", "U" if rna else "T", "N")
        self.vocab = self.SPECIALS + letters
        self.cls_id, self.mask_id, self.pad_id, self.unk_id = 0, 3, 4, 6
        self.bases_per_token = 1.0
        first = len(self.SPECIALS)
        self.maskable = (first, first + 4)  # A C G T
        # code (with or without the soft-mask bit) -> id
        table = np.full(256, self.unk_id, np.int32)
        for code in range(len(fasta.BASES)):
            table[code] = table[code | fasta.SOFT_MASK_BIT] = first + code
        self._code_to_id = table
        self._first = first
        self._id_to_letter = np.frombuffer("".join(letters).encode(), np.uint8)

    def num_tokens(self, window_len: int) -> int:
        return window_len

    def encode(self, sequence: str) -> np.ndarray:
        return self._code_to_id[self._codes(sequence)]

    def decode(self, ids: np.ndarray) -> str:
        ids = np.asarray(ids)
        ids = ids[(ids >= self._first) & (ids < self.vocab_size)] - self._first
        return self._id_to_letter[ids].tobytes().decode()

    def ids_from_codes(self, codes_BxL: tf.Tensor) -> tf.Tensor:
        return tf.gather(tf.constant(self._code_to_id), tf.cast(codes_BxL, tf.int32))


class NucleotideTransformerTokenizer(Tokenizer):
    """Nucleotide Transformer (v2) 6-mers, with its exact id layout.

    Ids: <unk>0 <pad>1 <mask>2 <cls>3 <eos>4 <bos>5, the 4096 6-mers in
    `itertools.product("ATCG", repeat=6)` order from 6, then A T C G (4102-4105) and N (4106).
    The sequence is split on N; each piece is cut into 6-mers from the left, and its remainder
    (under 6 bases) and every N are single-base tokens. A window of L bases gives ceil(L / 6)
    tokens; N inflates the count, and tokens past that are dropped (the window is cut short).
    """

    K = 6
    SPECIALS = ("<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>")
    ORDER = "ATCG"

    def __init__(self):
        self.name = "nt6"
        kmers = tuple("".join(p) for p in itertools.product(self.ORDER, repeat=self.K))
        singles = (*self.ORDER, "N")
        self.vocab = self.SPECIALS + kmers + singles
        self.unk_id, self.pad_id, self.mask_id, self.cls_id = 0, 1, 2, 3
        self.bases_per_token = float(self.K)
        self._first_kmer = len(self.SPECIALS)
        self._first_single = self._first_kmer + len(kmers)
        self.maskable = (self._first_kmer, self._first_single + 4)  # k-mers and single ACGT
        # base code -> digit in ATCG order, and -> single-base token id
        self._digit = np.zeros(256, np.int64)
        self._single = np.full(256, self._first_single + 4, np.int32)  # N (and anything else)
        for base in "ACGT":
            code = fasta.BASES.index(base)
            for c in (code, code | fasta.SOFT_MASK_BIT):
                self._digit[c] = self.ORDER.index(base)
                self._single[c] = self._first_single + self.ORDER.index(base)
        self._id_text = np.array(self.vocab, dtype=object)

    def num_tokens(self, window_len: int) -> int:
        return -(-window_len // self.K)

    def _tokenize(self, codes_BxL: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised over a batch: (token at each base position, whether it is emitted)."""
        k = self.K
        batch, length = codes_BxL.shape
        plain = codes_BxL & ~np.uint8(fasta.SOFT_MASK_BIT)
        is_n = plain >= fasta.N
        pos = np.arange(length)
        last_n = np.maximum.accumulate(np.where(is_n, pos, -1), axis=1)
        next_n = np.minimum.accumulate(np.where(is_n, pos, length)[:, ::-1], axis=1)[:, ::-1]
        run_start = last_n + 1
        offset = pos - run_start
        full_kmers = (next_n - run_start) // k
        kmer_start = ~is_n & (offset % k == 0) & (offset // k < full_kmers)
        emitted = kmer_start | is_n | (offset >= full_kmers * k)
        digits = np.pad(self._digit[codes_BxL], ((0, 0), (0, k - 1)))
        value = sum(digits[:, j : j + length] * 4 ** (k - 1 - j) for j in range(k))
        tokens = np.where(kmer_start, self._first_kmer + value, self._single[codes_BxL])
        return tokens.astype(np.int32), emitted

    def _batch_ids(self, codes_BxL: np.ndarray, num_tokens: int) -> np.ndarray:
        tokens, emitted = self._tokenize(codes_BxL)
        order = np.argsort(~emitted, axis=1, kind="stable")  # emitted tokens first, in order
        tokens = np.take_along_axis(tokens, order, axis=1)[:, :num_tokens]
        count = emitted.sum(axis=1, keepdims=True)
        out = np.full((codes_BxL.shape[0], num_tokens), self.pad_id, np.int32)
        width = tokens.shape[1]
        out[:, :width] = np.where(np.arange(width) < count, tokens, self.pad_id)
        return out

    def encode(self, sequence: str) -> np.ndarray:
        tokens, emitted = self._tokenize(self._codes(sequence)[None, :])
        return tokens[0][emitted[0]]

    def decode(self, ids: np.ndarray) -> str:
        ids = np.asarray(ids)
        ids = ids[(ids >= self._first_kmer) & (ids < self.vocab_size)]
        return "".join(self._id_text[ids])

    def ids_from_codes(self, codes_BxL: tf.Tensor) -> tf.Tensor:
        num_tokens = self.num_tokens(int(codes_BxL.shape[1]))
        ids = tf.numpy_function(
            lambda codes: self._batch_ids(codes, num_tokens), [codes_BxL], tf.int32, stateful=False
        )
        ids.set_shape([codes_BxL.shape[0], num_tokens])
        return ids


def get_tokenizer(name: str) -> Tokenizer:
    """Looks a tokenizer up by its config name."""
    factories = {
        "char": CharTokenizer,
        "char_rna": lambda: CharTokenizer(rna=True),
        "nt6": NucleotideTransformerTokenizer,
    }
    if name not in factories:
        raise UserError(
            f"unknown tokenizer {name!r} in data.tokenizer; choose one of {sorted(factories)}"
        )
    return factories[name]()
