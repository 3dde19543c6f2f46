"""Caption raw video files: extract features exactly as the checkpoint's training
features were extracted (backbone, weights, preprocessing, sampling, flow), then decode.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from . import checkpoint
from .backbones import Backbone, Preprocess
from .decoding import Fusion, decode
from .errors import S2VTError, SignatureMismatch
from .extract import ExtractConfig, video_images
from .data import cap_frames


def config_from_signature(sig: dict, weights: Optional[str] = None, device: str = "cpu") -> ExtractConfig:
    s = sig["sampling"]
    pre = sig["preprocess"]
    return ExtractConfig(stream=sig["stream"], cnn=sig["backbone"], layer=sig["layer"], weights=weights,
                         stride=s["stride"], num_frames=s["num_frames"], max_frames=s["max_frames"],
                         input_size=pre["size"], crop_ratio=pre["crop_ratio"],
                         flow_method=sig.get("flow", {}).get("method", "dis"), device=device,
                         precision=sig.get("precision", "fp32"))


class VideoCaptioner:
    """Checkpoint(s) + the feature extractors they need. ``weights``: one per checkpoint (or None)."""

    def __init__(self, checkpoints: Sequence[str], weights: Optional[Sequence[Optional[str]]] = None,
                 alpha: float = 0.5, device: str = "cpu"):
        self.device = torch.device(device)
        weights = list(weights) if weights else [None] * len(checkpoints)
        self.members, self.vocab = [], None
        for path, w in zip(checkpoints, weights):
            ck = checkpoint.load(path)
            model, vocab = checkpoint.build_model(ck)
            if self.vocab is not None and vocab != self.vocab:
                raise S2VTError(f"{path}: fused models must share one vocabulary")
            self.vocab = vocab
            sig = ck["feature_signature"]
            cfg = config_from_signature(sig, w, device)
            pre = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in sig["preprocess"].items()})
            backbone = Backbone(cfg.cnn, cfg.layer, cfg.weights, pre).to(self.device)
            if backbone.weights_digest != sig["weights_digest"]:
                raise SignatureMismatch(f"{path} was trained on features from {cfg.cnn} weights with digest "
                                        f"{sig['weights_digest']}, but the weights found have digest "
                                        f"{backbone.weights_digest}; pass the right file with --weights")
            self.members.append((model.to(self.device), cfg, backbone, ck["config"]["model"]["max_frames"]))
        self.weights = [alpha, 1 - alpha] if len(self.members) == 2 else [1.0] * len(self.members)

    @torch.inference_mode()
    def features(self, path, cfg: ExtractConfig, backbone: Backbone, chunk: int = 64) -> torch.Tensor:
        """(T, D) features of one video, computed in chunks (bounded memory)."""
        feats, batch = [], []
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        info: dict = {}
        for _, img in video_images(path, cfg, backbone.preprocess, info):
            batch.append(img)
            if len(batch) == chunk:
                with autocast:
                    feats.append(backbone(torch.from_numpy(np.stack(batch)).to(self.device)).float())
                batch = []
        if batch:
            with autocast:
                feats.append(backbone(torch.from_numpy(np.stack(batch)).to(self.device)).float())
        if not feats:
            raise S2VTError(f"{path}: no frame could be sampled")
        return torch.cat(feats)

    def caption(self, path, beam: int = 5, max_len: int = 30) -> str:
        inputs = []
        for model, cfg, backbone, maxf in self.members:
            f = self.features(path, cfg, backbone)
            f = f[torch.from_numpy(cap_frames(len(f), maxf))]
            inputs.append((f[None], torch.tensor([len(f)])))
        fusion = Fusion([(m, w) for (m, *_), w in zip(self.members, self.weights)])
        return self.vocab.decode(decode(fusion, inputs, beam=beam, max_len=max_len)[0])
