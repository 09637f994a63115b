"""Evaluation entry points that restore parameters only (no optimizer state)."""
