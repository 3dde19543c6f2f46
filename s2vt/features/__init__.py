"""Frame features: backbones, the extraction pipeline, the HDF5 store and its signature, import and export."""
