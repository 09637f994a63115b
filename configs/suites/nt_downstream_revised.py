"""Nucleotide Transformer downstream tasks, revised set (18 tasks), as CSV files per task.

    python -m gfm_jax.evaluate suite --config configs/suites/nt_downstream_revised.py \
        --workdir runs/tiny --config.suite.root=/data/nt_downstream_revised

Layout under suite.root: <task>/{train,test}.csv with columns sequence,label (the hub dataset
written per task with `datasets`' to_csv; docs/evaluation.md). 10% of train is held out for
validation (split_seed 0).
"""

from gfm_jax.evaluate.suites import suite_config

TASKS = (
    "promoter_all", "promoter_tata", "promoter_no_tata", "enhancers", "enhancers_types",
    "splice_sites_all", "splice_sites_acceptors", "splice_sites_donors", "H2AFZ", "H3K27ac",
    "H3K27me3", "H3K36me3", "H3K4me1", "H3K4me2", "H3K4me3", "H3K9ac", "H3K9me3", "H4K20me1",
)  # fmt: skip


def get_config():
    c = suite_config("nt_downstream_revised", "csv_dir", TASKS)
    c.finetune.epochs = 3
    c.finetune.batch_size = 32
    return c
