"""Training infrastructure: the loop and its hooks, acting and episode bookkeeping, replay, checkpoint state."""
