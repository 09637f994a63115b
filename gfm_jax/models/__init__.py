"""Flax Linen encoders for genomic sequences; every parameter carries logical axis names."""
