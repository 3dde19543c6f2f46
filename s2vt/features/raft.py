"""Learned optical flow: torchvision's RAFT, run batched on the extraction device.

``--flow-method raft_small|raft_large`` replaces OpenCV's flow (computed by the decoding
workers on the CPU) with RAFT on the device that runs the CNN. The workers then send, for
each sampled position, the two frames of its pair already resized and cropped as the CNN
wants them, stacked as one (6, S, S) uint8 image; :class:`FlowFeatures` runs RAFT on the
pair, encodes the flow as the same flow image as OpenCV's (x, y = 16 * flow + 128,
magnitude * 16 + 128, rounded and clipped to [0, 255]; :mod:`s2vt.video.flow`) and gives that image
to the CNN, so a flow CNN works on either. RAFT's flow is in pixels of the frame resized to
the CNN's short side (256 by default, as OpenCV's frames are); it runs in fp32 whatever
``--precision`` says.

Weights: ``--flow-weights FILE`` (a torchvision RAFT state dict), else torchvision's file in
torch's cache (``$TORCH_HOME/hub/checkpoints``); ``--download`` lets torchvision fetch it
there. Nothing is fetched otherwise. The file's digest goes in the store's signature.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from s2vt.features.backbones.weights import check_reachable, fetch_weights, file_digest, given_weights, load_state
from s2vt.runtime.errors import S2VTError, WeightsNotFound
from s2vt.video.flow import OFFSET, SCALE
from s2vt.runtime.devices import ieee_fp32

LEARNED = ("raft_small", "raft_large")
UPDATES = 12  # refinement iterations, torchvision's default
RAFT_MIN = 128  # smallest image side: RAFT's correlation pyramid halves 1/8-resolution maps 3 times


def _weights_enum(method: str):
    from torchvision.models import optical_flow

    return {"raft_small": optical_flow.Raft_Small_Weights, "raft_large": optical_flow.Raft_Large_Weights}[method].C_T_V2


def resolve_flow_weights(method: str, weights: Optional[str] = None, download: bool = False) -> Path:
    """The RAFT weights file: ``weights`` if given, else torchvision's file in torch's cache
    (fetched there first with ``download``)."""
    if method not in LEARNED:
        raise S2VTError(f"--flow-method {method!r} is not a learned flow; choose one of {', '.join(LEARNED)}")
    if weights:
        return given_weights(weights, "--flow-weights")
    enum = _weights_enum(method)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / enum.url.rsplit("/", 1)[-1]
    if not cached.is_file() and download:
        def fetch():  # torchvision's loader fills torch's cache
            check_reachable(enum.url)
            enum.get_state_dict(progress=True)
        fetch_weights(fetch, method, "--flow-weights")
    if not cached.is_file():
        raise WeightsNotFound(f"no weights for {method}: pass --flow-weights FILE (a torchvision RAFT state dict), "
                              f"or put {cached.name} in {cached.parent}, or pass --download to let torchvision "
                              "fetch it. Nothing is downloaded unless --download is given")
    return cached


def flow_images(flow: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) flow in pixels -> (B, 3, H, W) uint8 flow images (x, y, magnitude), as
    :func:`s2vt.video.flow.flow_to_image` encodes them."""
    planes = torch.cat([flow, torch.linalg.vector_norm(flow, dim=1, keepdim=True)], 1)
    return (planes * SCALE + OFFSET).round_().clamp_(0, 255).to(torch.uint8)


class LearnedFlow(nn.Module):
    """(B, 6, S, S) uint8 frame pairs -> (B, 3, S, S) uint8 flow images, with RAFT."""

    def __init__(self, method: str = "raft_small", weights: Optional[str] = None, download: bool = False):
        super().__init__()
        from torchvision.models import optical_flow

        path = resolve_flow_weights(method, weights, download)
        self.method, self.weights_digest = method, file_digest(path)
        self.net = getattr(optical_flow, method)(weights=None)
        load_state(self.net, path, method)
        self.net.eval()

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        h, w = pairs.shape[-2:]
        if h % 8 or w % 8 or min(h, w) < RAFT_MIN:
            raise S2VTError(f"RAFT needs image sides divisible by 8 and at least {RAFT_MIN}, not {(h, w)}: "
                            "choose another --input-size")
        x = pairs.float().div_(127.5).sub_(1.0)  # [0, 255] -> [-1, 1], RAFT's input range
        with torch.autocast(x.device.type, enabled=False), ieee_fp32():  # no TF32 either
            flow = self.net(x[:, :3].contiguous(), x[:, 3:].contiguous(), num_flow_updates=UPDATES)[-1]
        return flow_images(flow)


class FlowFeatures(nn.Module):
    """Frame pairs -> RAFT flow images -> CNN features: the extraction network of the learned
    flow methods, with the attributes of a :class:`s2vt.features.backbones.registry.Backbone`."""

    channels = 6

    def __init__(self, flow: LearnedFlow, backbone: nn.Module):
        super().__init__()
        self.flow, self.backbone = flow, backbone
        self.preprocess, self.dim, self.weights_digest = backbone.preprocess, backbone.dim, backbone.weights_digest
        self.name, self.layer = backbone.name, backbone.layer

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.flow(pairs))

    def signature(self) -> dict:
        return {**self.backbone.signature(), "flow": {"weights_digest": self.flow.weights_digest}}
