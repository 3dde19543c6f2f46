"""s2vt: S2VT video captioning (Venugopalan et al., ICCV 2015) on PyTorch."""

__version__ = "0.1.0"
