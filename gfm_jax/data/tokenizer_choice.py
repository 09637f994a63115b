"""Which tokenizer a run uses, and which one a saved checkpoint recorded.

The fixed-vocabulary tokenizers (tokenizers.py) are looked up by name; BPE (bpe.py) is trained on
the run's corpus. This module sits above both so that neither has to import the other.
"""

from __future__ import annotations

import pathlib
from typing import Any

from gfm_jax import checkpoint
from gfm_jax.data import bpe, checkpoint_vocab
from gfm_jax.data.corpus import Corpus
from gfm_jax.data.tokenizers import Tokenizer, get_tokenizer
from gfm_jax.errors import UserError


def tokenizer_for_run(
    data: Any, corpus: Corpus, workdir: pathlib.Path | None, init_from: str = ""
) -> Tokenizer:
    """The tokenizer `data.tokenizer` names; "bpe" is trained on the training segments of
    `corpus` and kept in `<workdir>/tokenizer.json` (in memory only when workdir is None);
    "checkpoint" is the one `init_from`'s checkpoint recorded (an imported model's own)."""
    if data.tokenizer == "checkpoint":
        source = init_from or (workdir if workdir and _has_checkpoint(workdir) else "")
        if not source:
            raise UserError(
                "data.tokenizer='checkpoint' takes the tokenizer of train.init_from's checkpoint "
                "(or of the workdir's own); set --config.train.init_from (or name a tokenizer)"
            )
        return from_spec(checkpoint.read_meta(source)[1]["tokenizer"])
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


def _has_checkpoint(workdir: pathlib.Path) -> bool:
    directory = checkpoint.checkpoint_dir(workdir)
    return directory.is_dir() and any(directory.iterdir())


def from_spec(spec: dict[str, Any]) -> Tokenizer:
    """Rebuilds the tokenizer a checkpoint's `meta` recorded (`Tokenizer.spec`)."""
    if spec["name"] == "bpe":
        return bpe.BpeTokenizer.from_spec(spec)
    if "scheme" in spec:
        return checkpoint_vocab.CheckpointVocab.from_spec(spec)
    return get_tokenizer(spec["name"])
