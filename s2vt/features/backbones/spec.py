"""What a backbone is, apart from its weights: how an image becomes its input (:class:`Preprocess`,
done on uint8 images in the decoding workers by :func:`prepare`, normalised on the device by
:class:`Normalize`) and how it is built, found and cut at a layer (:class:`BackboneSpec`).

Two ways to resize and crop (``Preprocess.method``, recorded in a feature signature):

* ``pil``: the reference libraries' own path, as timm's ``create_transform(**resolve_data_config(...))``,
  torchvision's ``weights.transforms()`` and OpenAI's / open_clip's CLIP transform run it: the frame,
  at the size it was decoded, becomes a PIL image; torchvision's ``resize`` (antialiased) brings its
  short side to ``floor(size / crop_ratio)`` (timm's rule; 256 for 224 at 0.875, the size itself at
  1.0) and ``center_crop`` takes ``size``. The uint8 crop equals the reference's; only the
  normalisation runs elsewhere (on the device).
* ``opencv``: ``cv2.resize`` to ``round(size / crop_ratio)`` on frames the reader first shrank to a
  256-pixel short side; what every store recorded before ``method`` existed (a signature without
  it means this), and EfficientNet-Lite0's default.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from s2vt.runtime.errors import S2VTError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# how the short side is resized: "auto" = OpenCV: area averaging when shrinking, bilinear when enlarging;
# PIL: bilinear (torchvision's default, and its weights' transforms)
INTERPOLATIONS = {"auto": None, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
                  "nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA}
PIL_INTERPOLATIONS = {"auto": InterpolationMode.BILINEAR, "bilinear": InterpolationMode.BILINEAR,
                      "bicubic": InterpolationMode.BICUBIC, "nearest": InterpolationMode.NEAREST}
RESIZE_METHODS = ("pil", "opencv")  # see the module's docstring
CROP_MODES = ("center", "squash")  # timm's data config crop_mode (its "border" mode is cropped as "center")


@dataclass(frozen=True)
class Preprocess:
    """How an RGB uint8 image becomes the network's input."""

    size: int = 224                 # side of the square centre crop fed to the CNN
    crop_ratio: float = 0.875       # crop side / resized short side (224 of 256); 1.0 = no margin
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    interpolation: str = "auto"     # a key of INTERPOLATIONS (timm models: their data config's)
    method: str = "opencv"          # a key of RESIZE_METHODS: how the resize and crop run (signatures without it: opencv)
    crop_mode: str = "center"       # pil: "squash" resizes both sides to floor(size / crop_ratio) first (timm's mode)

    def __post_init__(self):
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 16:
            raise S2VTError(f"--input-size must be an integer >= 16, not {self.size!r}")
        if not (isinstance(self.crop_ratio, (int, float)) and 0 < self.crop_ratio <= 1):
            raise S2VTError(f"--crop-ratio must be in (0, 1] (crop side / resized short side), not {self.crop_ratio!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise S2VTError(f"preprocess mean/std need 3 values each and std > 0, not {self.mean}/{self.std}")
        if self.method not in RESIZE_METHODS:
            raise S2VTError(f"preprocess method must be one of {', '.join(RESIZE_METHODS)}, not {self.method!r}")
        if self.crop_mode not in CROP_MODES or (self.crop_mode != "center" and self.method != "pil"):
            raise S2VTError(f"preprocess crop_mode must be center, or squash with method pil, not {self.crop_mode!r}")
        known = PIL_INTERPOLATIONS if self.method == "pil" else INTERPOLATIONS
        if self.interpolation not in known:
            raise S2VTError(f"preprocess interpolation must be one of {', '.join(known)} with method {self.method}, "
                            f"not {self.interpolation!r}")

    def resize_side(self) -> int:
        """The short side before the centre crop: timm's ``floor(size / crop_pct)`` for the PIL path,
        ``round`` for the OpenCV one (as it always did)."""
        side = math.floor(self.size / self.crop_ratio) if self.method == "pil" else round(self.size / self.crop_ratio)
        return max(self.size, int(side))

    def to_dict(self) -> dict:
        """The signature's ``preprocess`` (``interpolation`` only when not "auto", ``method`` only when not
        "opencv", ``crop_mode`` only when not "center": stores made before these existed have none)."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        for key, implied in (("interpolation", "auto"), ("method", "opencv"), ("crop_mode", "center")):
            if d[key] == implied:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def prepare(rgb: np.ndarray, pre: Preprocess) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, S, S) uint8: resize the short side to ``pre.resize_side()``, centre crop S,
    by ``pre.method`` (see the module's docstring)."""
    if pre.method == "pil":
        side = pre.resize_side()
        img = TF.resize(Image.fromarray(rgb), [side, side] if pre.crop_mode == "squash" else [side],
                        interpolation=PIL_INTERPOLATIONS[pre.interpolation], antialias=True)
        img = TF.center_crop(img, [pre.size])
        return np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1))
    h, w = rgb.shape[:2]
    short = pre.resize_side()  # >= size: Preprocess keeps crop_ratio in (0, 1]
    scale = short / min(h, w)
    nh, nw = max(short, round(h * scale)), max(short, round(w * scale))
    interp = INTERPOLATIONS[pre.interpolation]
    if interp is None:
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


@dataclass(frozen=True)
class BackboneSpec:
    layers: Dict[str, int]          # layer name -> feature dimension
    default_layer: str
    preprocess: Preprocess
    find: Callable[[], Optional[Path]]              # the offline weights file, or None when absent
    missing: str                                    # what to do when it is absent
    build: Callable[[], nn.Module]                  # the architecture, weights not loaded
    head: Callable[[nn.Module, str], nn.Module]     # (net, layer) -> module from input to that layer
    min_input: int = 16             # smallest crop the network accepts (pooling/stride arithmetic)
    fixed_input: Optional[int] = None               # the only input size (ViTs with fixed position embeddings)
    fetch: Optional[Callable[[], None]] = None      # --download: the library's own loader fills its cache
    remap: Optional[Callable[[dict, nn.Module], dict]] = None  # a weights file's names -> the network's
    unused: Optional[Callable[[nn.Module, str], Tuple[str, ...]]] = None  # (net, layer) -> key prefixes of
    #                                               tensors that layer never reaches (a weights file may lack them)
