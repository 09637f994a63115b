"""gfm_jax: sharded pretraining and reproducible evaluation of genomic foundation models."""

__version__ = "0.1.0"
