"""Pretraining: state, optimizer, losses, the pure train step, and the loop."""
