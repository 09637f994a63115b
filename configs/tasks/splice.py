"""Fine-tune on the built-in primate splice-junction task (3 classes: EI, IE, N).

    python -m gfm_jax.evaluate finetune --config configs/tasks/splice.py --workdir runs/tiny
    python -m gfm_jax.evaluate finetune --config configs/tasks/splice.py --workdir runs/tiny \
        --init scratch

StatLog split: rows 1-2000 train (10% of them held out for choosing the epoch), rows 2001-3186
test, test rows whose sequence occurs in the training rows dropped.
"""

from gfm_jax.config import finetune_defaults


def get_config(mode: str = "default"):
    c = finetune_defaults()
    c.finetune.epochs = 4
    c.finetune.batch_size = 64
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 10
    if mode == "smoke":
        c.finetune.epochs = 1
    return c
