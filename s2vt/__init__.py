"""s2vt: S2VT video captioning (Venugopalan et al., ICCV 2015) on PyTorch.

    import s2vt
    s2vt.caption_videos(["a.mp4"], checkpoint="runs/rgb/best.pt")   # {path: caption}

The functions are those of :mod:`s2vt.apps.api`; importing the package loads no model code.
"""

__version__ = "0.1.0"
__all__ = ["caption_videos", "load_checkpoint", "extract_features", "evaluate_split", "__version__"]


def __getattr__(name):  # the API is imported on first use: `import s2vt` stays fast
    if name in __all__[:-1]:
        from s2vt.apps import api

        return getattr(api, name)
    raise AttributeError(f"module 's2vt' has no attribute {name!r}")
