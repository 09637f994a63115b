"""Nucleotide Transformer downstream tasks (the original 18), as on the Hugging Face hub.

    python -m gfm_jax.evaluate suite --config configs/suites/nt_downstream.py \
        --workdir runs/tiny --config.suite.root=/data/nucleotide_transformer_downstream_tasks

Layout under suite.root: <task>/{train,test}.fna, FASTA headers ending in '|<label>'
(docs/evaluation.md). There is no validation file: 10% of train is held out (split_seed 0).
"""

from gfm_jax.evaluate.suites import suite_config

TASKS = (
    "H3", "H3K14ac", "H3K36me3", "H3K4me1", "H3K4me2", "H3K4me3", "H3K79me3", "H3K9ac", "H4",
    "H4ac", "enhancers", "enhancers_types", "promoter_all", "promoter_no_tata", "promoter_tata",
    "splice_sites_acceptors", "splice_sites_all", "splice_sites_donors",
)  # fmt: skip


def get_config():
    c = suite_config("nt_downstream", "fasta_dir", TASKS)
    c.finetune.epochs = 3
    c.finetune.batch_size = 32
    return c
