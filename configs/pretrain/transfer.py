"""The transfer recipe: pretrain the tiny encoder on the built-in genomes plus human DNA.

    python -m gfm_jax.train --config configs/pretrain/transfer.py --workdir runs/transfer \
        --config.data.genomes="('builtin', 'PATH/human_b37_chr20_10000001-63025520.fa.gz')"

The CPU recipe (default): the tiny preset (0.46M parameters), 128-base windows, batch 64, 2,000
steps, about 15 minutes on 2 CPU cores. `:gpu` is the same family sized for about 10 minutes on
one GPU (8 layers of width 256, batch 256, 512-base windows, 6,000 steps, bfloat16). Without the
chr20 file (docs/evaluation.md says where to get it) it pretrains on the built-in genomes only.
The downstream recipe and the ablations that chose it: experiments/transfer/README.md.
"""

from gfm_jax.config import check_mode, pretrain_defaults


def get_config(mode: str = "default"):
    c = pretrain_defaults()
    c.data.window_len = 128
    c.train.global_batch_size = 64
    c.train.num_steps = 2000
    c.train.log_every = 100
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.train.eval_batches = 4
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 100
    if check_mode(mode, ("default", "gpu")) == "gpu":
        c.model.num_layers = 8
        c.model.hidden_size = 256
        c.model.num_heads = 8
        c.model.mlp_dim = 1024
        c.model.dtype = "bfloat16"
        c.data.window_len = 512
        c.train.global_batch_size = 256
        c.train.num_steps = 6000
        c.optim.learning_rate = 1e-3
        c.optim.warmup_steps = 300
    return c
