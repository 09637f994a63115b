"""The tiny preset with overlapping 6-mer tokens (DNABERT-style, vocabulary 4101).

    python -m gfm_jax.train --config configs/pretrain/tiny_kmer6.py --workdir runs/tiny_kmer6

Windows of 128 tokens (133 bases), global batch 64. Masking takes spans of 6 tokens, so a masked
base is not visible in the neighbouring k-mers. Smoke mode: `configs/pretrain/tiny_kmer6.py:smoke`.
"""

from gfm_jax.config import apply_smoke_mode, check_mode, pretrain_defaults


def get_config(mode: str = "default"):
    c = pretrain_defaults()
    c.data.tokenizer = "kmer6"
    c.data.window_tokens = 128
    c.train.global_batch_size = 64
    c.train.num_steps = 300
    c.train.log_every = 20
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
    c.train.eval_batches = 4
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 20
    return apply_smoke_mode(c) if check_mode(mode) == "smoke" else c
