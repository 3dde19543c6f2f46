"""Programs built on the layers: the Python API, the demo, the studies and the GPU check."""
