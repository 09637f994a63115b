"""GUE (DNABERT-2's Genome Understanding Evaluation): 28 tasks, train / dev / test CSVs.

    python -m gfm_jax.evaluate suite --config configs/suites/gue.py --workdir runs/tiny \
        --config.suite.root=/data/GUE --models pretrained,cnn

Layout under suite.root: <group>/<task>/{train,dev,test}.csv, columns sequence,label
(docs/evaluation.md). dev.csv is the validation split; labels are class indices.
"""

from gfm_jax.evaluate.suites import suite_config

TASKS = (
    *(f"EMP/{m}" for m in ("H3", "H3K14ac", "H3K36me3", "H3K4me1", "H3K4me2", "H3K4me3",
                           "H3K79me3", "H3K9ac", "H4", "H4ac")),
    *(f"mouse/{i}" for i in range(5)),
    *(f"prom/prom_{p}" for p in ("300_all", "300_notata", "300_tata", "core_all",
                                 "core_notata", "core_tata")),
    "splice/reconstructed",
    *(f"tf/{i}" for i in range(5)),
    "virus/covid",
)  # fmt: skip


def get_config():
    c = suite_config("gue", "csv_dir", TASKS)
    c.finetune.epochs = 3
    c.finetune.batch_size = 32
    return c
