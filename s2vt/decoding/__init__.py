"""Search over a model's encode/step/reorder_state interface: greedy, beam, and RGB+flow fusion."""
