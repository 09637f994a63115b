"""The tiny preset with Nucleotide Transformer 6-mer tokens (vocabulary 4107).

    python -m gfm_jax.train --config configs/pretrain/tiny_nt6.py --workdir runs/tiny_nt6

768-base windows = CLS + 128 tokens, global batch 64. Losses are per 6-mer token; compare
tokenizers by the bits-per-base figure. Smoke mode: `configs/pretrain/tiny_nt6.py:smoke`.
"""

from gfm_jax.config import apply_smoke_mode, check_mode, pretrain_defaults


def get_config(mode: str = "default"):
    c = pretrain_defaults()
    c.data.tokenizer = "nt6"
    c.data.window_len = 768
    c.train.global_batch_size = 64
    c.train.num_steps = 300
    c.train.log_every = 20
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
    c.train.eval_batches = 4
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 20
    return apply_smoke_mode(c) if check_mode(mode) == "smoke" else c
