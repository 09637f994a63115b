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
    # Masking selects spans of this many tokens unless data.mask_span says otherwise.
    default_mask_span: int = 1

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def scheme(self) -> str:
        """How sequences are split into tokens (a built-in tokenizer's name)."""
        return self.name

    @abc.abstractmethod
    def num_tokens(self, window_len: int) -> int:
        """Tokens per window of `window_len` bases (without CLS)."""

    @abc.abstractmethod
    def bases_for_tokens(self, tokens: int) -> int:
        """Bases per window that give at least `tokens` tokens (windows sized in tokens)."""

    @abc.abstractmethod
    def repeat_fraction(self, codes_BxL: tf.Tensor) -> tf.Tensor:
        """float32 [B, num_tokens(L)]: the soft-masked fraction of each token's bases."""

    @abc.abstractmethod
    def encode(self, sequence: str) -> np.ndarray:
        """Text -> int32 ids. Raises UserError on letters the tokenizer cannot represent."""

    @abc.abstractmethod
    def decode(self, ids: np.ndarray) -> str:
        """Ids -> text (uppercase; special tokens dropped)."""

    @abc.abstractmethod
    def ids_from_codes(self, codes_BxL: tf.Tensor) -> tf.Tensor:
        """uint8 base codes [B, L] -> int32 ids [B, num_tokens(L)], padded with pad_id."""

    def complement_ids(self) -> tuple[int, ...] | None:
        """The id of each token's complement (specials and N map to themselves), or None where
        reverse complementing a sequence is not a permutation of its tokens (k-mers, BPE)."""
        return None

    def spec(self) -> dict[str, Any]:
        """What a checkpoint records to rebuild this tokenizer."""
        return {"name": self.name, "vocab_size": self.vocab_size}

    def _numpy_per_token(self, fn, codes_BxL: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
        """Runs `fn(codes [B, L], num_tokens) -> [B, num_tokens]` (numpy, once per batch)."""
        num_tokens = self.num_tokens(int(codes_BxL.shape[1]))
        out = tf.numpy_function(lambda c: fn(c, num_tokens), [codes_BxL], dtype, stateful=False)
        out.set_shape([codes_BxL.shape[0], num_tokens])
        return out

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

    def complement_ids(self) -> tuple[int, ...]:
        ids = list(range(self.vocab_size))
        a, c, g, t = range(self._first, self._first + 4)
        ids[a], ids[t], ids[c], ids[g] = t, a, g, c
        return tuple(ids)

    def bases_for_tokens(self, tokens: int) -> int:
        return tokens

    def repeat_fraction(self, codes_BxL: tf.Tensor) -> tf.Tensor:
        return tf.cast(codes_BxL >= fasta.SOFT_MASK_BIT, tf.float32)

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
        self._digit = np.zeros(256, np.int32)
        self._single = np.full(256, self._first_single + 4, np.int32)  # N (and anything else)
        for base in "ACGT":
            code = fasta.BASES.index(base)
            for c in (code, code | fasta.SOFT_MASK_BIT):
                self._digit[c] = self.ORDER.index(base)
                self._single[c] = self._first_single + self.ORDER.index(base)
        self._id_text = np.array(self.vocab, dtype=object)

    def num_tokens(self, window_len: int) -> int:
        return -(-window_len // self.K)

    def bases_for_tokens(self, tokens: int) -> int:
        return tokens * self.K  # N inflates the token count; tokens past `tokens` are dropped

    def _tokenize(self, codes_BxL: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectorised over a batch, per base position: the token that starts there, whether one
        does (is emitted), and whether it is a 6-mer."""
        k = self.K
        length = codes_BxL.shape[1]
        is_n = (codes_BxL & ~np.uint8(fasta.SOFT_MASK_BIT)) >= fasta.N
        pos = np.arange(length, dtype=np.int32)
        if is_n.any():
            # Offsets within each N-free piece, and how many whole 6-mers the piece holds.
            last_n = np.maximum.accumulate(np.where(is_n, pos, np.int32(-1)), axis=1)
            next_n = np.where(is_n, pos, np.int32(length))[:, ::-1]
            next_n = np.minimum.accumulate(next_n, axis=1)[:, ::-1]
            offset = pos - (last_n + 1)
            full = (next_n - (last_n + 1)) // k * k
        else:  # the common case: one piece per row
            offset, full = pos[None, :], length // k * k
        kmer_start = ~is_n & (offset % k == 0) & (offset < full)
        emitted = kmer_start | is_n | (offset >= full)
        tokens = self._single[codes_BxL]
        rows, cols = np.nonzero(kmer_start)
        value = np.zeros(rows.size, np.int32)
        for j in range(k):  # a 6-mer never runs past its piece, so cols + j is in range
            value = (value << 2) | self._digit[codes_BxL[rows, cols + j]]
        tokens[rows, cols] = self._first_kmer + value
        return tokens, emitted, kmer_start

    @staticmethod
    def _emitted_first(values_BxL: np.ndarray, emitted: np.ndarray, num_tokens: int, fill):
        """Per-base-position values -> the values of the emitted tokens, in order, padded."""
        slot = np.cumsum(emitted, axis=1, dtype=np.int32) - 1
        rows, cols = np.nonzero(emitted & (slot < num_tokens))
        out = np.full((values_BxL.shape[0], num_tokens), fill, values_BxL.dtype)
        out[rows, slot[rows, cols]] = values_BxL[rows, cols]
        return out

    def _batch_ids(self, codes_BxL: np.ndarray, num_tokens: int) -> np.ndarray:
        tokens, emitted, _ = self._tokenize(codes_BxL)
        return self._emitted_first(tokens, emitted, num_tokens, self.pad_id)

    def _batch_repeat_fraction(self, codes_BxL: np.ndarray, num_tokens: int) -> np.ndarray:
        _, emitted, kmer_start = self._tokenize(codes_BxL)
        soft = (codes_BxL >= fasta.SOFT_MASK_BIT).astype(np.float32)
        padded = np.pad(soft, ((0, 0), (0, self.K - 1)))
        soft_k = sum(padded[:, j : j + soft.shape[1]] for j in range(self.K)) / self.K
        per_pos = np.where(kmer_start, soft_k, soft).astype(np.float32)
        return self._emitted_first(per_pos, emitted, num_tokens, np.float32(0))

    def encode(self, sequence: str) -> np.ndarray:
        tokens, emitted, _ = self._tokenize(self._codes(sequence)[None, :])
        return tokens[0][emitted[0]]

    def decode(self, ids: np.ndarray) -> str:
        ids = np.asarray(ids)
        ids = ids[(ids >= self._first_kmer) & (ids < self.vocab_size)]
        return "".join(self._id_text[ids])

    def ids_from_codes(self, codes_BxL: tf.Tensor) -> tf.Tensor:
        return self._numpy_per_token(self._batch_ids, codes_BxL, tf.int32)

    def repeat_fraction(self, codes_BxL: tf.Tensor) -> tf.Tensor:
        return self._numpy_per_token(self._batch_repeat_fraction, codes_BxL, tf.float32)


class OverlappingKmerTokenizer(Tokenizer):
    """Overlapping k-mers (DNABERT-style), one token per base position, stride 1.

    Ids: [PAD]0 [UNK]1 [CLS]2 [SEP]3 [MASK]4, then the 4**k k-mers in
    `itertools.product("ACGT", repeat=k)` order from 5. A window of L bases gives L - k + 1
    tokens; a k-mer containing N is [UNK]. Decoding reads base j from any token covering it
    that is not [UNK], so it restores every base except those whose every covering k-mer holds
    an N (they decode as N). Neighbouring tokens share k - 1 bases, so masking one token alone
    leaks it: the default mask span for this tokenizer is k tokens (see masking.py).
    """

    SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

    def __init__(self, k: int):
        if not 1 <= k <= 8:
            raise UserError(f"data.tokenizer='kmer{k}': k must be between 1 and 8")
        self.k = k
        self.name = f"kmer{k}"
        kmers = tuple("".join(p) for p in itertools.product("ACGT", repeat=k))
        self.vocab = self.SPECIALS + kmers
        self.pad_id, self.unk_id, self.cls_id, self.mask_id = 0, 1, 2, 4
        self.bases_per_token = 1.0  # each token adds one new base
        self.default_mask_span = k
        self._first = len(self.SPECIALS)
        self.maskable = (self._first, self._first + len(kmers))
        # Base code (soft-masked or not) -> digit A0 C1 G2 T3, or -1 for N.
        table = np.full(256, -1, np.int32)
        for code in range(4):
            table[code] = table[code | fasta.SOFT_MASK_BIT] = code
        self._digit = table
        self._id_text = np.array(self.vocab, dtype=object)

    def num_tokens(self, window_len: int) -> int:
        return max(window_len - self.k + 1, 0)

    def bases_for_tokens(self, tokens: int) -> int:
        return tokens + self.k - 1

    def repeat_fraction(self, codes_BxL: tf.Tensor) -> tf.Tensor:
        soft = tf.cast(codes_BxL >= fasta.SOFT_MASK_BIT, tf.float32)
        tokens = self.num_tokens(int(codes_BxL.shape[1]))
        return tf.add_n([soft[:, j : j + tokens] for j in range(self.k)]) / self.k

    def _ids(self, digits_BxL, xp):
        """k-mer ids from digits (-1 = N), in numpy (`xp=np`) or TensorFlow ops."""
        k, length = self.k, digits_BxL.shape[1]
        tokens = length - k + 1
        value, has_n = 0, False
        for j in range(k):
            d = digits_BxL[:, j : j + tokens]
            value = value * 4 + xp.maximum(d, 0)
            has_n = has_n | (d < 0)
        return xp.where(has_n, self.unk_id, self._first + value)

    def encode(self, sequence: str) -> np.ndarray:
        ids = self._ids(self._digit[self._codes(sequence)][None, :], np)
        return ids[0].astype(np.int32)

    def decode(self, ids: np.ndarray) -> str:
        ids = np.asarray(ids)
        ids = ids[(ids == self.unk_id) | ((ids >= self._first) & (ids < self.vocab_size))]
        if ids.size == 0:
            return ""
        k, tokens = self.k, ids.size
        # letter_TxK[t, j]: base t + j as read from token t ('N' where the token is [UNK]).
        letter_TxK = np.full((tokens, k), ord("N"), np.uint8)
        known = ids != self.unk_id
        text = "".join(self._id_text[ids[known]]).encode()
        letter_TxK[known] = np.frombuffer(text, np.uint8).reshape(-1, k)
        out = np.full(tokens + k - 1, ord("N"), np.uint8)
        # Later offsets first, so each base ends up read from its earliest covering token.
        for j in reversed(range(k)):
            col = letter_TxK[:, j]
            take = col != ord("N")
            out[j : j + tokens][take] = col[take]
        return out.tobytes().decode()

    def ids_from_codes(self, codes_BxL: tf.Tensor) -> tf.Tensor:
        digits = tf.gather(tf.constant(self._digit), tf.cast(codes_BxL, tf.int32))
        return tf.cast(self._ids(digits, _TfOps), tf.int32)


class _TfOps:
    """The two numpy functions `_ids` uses, as TensorFlow ops."""

    maximum = staticmethod(tf.maximum)
    where = staticmethod(tf.where)


def get_tokenizer(name: str) -> Tokenizer:
    """Looks a fixed-vocabulary tokenizer up by its config name (BPE: see tokenizer_choice.py)."""
    factories = {
        "char": CharTokenizer,
        "char_rna": lambda: CharTokenizer(rna=True),
        "nt6": NucleotideTransformerTokenizer,
        **{f"kmer{k}": (lambda k=k: OverlappingKmerTokenizer(k)) for k in range(3, 7)},
    }
    if name == "bpe":
        raise UserError(
            "data.tokenizer='bpe' is trained on the corpus: use tokenizer_choice.tokenizer_for_run"
        )
    if name not in factories:
        names = [*sorted(factories), "bpe"]
        raise UserError(f"unknown tokenizer {name!r} in data.tokenizer; choose one of {names}")
    return factories[name]()
