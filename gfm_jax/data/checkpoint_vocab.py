"""A published checkpoint's own vocabulary, tokenized by the rule of one of our tokenizers.

Public checkpoints ship their vocabulary as a file (ESM's `vocab.txt`): its order gives the
embedding rows and its length the vocabulary size, which differ between releases (4,105 rows
for Nucleotide Transformer v1, 4,107 for v2, 24 for OmniGenome). `CheckpointVocab` keeps that
file's tokens and ids exactly and splits sequences with the rule of a built-in `scheme`
(`nt6`: 6-mers from the left with single-base remainders and N; `char` / `char_rna`: one token
per base, T written as U for `char_rna`). Each of the scheme's tokens takes the file's row of
the same text; a base the file lacks takes its unknown token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from gfm_jax.data.tokenizers import Tokenizer, get_tokenizer
from gfm_jax.errors import UserError

SCHEMES = ("nt6", "char", "char_rna")
# Each role's token, as ESM-style and BERT-style vocabularies spell it.
ROLES = {
    "pad": ("<pad>", "[PAD]"),
    "mask": ("<mask>", "[MASK]"),
    "cls": ("<cls>", "[CLS]"),
    "unk": ("<unk>", "[UNK]"),
}


def role_ids(vocab: Sequence[str], where: str) -> dict[str, int]:
    """The ids of the pad, mask, cls and unk tokens of `vocab` (read from `where`)."""
    index = {t: i for i, t in enumerate(vocab)}
    ids = {}
    for role, names in ROLES.items():
        found = [index[n] for n in names if n in index]
        if not found:
            raise UserError(f"{where}: the vocabulary has no {role} token ({' or '.join(names)})")
        ids[role] = found[0]
    return ids


class CheckpointVocab(Tokenizer):
    """The vocabulary `vocab` (a checkpoint's, in its order) split by the `scheme` rule."""

    def __init__(self, vocab: Sequence[str], scheme: str, where: str = "vocabulary"):
        if scheme not in SCHEMES:
            raise UserError(f"{where}: unknown tokenization scheme {scheme!r}; one of {SCHEMES}")
        base = get_tokenizer(scheme)
        self._base = base
        self.name = f"{scheme}_checkpoint"
        self._scheme = scheme
        self.vocab = tuple(vocab)
        roles = role_ids(self.vocab, where)
        self.pad_id, self.mask_id, self.cls_id, self.unk_id = (
            roles[r] for r in ("pad", "mask", "cls", "unk")
        )
        self.bases_per_token = base.bases_per_token
        self.default_mask_span = base.default_mask_span
        index = {t: i for i, t in enumerate(self.vocab)}
        base_roles = {base.pad_id: "pad", base.mask_id: "mask", base.cls_id: "cls"}
        base_roles[base.unk_id] = "unk"
        # base id -> our id: specials by role, other tokens by text (the unknown token if absent)
        self._to_ours = np.array(
            [
                roles[base_roles[i]] if i in base_roles else index.get(t, self.unk_id)
                for i, t in enumerate(base.vocab)
            ],
            np.int32,
        )
        maskable = self._to_ours[base.maskable[0] : base.maskable[1]]
        missing = [t for t, i in zip(base.vocab, self._to_ours, strict=True) if t not in index]
        if len(set(maskable.tolist())) != maskable.size or self.unk_id in maskable:
            raise UserError(
                f"{where}: the vocabulary lacks the {scheme} tokens {missing[:6]}; it does not "
                f"tokenize as {scheme}"
            )
        self.maskable = (int(maskable.min()), int(maskable.max()) + 1)
        # our id -> base id, for decoding (tokens outside the scheme decode as nothing)
        self._to_base = np.full(len(self.vocab), base.pad_id, np.int32)
        self._to_base[self._to_ours[::-1]] = np.arange(base.vocab_size, dtype=np.int32)[::-1]

    @property
    def scheme(self) -> str:
        return self._scheme

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "scheme": self.scheme, "vocab": list(self.vocab)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> CheckpointVocab:
        return cls(spec["vocab"], spec["scheme"], "the checkpoint's tokenizer")

    def num_tokens(self, window_len: int) -> int:
        return self._base.num_tokens(window_len)

    def bases_for_tokens(self, tokens: int) -> int:
        return self._base.bases_for_tokens(tokens)

    def repeat_fraction(self, codes_BxL: tf.Tensor) -> tf.Tensor:
        return self._base.repeat_fraction(codes_BxL)

    def encode(self, sequence: str) -> np.ndarray:
        return self._to_ours[self._base.encode(sequence)]

    def decode(self, ids: np.ndarray) -> str:
        return self._base.decode(self._to_base[np.asarray(ids)])

    def ids_from_codes(self, codes_BxL: tf.Tensor) -> tf.Tensor:
        return tf.gather(tf.constant(self._to_ours), self._base.ids_from_codes(codes_BxL))

    def complement_ids(self) -> tuple[int, ...] | None:
        base = self._base.complement_ids()
        if base is None:
            return None
        ids = np.arange(len(self.vocab), dtype=np.int32)
        ids[self._to_ours] = self._to_ours[np.asarray(base)]
        return tuple(int(i) for i in ids)
