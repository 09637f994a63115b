"""The tiny preset with BPE tokens learned from the built-in genomes (DNABERT-2 style).

    python -m gfm_jax.train --config configs/pretrain/tiny_bpe.py --workdir runs/tiny_bpe

A 1024-token vocabulary trained on the training segments at start (a few seconds; saved as
<workdir>/tokenizer.json), windows of 128 tokens, global batch 64; repeats (soft-masked bases)
count half in the loss. Smoke mode: `configs/pretrain/tiny_bpe.py:smoke`.
"""

from gfm_jax.config import apply_smoke_mode, check_mode, pretrain_defaults


def get_config(mode: str = "default"):
    c = pretrain_defaults()
    c.data.tokenizer = "bpe"
    c.data.bpe_vocab_size = 1024
    c.data.window_tokens = 128
    c.data.repeat_weight = 0.5
    c.train.global_batch_size = 64
    c.train.num_steps = 300
    c.train.log_every = 20
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
    c.train.eval_batches = 4
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 20
    return apply_smoke_mode(c) if check_mode(mode) == "smoke" else c
