"""Single-nucleotide vs NT 6-mer vs BPE tokens on the built-in genomes, at equal compute.

    python scripts/sweep.py experiments/tokenizers/sweep.py --workdir runs/sweep_tokenizers \
        --eval-fasta builtin:saureus_NCTC8325_NC_007795.fa.gz

Equal compute: the same `tiny` encoder, 128 tokens per window (CLS added), batch 64 and the same
number of steps, so every run makes the same encoder passes; only the tokens differ (char: 128
bases per window, nt6: 768, bpe: about 128 x its mean token length). Compared in bits per base.
"""

STEPS = 300
COMMON = (
    f"train.num_steps={STEPS}",
    "train.eval_every=100",
    "train.checkpoint_every=100",
    "train.eval_batches=8",
    "train.global_batch_size=64",
    "data.window_tokens=128",
)


def runs() -> list[dict]:
    """One run per tokenizer: a name, a pretraining config and its dotted overrides."""
    return [
        {"name": "char", "config": "configs/pretrain/tiny.py", "overrides": [*COMMON]},
        {"name": "nt6", "config": "configs/pretrain/tiny_nt6.py", "overrides": [*COMMON]},
        {"name": "bpe", "config": "configs/pretrain/tiny_bpe.py", "overrides": [*COMMON]},
    ]
