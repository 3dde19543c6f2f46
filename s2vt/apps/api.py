"""The Python API: the jobs of the command line as functions, for notebooks and scripts.

    import s2vt
    caps = s2vt.caption_videos(["a.mp4"], checkpoint="runs/rgb/best.pt")   # {path: caption}

Each function takes the options of its command as keyword arguments (the fields of
:class:`s2vt.features.extract.ExtractConfig` and :class:`s2vt.decoding.search.DecodeConfig`), checked the same
way; errors are :class:`s2vt.runtime.errors.S2VTError` with the message the command prints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Union

PathLike = Union[str, Path]


def load_checkpoint(path: PathLike):
    """The :class:`s2vt.models.checkpoint.Checkpoint` in ``path`` (model config and weights, vocabulary,
    feature signature, decoding defaults, training config); ``.build_model()`` gives the model."""
    from s2vt.models.checkpoint import Checkpoint

    return Checkpoint.load(path)


def caption_videos(videos: Sequence[PathLike], checkpoint: PathLike, checkpoint_flow: Optional[PathLike] = None,
                   device: str = "cpu", weights: Optional[PathLike] = None, weights_flow: Optional[PathLike] = None,
                   **decoding) -> Dict[str, str]:
    """{path: caption} of raw video files, features computed as the checkpoint's training features were.

    ``checkpoint_flow``: a flow model fused with weight 1 - alpha; ``weights``/``weights_flow``: CNN
    weight files when not the offline default; ``decoding``: beam, max_len, len_penalty, alpha
    (default: the checkpoint's; alpha 0.5)."""
    from s2vt.captioning.videos import video_captioner

    cks = [str(checkpoint)] + ([str(checkpoint_flow)] if checkpoint_flow else [])
    cnn = [weights] + ([weights_flow] if checkpoint_flow else [])
    cap = video_captioner(cks, [str(w) if w else None for w in cnn], device=device,
                          streams=["rgb", "flow"] if checkpoint_flow else None)
    keys = [str(v) for v in videos]
    return cap.caption(keys, decoding=cap.decoding.given(**decoding))  # a flow model fused by the decoding's alpha


def extract_features(videos: Union[PathLike, Sequence[PathLike]], out: PathLike, device: str = "cpu",
                     progress: bool = False, **options):
    """Extract features of video files (or every video under a folder) into the HDF5 store ``out``;
    resumes when it exists. ``options``: ExtractConfig fields (stream, cnn, stride, ...). Returns the
    summary (``.done``, ``.failed``: {id: reason})."""
    from s2vt.features.extract import extract, unique_items, video_items
    from s2vt.features.config import ExtractConfig

    items = unique_items(video_items([videos] if isinstance(videos, (str, Path)) else list(videos)))
    return extract(items, Path(out), ExtractConfig(**options, device=device), progress=progress)


def evaluate_split(checkpoint: PathLike, features: PathLike, dataset: str, annotations: PathLike,
                   split: str = "test", checkpoint_flow: Optional[PathLike] = None,
                   features_flow: Optional[PathLike] = None, device: str = "cpu", **decoding) -> dict:
    """Caption ``split`` from feature stores and score it (METEOR needs Java): the dict ``s2vt
    evaluate`` writes (``metrics`` as fractions, per-video captions and scores, the decoding).
    With a flow model, alpha is tuned on val with the same decoding unless given."""
    from s2vt.captioning.captioner import Captioner, Member
    from s2vt.evaluation.evaluate import evaluate_captioner
    from s2vt.evaluation.metrics import Meteor

    members = [Member(str(checkpoint), str(features))]
    if checkpoint_flow:
        members.append(Member(str(checkpoint_flow), str(features_flow)))
    cap = Captioner.from_members(members, device, streams=["rgb", "flow"] if checkpoint_flow else None)
    with Meteor() as meteor:
        r = evaluate_captioner(cap, dataset, annotations, split, cap.decoding.given(**decoding), meteor)
    r.update(checkpoints=[m.checkpoint for m in members], features=[m.features for m in members])
    return r
