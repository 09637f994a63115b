"""Pretrain the tiny preset on the built-in genomes (what `make quickstart` runs).

    python -m gfm_jax.train --config configs/pretrain/tiny.py --workdir runs/tiny

About 0.46M parameters, 128-base windows, global batch 64: about 2.5 minutes on 2 CPU cores.
Smoke mode (a few steps, for checking a setup): `configs/pretrain/tiny.py:smoke`.
"""

from gfm_jax.config import apply_smoke_mode, check_mode, pretrain_defaults


def get_config(mode: str = "default"):
    c = pretrain_defaults()
    c.data.window_len = 128
    c.train.global_batch_size = 64
    c.train.num_steps = 120
    c.train.log_every = 20
    c.train.eval_every = 60
    c.train.checkpoint_every = 60
    c.train.eval_batches = 4
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 20
    return apply_smoke_mode(c) if check_mode(mode) == "smoke" else c
