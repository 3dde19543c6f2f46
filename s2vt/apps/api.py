"""The Python API: the jobs of the command line as functions, for notebooks and scripts.

    import s2vt
    caps = s2vt.caption_videos(["a.mp4", "b.mp4"], checkpoint="runs/rgb/best.pt")   # {path: caption}
    caps.failed                                                                     # {path: reason}

Each function takes the options of its command as keyword arguments (the fields of
:class:`s2vt.features.extract.ExtractConfig` and :class:`s2vt.decoding.search.DecodeConfig`), checked the same
way; errors are :class:`s2vt.runtime.errors.S2VTError` with the message the command prints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from s2vt.captioning.videos import video_captioner
from s2vt.features.signature import STREAMS
from s2vt.runtime.devices import resolve as resolve_device
from s2vt.runtime.errors import S2VTError
from s2vt.video.reader import VideoError

PathLike = Union[str, Path]


def load_checkpoint(path: PathLike):
    """The :class:`s2vt.models.checkpoint.Checkpoint` in ``path`` (model config and weights, vocabulary,
    feature signature, decoding defaults, training config); ``.build_model()`` gives the model."""
    from s2vt.models.checkpoint import Checkpoint

    return Checkpoint.load(_path(path, "path"))


class Captions(dict):
    """{path: caption} of the videos that were captioned, and ``failed``: {path: reason} of those that
    could not be (unreadable, missing, no frame decoded). ``captions`` is the dict itself."""

    def __init__(self, captions: Dict[str, str], failed: Dict[str, str]):
        super().__init__(captions)
        self.failed = failed

    @property
    def captions(self) -> Dict[str, str]:
        return dict(self)


def _paths(videos, what: str) -> List[str]:
    """One path or a sequence of paths, as strings; S2VTError naming ``what`` for anything else."""
    if isinstance(videos, (str, Path)):
        return [str(videos)]
    if not isinstance(videos, (list, tuple)) or not all(isinstance(v, (str, Path)) for v in videos):
        raise S2VTError(f"{what} must be a path (str or pathlib.Path) or a list of paths, "
                        f"not {type(videos).__name__}")
    return [str(v) for v in videos]


def _path_or_none(value, what: str) -> Optional[str]:
    if value is not None and not isinstance(value, (str, Path)):
        raise S2VTError(f"{what} must be a path (str or pathlib.Path), not {type(value).__name__}")
    return None if value is None else str(value)


def _path(value, what: str) -> str:
    """A path that must be given, as a string; S2VTError naming ``what`` for None or anything else."""
    if value is None:
        raise S2VTError(f"{what} must be a path (str or pathlib.Path), not None")
    return _path_or_none(value, what)


def _no_flow(given: dict, what: str) -> None:
    """Refuse options that weigh or feed a flow model (``given``: {name: value}) when there is none."""
    named = [k for k, v in given.items() if v is not None]
    if named:
        raise S2VTError(f"{' and '.join(named)} {'are' if len(named) > 1 else 'is'} for fusion with a flow model: "
                        f"give {what}, or leave {'them' if len(named) > 1 else 'it'} out")


def caption_videos(videos: Union[PathLike, Sequence[PathLike]], checkpoint: PathLike,
                   checkpoint_flow: Optional[PathLike] = None, device: str = "cpu",
                   weights: Optional[PathLike] = None, weights_flow: Optional[PathLike] = None,
                   **decoding) -> Captions:
    """Captions of raw video files (one path or a list), features computed as the checkpoint's
    training features were. Returns :class:`Captions`: {path: caption} for the videos captioned, and
    ``.failed`` {path: reason} for the rest; one bad file never loses the others.

    ``checkpoint_flow``: a flow model fused with weight 1 - alpha; ``weights``/``weights_flow``: CNN
    weight files when not the offline default; ``decoding``: beam, max_len, len_penalty, alpha
    (default: the checkpoint's; alpha 0.5)."""
    keys = _paths(videos, "videos")
    cks = [_path(checkpoint, "checkpoint")] + ([_path_or_none(checkpoint_flow, "checkpoint_flow")]
                                               if checkpoint_flow is not None else [])
    cnn = [_path_or_none(weights, "weights")] + ([_path_or_none(weights_flow, "weights_flow")] if checkpoint_flow else [])
    if not checkpoint_flow:
        _no_flow({"alpha": decoding.get("alpha"), "weights_flow": weights_flow}, "checkpoint_flow")
    resolve_device(device, "device")  # a device name this machine has, checked before any model loads
    cap = video_captioner(cks, cnn, device=device, streams=list(STREAMS) if checkpoint_flow else None)
    dec = cap.decoding.given(**decoding)  # a flow model is fused by the decoding's alpha
    done, failed = {}, {}
    for key in keys:
        try:
            done.update(cap.caption([key], decoding=dec))
        except (VideoError, S2VTError) as e:
            failed[key] = str(e)
    return Captions(done, failed)


def extract_features(videos: Union[PathLike, Sequence[PathLike]], out: PathLike, device: str = "cpu",
                     progress: bool = False, **options):
    """Extract features of video files (or every video under a folder) into the HDF5 store ``out``;
    resumes when it exists. ``options``: ExtractConfig fields (stream, cnn, stride, ...). Returns the
    summary (``.done``, ``.failed``: {id: reason})."""
    from s2vt.features.extract import extract, unique_items, video_items
    from s2vt.features.config import ExtractConfig

    paths, out = _paths(videos, "videos"), _path(out, "out")  # every argument checked before any folder is read
    resolve_device(device, "device")
    return extract(unique_items(video_items(paths)), Path(out), ExtractConfig(**options, device=device),
                   progress=progress)


def evaluate_split(checkpoint: PathLike, features: PathLike, dataset: str, annotations: PathLike,
                   split: str = "test", checkpoint_flow: Optional[PathLike] = None,
                   features_flow: Optional[PathLike] = None, device: str = "cpu", **decoding) -> dict:
    """Caption ``split`` from feature stores and score it (METEOR needs Java): the dict ``s2vt
    evaluate`` writes (``metrics`` as fractions, per-video captions and scores, the decoding).
    With a flow model, alpha is tuned on val with the same decoding unless given."""
    from s2vt.captioning.captioner import Captioner, Member
    from s2vt.evaluation.evaluate import evaluate_captioner
    from s2vt.evaluation.metrics import shared_meteor

    if (checkpoint_flow is None) != (features_flow is None):
        raise S2VTError("checkpoint_flow and features_flow come together: the flow model and the flow store its "
                        "captions are made from; give both or neither")
    if checkpoint_flow is None:
        _no_flow({"alpha": decoding.get("alpha")}, "checkpoint_flow and features_flow")
    members = [Member(_path(checkpoint, "checkpoint"), _path(features, "features"))]
    if checkpoint_flow is not None:
        members.append(Member(_path(checkpoint_flow, "checkpoint_flow"), _path(features_flow, "features_flow")))
    annotations = _path(annotations, "annotations")
    for what, value in (("dataset", dataset), ("split", split)):
        if not isinstance(value, str):
            raise S2VTError(f"{what} must be a str (a dataset name such as 'msvd', a split such as 'test'), "
                            f"not {type(value).__name__}")
    resolve_device(device, "device")
    cap = Captioner.from_members(members, device, streams=list(STREAMS) if checkpoint_flow else None)
    r = evaluate_captioner(cap, dataset, annotations, split, cap.decoding.given(**decoding), shared_meteor())
    r.update(checkpoints=[m.checkpoint for m in members], features=[m.features for m in members])
    return r
