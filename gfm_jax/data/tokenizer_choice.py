"""Which tokenizer a run uses, and which one a saved checkpoint recorded.

The fixed-vocabulary tokenizers (tokenizers.py) are looked up by name; BPE (bpe.py) is trained on
the run's corpus. This module sits above both so that neither has to import the other.
"""

from __future__ import annotations

import pathlib
from typing import Any

from gfm_jax.data import bpe
from gfm_jax.data.corpus import Corpus
from gfm_jax.data.tokenizers import Tokenizer, get_tokenizer


def tokenizer_for_run(data: Any, corpus: Corpus, workdir: pathlib.Path | None) -> Tokenizer:
    """The tokenizer `data.tokenizer` names; "bpe" is trained on the training segments of
    `corpus` and kept in `<workdir>/tokenizer.json` (in memory only when workdir is None)."""
    if data.tokenizer != "bpe":
        return get_tokenizer(data.tokenizer)
    segments = corpus.config_split("train", data)
    if workdir is None:
        texts = bpe.training_texts(corpus, segments, int(data.bpe_train_bases))
        return bpe.BpeTokenizer.train(texts, int(data.bpe_vocab_size))
    return bpe.load_or_train(
        pathlib.Path(workdir) / "tokenizer.json",
        corpus,
        segments,
        int(data.bpe_vocab_size),
        int(data.bpe_train_bases),
    )


def from_spec(spec: dict[str, Any]) -> Tokenizer:
    """Rebuilds the tokenizer a checkpoint's `meta` recorded (`Tokenizer.spec`)."""
    if spec["name"] == "bpe":
        return bpe.BpeTokenizer.from_spec(spec)
    return get_tokenizer(spec["name"])
