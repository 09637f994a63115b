"""Tokenizers behind one interface: text <-> ids in numpy, base codes -> ids in tf.data.

Every tokenizer maps the uint8 base codes of `gfm_jax.data.fasta` to ids with one vectorised
lookup (`ids_from_codes`), so the input pipeline never runs Python per example.
"""

from __future__ import annotations

import abc
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
    bases_per_token: float

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    @abc.abstractmethod
    def base_ids(self) -> tuple[int, ...]:
        """Ids of the plain nucleotide tokens: what masking draws random replacements from."""

    @abc.abstractmethod
    def encode(self, sequence: str) -> np.ndarray:
        """Text -> int32 ids. Raises UserError on letters the tokenizer cannot represent."""

    @abc.abstractmethod
    def decode(self, ids: np.ndarray) -> str:
        """Ids -> text (special tokens dropped)."""

    @abc.abstractmethod
    def ids_from_codes(self, codes: tf.Tensor) -> tf.Tensor:
        """uint8 base codes [..., L] -> int32 ids [..., L'], vectorised (runs inside tf.data)."""

    def spec(self) -> dict[str, Any]:
        """What a checkpoint records to rebuild this tokenizer."""
        return {"name": self.name, "vocab_size": self.vocab_size}


class CharTokenizer(Tokenizer):
    """One token per nucleotide, in the HyenaDNA / Caduceus id layout.

    Ids: [CLS]0 [SEP]1 [BOS]2 [MASK]3 [PAD]4 [RESERVED]5 [UNK]6 A7 C8 G9 T10 N11. Case is folded
    (soft-masking is not a token property). With `rna=True`, decode writes U instead of T (and
    encode accepts both).
    """

    SPECIALS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")

    def __init__(self, rna: bool = False):
        self.name = "char_rna" if rna else "char"
        self.rna = rna
        letters = ("A", "C", "G", "U" if rna else "T", "N")
        self.vocab = self.SPECIALS + letters
        self.cls_id, self.mask_id, self.pad_id, self.unk_id = 0, 3, 4, 6
        self.bases_per_token = 1.0
        self._first_base = len(self.SPECIALS)
        # code (with or without the soft-mask bit) -> id
        table = np.full(256, self.unk_id, np.int32)
        for code in range(len(fasta.BASES)):
            table[code] = table[code | fasta.SOFT_MASK_BIT] = self._first_base + code
        self._code_to_id = table
        self._id_to_letter = np.frombuffer("".join(letters).encode(), np.uint8)

    @property
    def base_ids(self) -> tuple[int, ...]:
        return tuple(range(self._first_base, self._first_base + 4))

    def encode(self, sequence: str) -> np.ndarray:
        try:
            codes = fasta.encode_text(sequence)
        except ValueError as e:
            raise UserError(f"{self.name} tokenizer: {e} in sequence {sequence[:40]!r}") from None
        return self._code_to_id[codes]

    def decode(self, ids: np.ndarray) -> str:
        ids = np.asarray(ids)
        ids = ids[ids >= self._first_base] - self._first_base
        return self._id_to_letter[ids].tobytes().decode()

    def ids_from_codes(self, codes: tf.Tensor) -> tf.Tensor:
        return tf.gather(tf.constant(self._code_to_id), tf.cast(codes, tf.int32))


def get_tokenizer(name: str) -> Tokenizer:
    """Looks a tokenizer up by its config name."""
    factories = {"char": CharTokenizer, "char_rna": lambda: CharTokenizer(rna=True)}
    if name not in factories:
        raise UserError(
            f"unknown tokenizer {name!r} in data.tokenizer; choose one of {sorted(factories)}"
        )
    return factories[name]()
