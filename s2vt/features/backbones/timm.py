"""Any timm image model as the backbone: ``--cnn timm:MODEL`` (e.g. ``timm:resnet50``,
``timm:convnext_tiny``, ``timm:vit_base_patch32_clip_quickgelu_224.openai``).

Layers: ``pool`` is the pooled pre-logits (what timm returns with ``num_classes=0``);
``logits`` the classifier's output; for CLIP image towers (``*_clip_*`` models) ``embed``,
the default, is the CLIP image embedding (timm's head there is CLIP's projection: 512-d for
ViT-B/16 and B/32, 768-d for ViT-L/14), and ``pool`` the pooled width before it (768 or 1024).

Preprocessing is the reference transform of where the weights come from, run on PIL images as
the library runs it (``Preprocess.method`` "pil"): timm's ``create_transform(**resolve_data_config(...))``
for timm's own weights (input size, crop fraction, crop mode, interpolation, mean/std of the data
config), OpenAI's / open_clip's transform for CLIP towers (the short side resized to the input
size with antialiased bicubic, the centre cropped, CLIP's mean/std: crop fraction 1.0, where
timm's data config says 0.9). It is recorded in the store's signature, so ``s2vt caption``
recomputes features as extraction did.

OpenAI's CLIP weights (and open_clip's ``*-quickgelu`` models) use QuickGELU: their timm names are
the ``*_clip_quickgelu_*`` ones (``vit_base_patch32_clip_quickgelu_224.openai`` for OpenAI's
ViT-B/32, ``vit_base_patch16_clip_quickgelu_224.openai``, ``vit_large_patch14_clip_quickgelu_224.openai``).
Both a ``*_clip_quickgelu_224.openai`` name and its ``*_clip_224.openai`` twin take the file of
huggingface.co/timm/vit_base_patch32_clip_224.openai (and so on), but the twin builds GELU, which
gives other features from the same weights.

Weights: ``--weights FILE`` (``.safetensors`` or ``.pth``, timm's names or ones timm's own converter
maps, e.g. OpenAI's and open_clip's CLIP state dicts); else the file timm's hub loader left in
Hugging Face's cache; ``--download`` lets timm fetch it there. Nothing is fetched otherwise.
"""
from __future__ import annotations

import difflib
import functools
import os
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from s2vt.features.backbones.spec import BackboneSpec, Preprocess
from s2vt.features.backbones.weights import check_reachable
from s2vt.runtime.errors import S2VTError

TIMM = "timm:"


class TimmHead(nn.Module):
    """A timm model up to ``pool`` (the pooled pre-logits, timm's ``num_classes=0`` features) or its
    head's output: ``logits`` for classifiers, ``embed`` for CLIP towers (the projection to the CLIP
    image embedding)."""

    def __init__(self, net: nn.Module, layer: str):
        super().__init__()
        self.net, self.pre_logits = net, layer == "pool"

    def forward(self, x):
        return self.net.forward_head(self.net.forward_features(x), pre_logits=self.pre_logits)


def timm_builder(model: str) -> Callable[[], nn.Module]:
    def build():
        import timm

        return timm.create_model(model, pretrained=False)
    return build


def timm_unused(net: nn.Module, layer: str) -> tuple:
    """The classifier's key prefixes when ``layer`` is the pooled pre-logits (``pool``): timm's
    ``num_classes=0`` weights lack them, and its own loader treats a reset head as optional."""
    if layer != "pool":
        return ()
    names = (getattr(net, "pretrained_cfg", None) or {}).get("classifier") or ()
    return tuple(n + "." for n in ((names,) if isinstance(names, str) else names))


def timm_filter(state: dict, net: nn.Module) -> dict:
    """timm's own conversion of published weights to its key names (e.g. OpenAI's CLIP files), when the
    model's module has one and the file's names are not timm's."""
    import sys

    if set(state) == set(net.state_dict()):
        return state
    fn = getattr(sys.modules[type(net).__module__], "checkpoint_filter_fn", None)
    return fn(state, net) if fn is not None else state


def _known(model: str) -> None:
    import timm

    if model and timm.is_model(model):
        return
    arch = model.split(".", 1)[0]
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = (f"; did you mean {', '.join(TIMM + c for c in close)}?" if close else
            "; python -c \"import timm; print(timm.list_models('*clip*'))\" lists them")
    raise S2VTError(f"--cnn {TIMM}{model}: timm has no model {model!r}{hint}")


def _hub_file(cfg: dict) -> Callable[[], Optional[Path]]:
    """The weights file timm's loader keeps for this model, if it is on this machine."""
    def find():
        hub = cfg.get("hf_hub_id")
        if hub:
            from huggingface_hub import try_to_load_from_cache

            for fname in (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"):
                got = try_to_load_from_cache(hub, fname) if fname else None
                if isinstance(got, str):
                    return Path(got)
        url = cfg.get("url")
        if url:
            p = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
            return p if p.is_file() else None
        return None
    return find


def _fetch(model: str) -> Callable[[], None]:
    def fetch():
        import timm

        check_reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        timm.create_model(model, pretrained=True)  # timm's hub loader fills its cache
    return fetch


def _fixed_input(net) -> Optional[int]:
    pe = getattr(net, "patch_embed", None)
    if pe is None or not getattr(pe, "strict_img_size", False) or getattr(pe, "dynamic_img_size", False):
        return None
    return int(pe.img_size[0])


def _widths(net: nn.Module, layers, size: int) -> dict:
    """{layer: the width of what it outputs}, read off a forward pass of one image on the meta device
    (no memory, no arithmetic): a head that works after pooling (MobileNetV3's and LCNet's 1x1
    convolution to 1280 channels) makes ``pool`` wider than timm's ``num_features``."""
    try:
        with torch.device("meta"):
            x = torch.empty(1, 3, size, size)
            return {layer: int(TimmHead(net, layer)(x).shape[-1]) for layer in layers}
    except (RuntimeError, NotImplementedError, TypeError, ValueError):  # an operation without a meta kernel
        pool = int(getattr(net, "head_hidden_size", None) or net.num_features)
        return {layer: pool if layer == "pool" else int(net.num_classes) for layer in layers}


def clip_tower(model: str, net: nn.Module) -> bool:
    """True for a CLIP image tower as image-text training left it (its head is CLIP's projection):
    a ``clip`` architecture or weights tag, not fine-tuned on ImageNet (``openai_ft_in1k`` and the like)."""
    arch = model.split(".", 1)[0].split("_")
    tag = str((getattr(net, "pretrained_cfg", None) or {}).get("tag") or "").split("_")
    tuned = any(t.startswith(("in1k", "in12k", "in21k", "in22k")) for t in tag)
    return ("clip" in arch or "clip" in tag) and not tuned and net.num_classes > 0


def timm_preprocess(data: dict, clip: bool) -> Preprocess:
    """What timm's ``create_transform(**resolve_data_config(...))`` does at evaluation, as a Preprocess
    (``data``: the resolved data config); for a CLIP tower OpenAI's / open_clip's transform instead:
    the short side resized to the input size (bicubic), the centre cropped, nothing left out (crop 1.0)."""
    mode = data.get("crop_mode") or "center"
    return Preprocess(size=int(data["input_size"][-1]), crop_ratio=1.0 if clip else float(data.get("crop_pct") or 1.0),
                      mean=tuple(float(v) for v in data["mean"]), std=tuple(float(v) for v in data["std"]),
                      interpolation="bicubic" if clip else data.get("interpolation", "bicubic"), method="pil",
                      crop_mode=mode if mode == "squash" and not clip else "center")


@functools.lru_cache(maxsize=None)
def timm_spec(name: str) -> BackboneSpec:
    """The spec of ``timm:MODEL``: layers and their widths read off the model built on the meta device
    (no memory, no weights), preprocessing as the weights' own library does it (:func:`timm_preprocess`)."""
    import timm
    from timm.data import resolve_data_config

    model = name[len(TIMM):]
    _known(model)
    with torch.device("meta"):
        net = timm.create_model(model, pretrained=False)
    data = resolve_data_config({}, model=net)
    clip = clip_tower(model, net)
    names = ("embed", "pool") if clip else ("pool", "logits") if net.num_classes else ("pool",)
    layers = _widths(net, names, int(data["input_size"][-1]))
    pre = timm_preprocess(data, clip)
    cfg = dict(net.pretrained_cfg or {})
    where = f"model.safetensors of https://huggingface.co/{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else \
        cfg.get("url") or "its published weights"
    missing = (f"no weights for {name}: pass --weights FILE (.safetensors or .pth; timm's file is {where}), "
               "or --download to let timm fetch it into its cache (needs internet)")
    return BackboneSpec(layers, "embed" if clip else "pool", pre, _hub_file(cfg), missing, timm_builder(model), TimmHead,
                        min_input=32, fixed_input=_fixed_input(net), fetch=_fetch(model), remap=timm_filter,
                        unused=timm_unused)
