"""Pretraining on pods and GPU clusters: the runs docs/scaling.md plans, about 300B tokens each.

    python -m gfm_jax.train --config configs/pretrain/scale.py:nt_v2_500m --workdir DIR \
        --config.data.genomes="('GENOME_1.fa.gz', 'GENOME_2.fa.gz')"

Modes: `nt_v2_500m` (1,024 tokens x 512 windows per step), `nt_v2_500m_12k` (12,288 tokens x 64),
`nt_v1_2500m` (1,000 tokens x 512). NT 6-mer tokens, bfloat16, scanned layers, full FSDP; the
remat and micro-batches here are what `scripts/plan_scale.py` found to fit a TPU v5p-64
(docs/scaling.md gives them per target: set --config.mesh.shape, --config.model.remat,
--config.train.micro_batches). Launch it with scripts/launch_tpu_pod.sh or
scripts/launch_slurm.sh; without --config.data.genomes it reads the built-in genomes only.
"""

from gfm_jax.config import check_mode, pretrain_defaults
from gfm_jax.models import presets

TOKENS = 300e9
# mode -> (preset, positions per window with CLS, global batch, remat, micro-batches)
RUNS = {
    "nt_v2_500m": ("nt_v2_500m", 1024, 512, "none", 1),
    "nt_v2_500m_12k": ("nt_v2_500m", 12288, 64, "none", 1),
    "nt_v1_2500m": ("nt_v1_2500m", 1000, 512, "none", 2),
}


def get_config(mode: str = "nt_v2_500m"):
    preset, tokens, batch, remat, micro_batches = RUNS[check_mode(mode, tuple(RUNS))]
    c = pretrain_defaults()
    c.model = presets.get(preset)
    c.model.dtype = "bfloat16"
    c.model.scan_layers = True
    c.model.remat = remat
    c.mesh.shape = (1, -1, 1, 1)  # FSDP over every device
    c.data.tokenizer = "nt6"
    c.data.window_tokens = tokens - 1
    c.train.global_batch_size = batch
    c.train.micro_batches = micro_batches
    c.train.num_steps = int(TOKENS // (tokens * batch))
    c.train.log_every = 100
    c.train.eval_every = 5000
    c.train.checkpoint_every = 1000
    # Nucleotide Transformer's schedule: 16k warm-up steps to 1e-4, then inverse square root.
    c.optim.learning_rate = 1e-4
    c.optim.warmup_steps = 16000
    c.optim.schedule = "inv_sqrt"
    return c
