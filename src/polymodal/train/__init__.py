"""Training: the loop, checkpoints, optimisation and distributed helpers."""
