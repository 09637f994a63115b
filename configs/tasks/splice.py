"""Fine-tune on the built-in primate splice-junction task (3 classes: EI, IE, N).

    python -m gfm_jax.evaluate finetune --config configs/tasks/splice.py --workdir runs/tiny
    python -m gfm_jax.evaluate finetune --config configs/tasks/splice.py --workdir runs/tiny \
        --model cnn
    python -m gfm_jax.evaluate probe --config configs/tasks/splice.py --workdir runs/tiny

StatLog split: rows 1-2000 train, rows 2001-3186 test. Duplicate training rows are kept once and
test rows whose sequence occurs in the training rows are dropped; 10% of the training rows
(fixed by task.split_seed) choose the epoch. Three seeds by default (mean +- sd in the summary).
"""

from gfm_jax.config import check_mode, finetune_defaults


def get_config(mode: str = "default"):
    c = finetune_defaults()
    c.task.name = "splice"
    c.task.train_rows = (0, 2000)  # StatLog's training file
    c.task.test_rows = (2000, 3186)  # StatLog's test file
    c.finetune.epochs = 4
    c.finetune.batch_size = 64
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 10
    # Fixed-length windows with the junction mid-window: the CNN keeps positions (flatten).
    c.cnn.pooling = "flatten"
    if check_mode(mode) == "smoke":
        c.finetune.epochs = 1
        c.seeds = (0,)
    return c
