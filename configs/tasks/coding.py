"""Fine-tune on the built-in coding-or-intergenic task (2 classes, 100-base windows, either strand).

    python -m gfm_jax.evaluate finetune --config configs/tasks/coding.py --workdir runs/tiny
    python -m gfm_jax.evaluate finetune --config configs/tasks/coding.py --workdir runs/tiny \
        --model cnn
    python -m gfm_jax.evaluate probe --config configs/tasks/coding.py --workdir runs/tiny

Whether a window of the A. thaliana chloroplast lies inside a CDS or between genes, labelled from
the genome's GenBank annotation (scripts/make_coding_task.py; see builtin_files/PROVENANCE.md).
Classes and strands are balanced in every split; the second copy of the inverted repeat is
dropped. The file's split column decides the splits: contiguous blocks along the genome, 426
train / 80 val / 70 test rows. The label does not depend on the strand (task.stranded = False).
Smoke mode: `configs/tasks/coding.py:smoke`.
"""

from gfm_jax.config import check_mode, finetune_defaults


def get_config(mode: str = "default"):
    c = finetune_defaults()
    c.task.name = "coding"
    c.task.path = "builtin:coding.csv"
    c.task.kind = "classification"
    c.task.train_rows = ()  # no row ranges: the `split` column decides
    c.task.test_rows = ()
    c.task.stranded = False  # a CDS read on either strand is coding
    c.finetune.epochs = 4
    c.finetune.batch_size = 32
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 10
    # Codon statistics, not a position, tell coding DNA: the CNN pools over positions.
    c.cnn.pooling = "meanmax"
    if check_mode(mode) == "smoke":
        c.finetune.epochs = 1
        c.seeds = (0,)
    return c
