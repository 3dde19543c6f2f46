"""Caption raw video files: a feature source that extracts features exactly as the
checkpoint's training features were extracted (backbone, weights, preprocessing,
sampling, flow), used by the one :class:`s2vt.captioning.captioner.Captioner`.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np
import torch

from s2vt.captioning.captioner import Captioner, load_checkpoints
from s2vt.features.backbones.registry import backbone_spec
from s2vt.features.backbones.spec import Preprocess
from s2vt.features.config import ExtractConfig
from s2vt.features.frames import cap_frames
from s2vt.features.pipeline import cnn_features, video_images
from s2vt.features.raft import LEARNED
from s2vt.features.signature import IMPORTED, check_complete, is_imported
from s2vt.models.checkpoint import Checkpoint
from s2vt.runtime.devices import configure
from s2vt.runtime.errors import S2VTError, SignatureMismatch


class VideoFeatures:
    """A feature source over raw video files: ``path -> (T, D)`` features computed exactly as the
    checkpoint's training features were (backbone, weights, preprocessing, sampling, flow), capped
    to the model's ``max_frames``."""

    def __init__(self, ck: Checkpoint, cnn_weights: Optional[str] = None, device="cpu", label: str = "checkpoint",
                 download: bool = False, flow_weights: Optional[str] = None, cnn: Optional[str] = None,
                 layer: Optional[str] = None, accept_different: bool = False):
        sig = ck.feature_signature
        check_complete(sig, label)
        self.max_frames = ck.max_frames
        if is_imported(sig):
            self._imported(sig, label, ExtractConfig(stream=sig["stream"], cnn=cnn, layer=layer, weights=cnn_weights,
                                                     device=str(device), download=download) if cnn else None,
                           accept_different)
            return
        if cnn is not None:
            raise S2VTError(f"--cnn is for models trained on imported features; {label} records how its features "
                            "were computed, and they are computed so")
        self.cfg, self.device = ExtractConfig.from_signature(sig, cnn_weights, str(device), download,
                                                                flow_weights).on_device()
        configure(self.device, fp32=self.cfg.precision == "fp32")  # the features as extraction computed them
        pre = Preprocess.from_dict(sig["preprocess"])
        self.backbone = self.cfg.network(pre).to(self.device)
        if self.backbone.weights_digest != sig["weights_digest"]:
            raise SignatureMismatch(f"{label} was trained on features from {self.cfg.cnn} weights with digest "
                                    f"{sig['weights_digest']}, but the weights found have digest "
                                    f"{self.backbone.weights_digest}; pass the right file with --weights")
        if self.cfg.learned_flow():
            want, have = sig["flow"].get("weights_digest"), self.backbone.flow.weights_digest
            if want != have:
                raise SignatureMismatch(f"{label} was trained on {self.cfg.flow_method} flow from weights with digest "
                                        f"{want}, but the weights found have digest {have}; pass the right file "
                                        "with --flow-weights")

    def _imported(self, sig: dict, label: str, cfg: Optional[ExtractConfig], accept_different: bool) -> None:
        """Features imported from elsewhere cannot be recomputed; ``--cnn`` (``cfg``) names a backbone
        that stands in for them, accepted when its feature width is the recorded one and the user has
        accepted that its features may differ (``accept_different``; said in one line either way)."""
        name = sig["backbone"][len(IMPORTED):]
        if cfg is None:
            raise S2VTError(f"{label} was trained on features imported as {name!r} (s2vt import-features): they "
                            "cannot be recomputed from a video file; caption them from their store with `s2vt "
                            f"evaluate`, or name a backbone that computes the same features with --cnn (and --layer)")
        spec = backbone_spec(cfg.cnn)
        layer = cfg.layer or spec.default_layer
        if spec.layers[layer] != sig["dim"]:
            raise SignatureMismatch(f"--cnn {cfg.cnn} gives {spec.layers[layer]}-d features ({layer}), "
                                    f"but {label} was trained on {sig['dim']}-d features imported as {name!r}")
        line = stand_in_line(cfg, layer, self.max_frames, name)
        if not accept_different:
            raise S2VTError(f"{line}; pass --accept-different-features to caption with them anyway")
        warnings.warn(line, stacklevel=3)
        self.cfg, self.device = cfg.on_device()
        self.backbone = cfg.network().to(self.device)

    @torch.inference_mode()
    def __call__(self, path, chunk: int = 64) -> torch.Tensor:
        """(T, D) features of one video, computed in chunks (bounded memory)."""
        feats, batch = [], []
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")
        for _, img in video_images(path, self.cfg, self.backbone.preprocess, {}):
            batch.append(img)
            if len(batch) == chunk:
                feats.append(cnn_features(self.backbone, torch.from_numpy(np.stack(batch)).to(self.device), autocast))
                batch = []
        if batch:
            feats.append(cnn_features(self.backbone, torch.from_numpy(np.stack(batch)).to(self.device), autocast))
        if not feats:
            raise S2VTError(f"{path}: no frame could be sampled")
        f = torch.cat(feats)
        return f[torch.from_numpy(cap_frames(len(f), self.max_frames)).to(f.device)].cpu()


def stand_in_line(cfg: ExtractConfig, layer: str, max_frames: int, name: str) -> str:
    """What ``caption --cnn`` computes for a model trained on imported features, and how that may differ
    from them, in one line."""
    pre = cfg.preprocess()
    how = (f"{pre.method} resize to a {pre.resize_side()}-pixel short side"
           f"{'' if pre.interpolation == 'auto' else ' (' + pre.interpolation + ')'}, centre crop {pre.size}")
    cap = f", the model's first {max_frames}" if max_frames else ""
    return (f"caption computes {cfg.cnn} {layer} features of one frame in every {cfg.stride}{cap} ({how}); the "
            f"features imported as {name!r} record no backbone, sampling or preprocessing, so they may have been "
            "made otherwise and the captions may differ from the model's on its own features")


def video_captioner(checkpoints: Sequence[str], cnn_weights: Optional[Sequence[Optional[str]]] = None,
                    device="cpu", streams: Optional[Sequence[str]] = None, download: bool = False,
                    flow_weights: Optional[str] = None, cnn: Optional[str] = None,
                    layer: Optional[str] = None, accept_different: bool = False) -> Captioner:
    """A captioner over raw video files (keys are paths); ``cnn_weights``: one file or None per checkpoint;
    ``download``: let torchvision / timm fetch published weights that are not on this machine;
    ``flow_weights``: the RAFT weights of a checkpoint trained on learned flow; ``cnn`` / ``layer``: for a
    first checkpoint trained on imported features, a backbone that computes the same features, used only
    with ``accept_different`` (its features may differ from the imported ones: one line says how)."""
    cnn_weights = list(cnn_weights) if cnn_weights else [None] * len(checkpoints)
    if layer is not None and cnn is None:
        raise S2VTError("--layer picks a layer of the --cnn given for imported features: give --cnn too, or leave "
                        "--layer out (a checkpoint's own features record their layer)")
    cks = load_checkpoints(checkpoints, streams)
    learned = [(ck.feature_signature.get("flow") or {}).get("method") in LEARNED for ck in cks]
    if flow_weights is not None and not any(learned):
        raise S2VTError("--flow-weights: no checkpoint given was trained on learned (RAFT) flow features; "
                        "leave it out")
    sources = [VideoFeatures(ck, w, device, p, download, flow_weights if raft else None,
                             *((cnn, layer) if i == 0 else (None, None)), accept_different=accept_different)
               for i, (ck, w, p, raft) in enumerate(zip(cks, cnn_weights, checkpoints, learned))]
    return Captioner([ck.build_model(device) for ck in cks], sources, cks[0].vocab, device, cks[0].decoding)
