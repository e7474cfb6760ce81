"""Training: optimizer, state, the jitted step, checkpoints."""
