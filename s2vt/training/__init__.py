"""The training loop, the feature bank and batches, and the objectives (cross-entropy, SCST)."""
