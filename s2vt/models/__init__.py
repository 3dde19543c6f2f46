"""The captioning networks (S2VT, soft attention), their registry and the checkpoint that rebuilds them."""
