"""The tiny preset on long windows, with a sequence-length warm-up (as HyenaDNA trains).

    python -m gfm_jax.train --config configs/pretrain/long_context.py --workdir runs/long \
        --config.data.genomes="('human_b37_chr20_10000001-63025520.fa.gz',)"

Steps 1-400 on 256-base windows, 401-600 on 1,024, then 2,048 to step 800 (char tokens, batch
8); held-out windows are 2,048 bases. On a pod, `--config.mesh.shape="(-1,1,1,8)"` shards
each window over 8 devices and `data.window_len` can grow to 1 Mb (docs/long_context.md).
experiments/long_context/ scores it at 128 bases to 16 kb. Smoke mode:
`configs/pretrain/long_context.py:smoke`.
"""

from gfm_jax.config import apply_smoke_mode, check_mode, pretrain_defaults


def get_config(mode: str = "default"):
    c = pretrain_defaults()
    c.data.window_len = 2048
    c.data.length_warmup = ((400, 256), (600, 1024))
    c.train.global_batch_size = 8
    c.train.num_steps = 800
    c.train.log_every = 50
    c.train.eval_every = 200
    c.train.checkpoint_every = 200
    c.train.eval_batches = 4
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 50
    return apply_smoke_mode(c) if check_mode(mode) == "smoke" else c
