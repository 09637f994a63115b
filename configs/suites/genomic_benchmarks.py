"""Genomic Benchmarks (Gresova et al. 2023): 8 classification data sets, one file per sequence.

    python -m gfm_jax.evaluate suite --config configs/suites/genomic_benchmarks.py \
        --workdir runs/tiny --config.suite.root=~/.genomic_benchmarks

Layout under suite.root: <dataset>/{train,test}/<class>/*.txt, one sequence per file (what the
genomic-benchmarks package downloads; docs/evaluation.md). 10% of train is held out for
validation (split_seed 0).
"""

from gfm_jax.evaluate.suites import suite_config

TASKS = (
    "demo_coding_vs_intergenomic_seqs", "demo_human_or_worm", "dummy_mouse_enhancers_ensembl",
    "human_enhancers_cohn", "human_enhancers_ensembl", "human_ensembl_regulatory",
    "human_nontata_promoters", "human_ocr_ensembl",
)  # fmt: skip


def get_config():
    c = suite_config("genomic_benchmarks", "class_dirs", TASKS)
    c.finetune.epochs = 3
    c.finetune.batch_size = 32
    return c
