"""Fine-tune on the built-in species-of-origin task (4 classes, 200-base windows, either strand).

    python -m gfm_jax.evaluate finetune --config configs/tasks/species.py --workdir runs/tiny
    python -m gfm_jax.evaluate finetune --config configs/tasks/species.py --workdir runs/tiny \
        --model cnn
    python -m gfm_jax.evaluate probe --config configs/tasks/species.py --workdir runs/tiny

Which built-in genome a window comes from: lambda_phage, yeast, arabidopsis_chloroplast or human
(200 windows each, built by scripts/make_species_task.py; see builtin_files/PROVENANCE.md).
Half of the windows of every genome and split are reverse-complemented, so the label does not
depend on the strand (task.stranded = False). The file's split column decides the splits:
contiguous blocks along each genome, 536 train / 136 val / 128 test rows. Three seeds by default
(mean +- sd in the summary). Smoke mode: `configs/tasks/species.py:smoke`.
"""

from gfm_jax.config import check_mode, finetune_defaults


def get_config(mode: str = "default"):
    c = finetune_defaults()
    c.task.name = "species"
    c.task.path = "builtin:species.csv"
    c.task.kind = "classification"
    c.task.train_rows = ()  # no row ranges: the `split` column decides
    c.task.test_rows = ()
    c.task.stranded = False  # a window and its reverse complement have the same label
    c.finetune.epochs = 4
    c.finetune.batch_size = 32
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 10
    # Composition, not position, tells the genomes apart: the CNN pools over positions.
    c.cnn.pooling = "meanmax"
    if check_mode(mode) == "smoke":
        c.finetune.epochs = 1
        c.seeds = (0,)
    return c
