"""Captions for stored features or raw video files, from one or two checkpoints."""
