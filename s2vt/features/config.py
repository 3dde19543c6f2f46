"""How features are computed: :class:`ExtractConfig` (whose feature fields define what a feature means)
and the signature made from it, which a store records and a checkpoint checks."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, fields, replace
from typing import Optional, Tuple

import torch

from s2vt.features.backbones.registry import Backbone, backbone_spec, check_backbone
from s2vt.features.backbones.spec import RESIZE_METHODS, Preprocess
from s2vt.features.raft import LEARNED, RAFT_MIN, FlowFeatures, LearnedFlow
from s2vt.features.signature import STREAMS
from s2vt.features.store import VERSION
from s2vt.runtime.config import as_flags, check_fields, feature_fields, option
from s2vt.runtime.devices import local_world_size
from s2vt.runtime.devices import resolve as resolve_device
from s2vt.runtime.errors import FieldError, S2VTError, SignatureMismatch
from s2vt.runtime.workers import usable_cores
from s2vt.video.flow import METHODS, OFFSET, SCALE
from s2vt.video.reader import SHRINK, Sampling

CPU_BATCH, GPU_BATCH = 8, 64  # default images per CNN call


@dataclass
class ExtractConfig:
    """How features are computed. Fields declared with ``feature=`` define what a feature means:
    the store's signature is made from them, and :meth:`from_signature` reads them back."""

    stream: str = option("rgb", "RGB frames or optical-flow images", choices=STREAMS, feature="stream")
    cnn: str = option("efficientnet_lite0", "backbone: efficientnet_lite0 (offline), vgg16, alexnet, resnet152, "
                                            "or timm:MODEL for any timm model (timm:resnet50, ...); OpenAI's CLIP "
                                            "weights go with the QuickGELU names, e.g. "
                                            "timm:vit_base_patch32_clip_quickgelu_224.openai (the file of "
                                            "huggingface.co/timm/vit_base_patch32_clip_224.openai, or open_clip's "
                                            "ViT-B-32-quickgelu state dict): the *_clip_224.openai names build GELU",
                      feature="backbone")
    layer: Optional[str] = option(None, "feature layer (default per CNN: pool, fc7, fc7, pool; timm: pool, or embed "
                                        "for CLIP towers)", feature="layer")
    weights: Optional[str] = option(None, "CNN weights file (torchvision .pth for vgg16/alexnet/resnet152; "
                                          ".safetensors or .pth for timm models)")
    download: bool = option(False, "let torchvision / timm fetch published weights (CNN and RAFT) into their "
                                   "caches when no file is found (needs internet; off: nothing is downloaded)")
    stride: int = option(10, "keep one frame in every N (the paper: 10)", low=1, high=100_000,
                         feature="sampling.stride")
    num_frames: int = option(0, "instead of a stride: K frames spread uniformly (0: use the stride)", low=0,
                             high=100_000, feature="sampling.num_frames")
    max_frames: int = option(0, "at most this many frames per video (0: all)", low=0, high=1_000_000,
                             feature="sampling.max_frames")
    input_size: Optional[int] = option(None, "CNN input crop side in pixels (default: the backbone's, 224 for all "
                                             "but a few timm models)", low=16, high=1024, feature="preprocess.size")
    crop_ratio: Optional[float] = option(None, "crop side / resized short side, in (0, 1] (default: the backbone's; "
                                               "0.875 for the ImageNet CNNs, timm's crop_pct for timm models, 1.0 "
                                               "for CLIP towers as OpenAI's and open_clip's transform)",
                                         low=0.0, low_open=True, high=1.0, feature="preprocess.crop_ratio")
    resize_with: Optional[str] = option(None, "how RGB frames are resized and cropped: pil (the reference libraries' "
                                              "own transform on PIL images, antialiased, at the decoded size: timm's, "
                                              "torchvision's weights' or open_clip's; the default for timm models and "
                                              "vgg16/alexnet/resnet152) or opencv (cv2.resize of frames first shrunk "
                                              "to a 256-pixel short side: efficientnet_lite0's default, the flow "
                                              "stream's, and every store made before this option)",
                                        choices=RESIZE_METHODS, feature="preprocess.method")
    flow_method: str = option("dis", "optical flow: OpenCV's dis or farneback (decoding workers, CPU), or "
                                     "torchvision's RAFT raft_small / raft_large (batched on --device)",
                              choices=METHODS + LEARNED, feature="flow.method", when={"stream": "flow"})
    flow_weights: Optional[str] = option(None, "RAFT weights file (a torchvision state dict; default: torchvision's "
                                               "file in torch's cache)", when={"stream": "flow", "flow_method": LEARNED})
    batch_size: Optional[int] = option(None, f"images per CNN call (default: {CPU_BATCH} on the CPU, where small "
                                             f"batches stay in cache; {GPU_BATCH} on a GPU)", low=1, high=65536)
    workers: Optional[int] = option(None, "decoding processes (default: cores - 1 on a GPU, 2 on the CPU; "
                                          "0: in-process)", low=0, high=512)
    chunk: int = option(32, "frames per worker message (bounds memory)", low=1, high=4096, cli=False)
    device: str = option("cpu", "cpu, cuda, cuda:1 ...", cli=False)  # the command's shared --device
    share_videos: bool = option(True, "workers take the next video no worker has taken (False: a fixed share "
                                      "each; scripts/bench_shares.py measures both)", cli=False)
    take_turns: bool = option(True, "on a CPU, decoding workers pause while the CNN computes (features.pipeline."
                                    "cpu_gate; scripts/bench_extract.py --no-turns measures without)", cli=False)
    precision: str = option("fp32", "bf16: autocast for the CNN on CUDA, recorded in the store "
                                    "(on a CPU: a warning, then fp32)", choices=("fp32", "bf16"), feature="precision")

    def __post_init__(self):
        check_fields(self)
        try:  # the name only: whether this machine has the device is checked when a run starts
            torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise S2VTError(f"--device {self.device!r} is not a device name (cpu, cuda, cuda:1, ...): {e}")
        if self.resize_with == "pil" and self.stream != "rgb":
            raise S2VTError("--resize-with pil is for the rgb stream: flow is computed on frames shrunk to a 256-pixel "
                            "short side, and its images are resized with OpenCV")
        size = self.preprocess().size
        check_backbone(self.cnn, self.layer, size)
        if self.learned_flow() and (size % 8 or size < RAFT_MIN):
            raise S2VTError(f"--input-size {size}: RAFT (--flow-method {self.flow_method}) needs a side divisible by 8 "
                            f"and at least {RAFT_MIN}")
        self.sampling()  # --stride / --num-frames / --max-frames

    def learned_flow(self) -> bool:
        """True when flow is RAFT's, computed on the device from frame pairs (:mod:`s2vt.features.raft`)."""
        return self.stream == "flow" and self.flow_method in LEARNED

    def channels(self) -> int:
        """Channels of the uint8 images workers send: 3, or 6 for RAFT's frame pairs."""
        return 6 if self.learned_flow() else 3

    def network(self, preprocess: Optional[Preprocess] = None) -> torch.nn.Module:
        """The network from workers' images to features: the backbone, behind RAFT for learned flow
        (weights loaded, on the CPU)."""
        backbone = Backbone(self.cnn, self.layer, self.weights, preprocess or self.preprocess(), self.download)
        if not self.learned_flow():
            return backbone
        return FlowFeatures(LearnedFlow(self.flow_method, self.flow_weights, self.download), backbone)

    def on_device(self) -> Tuple["ExtractConfig", torch.device]:
        """(this config as it runs here, the device): checked when a run starts, not on construction."""
        dev = resolve_device(self.device)
        if self.precision == "bf16" and dev.type == "cpu":
            # CPUs without bf16 units run a bf16 CNN ~60x slower than fp32: compute (and record) fp32
            warnings.warn("--precision bf16 is for GPUs; on the CPU the CNN runs (and the store records) fp32",
                          stacklevel=3)
            return replace(self, precision="fp32"), dev
        return self, dev

    @classmethod
    def from_signature(cls, sig: dict, weights: Optional[str] = None, device: str = "cpu",
                       download: bool = False, flow_weights: Optional[str] = None) -> "ExtractConfig":
        """The settings that compute features with signature ``sig`` (``weights`` / ``flow_weights``: the
        CNN and RAFT files whose digests it records; None = the offline defaults)."""
        given = {}
        for f in fields(cls):
            key = f.metadata.get("feature")
            value = _lookup(sig, key) if key else _MISSING
            if value is _MISSING and key in _BEFORE and _lookup(sig, key.rsplit(".", 1)[0]) is not _MISSING:
                value = _BEFORE[key]
            if value is not _MISSING:
                given[f.name] = value
        try:
            return cls(**given, weights=weights, device=device, download=download, flow_weights=flow_weights)
        except FieldError as e:  # a value recorded in the signature, not a flag the user gave
            raise in_signature_words(e) from None
        except S2VTError as e:
            raise SignatureMismatch(f"{e} (a value the features' signature records)") from None

    def feature_values(self) -> dict:
        """The signature entries these settings define (dotted keys nested)."""
        out: dict = {}
        for f in feature_fields(self):
            *path, last = f.metadata["feature"].split(".")
            node = out
            for k in path:
                node = node.setdefault(k, {})
            node[last] = getattr(self, f.name)
        return out

    def flags(self) -> str:
        """The ``s2vt extract`` flags that select these features (not the speed settings): the stream,
        and every feature field whose value is not its default."""
        base = self._base()
        defaults = {"input_size": base.size, "crop_ratio": base.crop_ratio, "resize_with": base.method}
        return as_flags(self, [f for f in feature_fields(self) if f.name == "stream" or
                               getattr(self, f.name) not in (f.default, defaults.get(f.name, f.default))])

    def sampling(self) -> Sampling:
        """Which frames are kept; frames keep their decoded size for the PIL path (its reference transform
        resizes the frame itself), and are shrunk to a 256-pixel short side for the OpenCV one."""
        return Sampling(stride=self.stride, num_frames=self.num_frames, max_frames=self.max_frames,
                        short_side=0 if self.preprocess().method == "pil" else SHRINK)

    def _base(self) -> Preprocess:
        """The backbone's preprocessing for this stream: the flow stream resizes with OpenCV."""
        base = backbone_spec(self.cnn).preprocess
        return base if self.stream == "rgb" else replace(base, method="opencv", crop_mode="center")

    def preprocess(self) -> Preprocess:
        """The backbone's preprocessing, with ``input_size`` / ``crop_ratio`` / ``resize_with`` where given."""
        base = self._base()
        method = self.resize_with or base.method
        return replace(base, size=base.size if self.input_size is None else self.input_size,
                       crop_ratio=float(base.crop_ratio if self.crop_ratio is None else self.crop_ratio),
                       method=method, crop_mode=base.crop_mode if method == "pil" else "center")

    def cnn_batch(self) -> int:
        """Images per CNN call: ``batch_size``, or the device's default. On a CPU, small batches
        keep each layer's activations in cache: on 2 cores EfficientNet-Lite0 ran 98 images/s at
        batch 8 against 65 at 64 (scripts/bench_cnn.py, BENCHMARKS.md); batches of 4 to 32 were
        within 10% of each other, and 8 leaves more work per call for CPUs with many cores."""
        if self.batch_size is not None:
            return self.batch_size
        return CPU_BATCH if torch.device(self.device).type == "cpu" else GPU_BATCH

    def decode_workers(self) -> int:
        """Decoding processes: ``workers``, or by default every core but one on a GPU (under torchrun, this
        process's share of the machine's cores, less one), 2 on the CPU."""
        if self.workers is not None:
            return self.workers
        cores = usable_cores()
        if torch.device(self.device).type == "cpu":
            return min(2, cores)
        return max(1, cores // local_world_size() - 1)


_MISSING = object()
# what a signature key meant before it was recorded (its parent key present, the key absent)
_BEFORE = {"preprocess.method": "opencv"}


def in_signature_words(e: FieldError) -> SignatureMismatch:
    """An ExtractConfig field error about a value read from a signature, in the signature's words:
    "its signature's sampling.stride must be >= 1, got 0 (a value the features' signature records)"."""
    key = next((f.metadata.get("feature") for f in fields(ExtractConfig) if f.name == e.name), None)
    subject = f"its signature's {key}" if key else f"its signature's {e.name}"
    return SignatureMismatch(f"{e.about(subject)} (a value the features' signature records)")


def _lookup(d: dict, dotted: str):
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return _MISSING
        d = d[k]
    return d


def make_signature(cfg: ExtractConfig, backbone: Backbone) -> dict:
    """What a feature means: the feature fields of ``cfg``, with what the backbone resolved
    (layer, dim, weights digest, preprocessing) and the constants of sampling and flow images."""
    sig = {"format_version": VERSION, **cfg.feature_values()}
    resolved = backbone.signature()
    for k, v in resolved.items():  # the backbone's resolved values (its default layer, mean, std)
        sig[k] = {**sig.get(k, {}), **v} if isinstance(v, dict) else v
    sig["preprocess"] = resolved["preprocess"]  # as resolved: method and crop_mode only when not implied
    sig["sampling"]["short_side"] = cfg.sampling().short_side
    if cfg.stream == "flow":
        sig["flow"].update(scale=SCALE, offset=OFFSET)
    return sig


def extract_flags(sig: dict) -> str:
    """The ``s2vt extract`` flags that compute features with signature ``sig``."""
    return ExtractConfig.from_signature(sig).flags()
