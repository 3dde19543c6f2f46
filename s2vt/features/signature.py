"""What a feature store's signature and groups must hold (``features/README.md``). The groups
and datasets are checked when a store is opened; the signature's keys when training starts
(so every checkpoint has them) and when a checkpoint is used, so no later step meets a
missing key.

Every store's signature has ``format_version``, ``stream``, ``backbone`` and ``dim``. A store
written by ``s2vt extract`` also records how to recompute its features (``layer``,
``weights_digest``, ``preprocess``, ``sampling``, ``precision``, and ``flow`` for the flow
stream); a store written by ``s2vt import-features`` (``backbone: "imported:NAME"``) cannot be
recomputed and records none of these.
"""
from __future__ import annotations

from typing import Optional

IMPORTED = "imported:"
STREAMS = ("rgb", "flow")  # what a store holds: features of RGB frames or of optical-flow images
# key -> (type(s), meaning) for every store
COMMON = {"format_version": (int, "1"), "stream": (str, "rgb or flow"), "backbone": (str, "e.g. efficientnet_lite0"),
          "dim": (int, "the feature dimension D")}
# keys of stores whose features `s2vt extract` / `s2vt caption` can recompute
EXTRACTED = {"layer": (str, "e.g. pool"), "weights_digest": (str, "16 hex digits"),
             "preprocess": (dict, "size, crop_ratio, mean, std"),
             "sampling": (dict, "stride, num_frames, max_frames, short_side"), "precision": (str, "fp32 or bf16")}
SUBKEYS = {"preprocess": ("size", "crop_ratio", "mean", "std"),
           "sampling": ("stride", "num_frames", "max_frames", "short_side"), "flow": ("method", "scale", "offset")}


def is_imported(sig: dict) -> bool:
    """True for features made elsewhere (``s2vt import-features``): they cannot be recomputed."""
    return str(sig.get("backbone", "")).startswith(IMPORTED)


def _type_name(t) -> str:
    return {int: "an integer", str: "a string", dict: "an object"}[t]


def signature_problem(sig: dict) -> Optional[str]:
    """What the signature ``sig`` lacks or holds wrongly, or None when it is complete."""
    want = dict(COMMON)
    if not is_imported(sig):
        want.update(EXTRACTED)
        if sig.get("stream") == "flow":
            want["flow"] = (dict, "method, scale, offset")
    for key, (typ, meaning) in want.items():
        if key not in sig:
            return f"its signature has no {key!r} key ({_type_name(typ)}: {meaning})"
        v = sig[key]
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            return f"its signature's {key!r} must be {_type_name(typ)} ({meaning}), not {v!r}"
        for sub in SUBKEYS.get(key, ()):
            if sub not in v:
                return f"its signature's {key!r} has no {sub!r} key ({meaning})"
    if sig["stream"] not in STREAMS:
        return f"its signature's 'stream' must be {' or '.join(STREAMS)}, not {sig['stream']!r}"
    if sig["dim"] < 1:
        return f"its signature's 'dim' must be >= 1, not {sig['dim']}"
    return None


def check_complete(sig: dict, what) -> None:
    """S2VTError naming ``what`` (a store or checkpoint) when its signature lacks a key training,
    evaluation or captioning will need (see ``signature_problem``)."""
    from s2vt.runtime.errors import S2VTError

    problem = signature_problem(sig)
    if problem:
        raise S2VTError(f"{what}: {problem}; see the signature table of features/README.md")


def video_problem(group, vid: str, dim: Optional[int]) -> Optional[str]:
    """What the HDF5 group ``/videos/<vid>`` lacks, or None (reads shapes only)."""
    import h5py

    f, idx = group.get("features"), group.get("frame_indices")
    if not isinstance(f, h5py.Dataset):
        return f"/videos/{vid} has no 'features' dataset (T, D)"
    if len(f.shape) != 2 or (isinstance(dim, int) and f.shape[1] != dim) or f.shape[0] < 1:
        return f"/videos/{vid}/features has shape {f.shape}, not (T >= 1, {dim or 'D'}) as the signature's dim says"
    if f.dtype.kind != "f":
        return f"/videos/{vid}/features is {f.dtype}, not floating point"
    if not isinstance(idx, h5py.Dataset) or idx.shape != (f.shape[0],):
        return f"/videos/{vid} has no 'frame_indices' dataset of {f.shape[0]} integers (one per row)"
    return None
