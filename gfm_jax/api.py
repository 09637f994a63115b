"""The Python API for notebooks: a pretrained workdir or a fine-tuned model in a few lines.

    from gfm_jax import api
    model = api.load("runs/quickstart")          # a pretraining workdir, or an imported one
    vectors = model.embed(["ACGTACGT", "TTGACA"])  # [N, D]
    clf = api.load_finetuned("runs/quickstart/eval/splice/splice_finetune_pretrained_seed0")
    labels = clf.predict_labels(["ACGT" * 15])

Every call runs in this process on its local devices (see docs/python_api.md).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np

from gfm_jax.evaluate import embed, finetuned, pretrained, vep
from gfm_jax.evaluate.finetuned import Finetuned


@dataclasses.dataclass(frozen=True)
class Model:
    """A pretrained masked-LM: embeddings and variant scores."""

    loaded: pretrained.Loaded

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def num_layers(self) -> int:
        return self.loaded.pretrained.model_config.num_layers

    def embed(
        self,
        sequences: Sequence[str],
        layers: int | Sequence[int] | str = -1,
        pooling: str = "cls",
        strand: str = "forward",
        batch_size: int = 64,
    ) -> np.ndarray:
        """Embeddings of `sequences`: [N, D] for one layer (an int), [N, K, D] for a list of
        K layers or "all" (0 the token embeddings, -1 the output); pooling cls (default) |
        mean | max over the bases | none (per token: a token axis before D); strand "both"
        averages with the reverse complement's."""
        names = [f"sequence {i}" for i in range(len(sequences))]
        texts = [s.upper() for s in sequences]
        return embed.embed_sequences(
            self.loaded, texts, names, pooling, batch_size, layers=layers, strand=strand
        )

    def score_variants(self, vcf: str, fasta: str, window: int = 0) -> list[dict]:
        """One dict per scorable variant of `vcf` against its reference `fasta` (paths or
        builtin:<name>): the masked-marginal log-likelihood ratio ALT vs REF (`llr`, the mean
        of both strands) and embedding distances (the columns of `evaluate vep`)."""
        variants, _, genome = vep.read_inputs(vcf, fasta)
        if window <= 0:
            window, _ = pretrained.window(self.loaded)
        rows, _ = vep.score_variants(self.loaded, variants, genome, window)
        return rows


def load(workdir: str | pathlib.Path) -> Model:
    """The latest checkpoint of a pretraining workdir (or one written by `gfm_jax.interop`)."""
    return Model(pretrained.load(workdir))


def merge_adapters(directory: str | pathlib.Path, out: str | pathlib.Path) -> Finetuned:
    """Folds a LoRA / IA3 fine-tune's adapters into its base weights, writes the standalone
    model to `out` and returns it loaded (as `evaluate merge` does)."""
    finetuned.merge(directory, out)
    return finetuned.load(out)


def load_finetuned(directory: str | pathlib.Path) -> Finetuned:
    """A fine-tuned model: the directory `evaluate finetune` wrote beside its run JSON (the
    JSON's `checkpoint`), or one `evaluate merge` wrote. It has `predict(sequences, strand)`
    (outputs [N, C]) and `predict_labels(sequences, strand)`."""
    return finetuned.load(directory)
