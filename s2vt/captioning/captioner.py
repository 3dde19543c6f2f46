"""One captioner for every job that turns features into sentences: training's validation,
``s2vt evaluate`` / ``benchmark`` (features from HDF5 stores) and ``s2vt caption`` (features
computed from raw video files).

A captioner is a list of members, each a model with its own feature source (a callable
``key -> (T, D)`` tensor, already capped to the model's ``max_frames``), decoded together
by shallow fusion (one member is a fusion of one). Checkpoints are loaded here and in no
other place of the decoding path, and fused members must share one vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from s2vt.features.frames import StoreFeatures, pad_features
from s2vt.models.checkpoint import Checkpoint, vocab_difference
from s2vt.decoding.search import DecodeConfig, Fusion, decode, fusion_weights
from s2vt.runtime.devices import normalize
from s2vt.runtime.errors import S2VTError, SignatureMismatch
from s2vt.features.config import extract_flags
from s2vt.features.signature import check_complete, is_imported
from s2vt.features.store import FeatureStore, check_signature
from s2vt.data.vocab import Vocab

FeatureFn = Callable[[str], torch.Tensor]


@dataclass
class Member:
    """One model of an evaluation: its checkpoint and the feature store it reads."""

    checkpoint: str
    features: str


def load_checkpoints(paths: Sequence[str], streams: Optional[Sequence[str]] = None) -> List[Checkpoint]:
    """Checkpoints that can be fused: the same vocabulary, else an error naming the file.

    ``streams``: the feature stream each must have been trained on (e.g. ["rgb", "flow"] for a fusion).
    """
    cks = [Checkpoint.load(p) for p in paths]
    for p, ck, want in zip(paths, cks, streams or [None] * len(cks)):
        have = ck.feature_signature.get("stream")
        if want is not None and have != want:
            raise S2VTError(f"{p} was trained on {have} features, but is given as the {want} model; "
                            "check the order of the checkpoints (RGB first, flow second)")
    for p, ck in zip(paths[1:], cks[1:]):
        if ck.vocab != cks[0].vocab:
            raise S2VTError(f"{p} and {paths[0]}: {vocab_difference(cks[0].vocab, ck.vocab)}; fused models must be "
                            "trained on the same captions with the same --min-count")
    return cks


class Captioner:
    """Models with their feature sources, ready to caption videos by key (id or path)."""

    def __init__(self, models: Sequence[torch.nn.Module], sources: Sequence[FeatureFn], vocab: Vocab,
                 device="cpu", decoding: Optional[DecodeConfig] = None):
        if len(models) != len(sources) or not models:
            raise S2VTError("a captioner needs one feature source per model")
        self.models, self.sources, self.vocab = list(models), list(sources), vocab
        self.device = normalize(device)
        self.decoding = decoding or DecodeConfig()

    @classmethod
    def from_members(cls, members: Sequence[Member], device="cpu",
                     streams: Optional[Sequence[str]] = None) -> "Captioner":
        """Models from checkpoints reading the stores they were trained on (signatures checked)."""
        cks = load_checkpoints([m.checkpoint for m in members], streams)
        models, sources = [], []
        for m, ck in zip(members, cks):
            check_complete(ck.feature_signature, m.checkpoint)
            store = FeatureStore(m.features)
            try:
                check_signature(store.signature, ck.feature_signature, str(store.path))
            except SignatureMismatch as e:
                digest = ck.feature_signature.get("weights_digest")
                how = ("`s2vt import-features` (they cannot be recomputed)" if is_imported(ck.feature_signature)
                       else f"`s2vt extract {extract_flags(ck.feature_signature)}`")
                raise SignatureMismatch(f"{e}. {m.checkpoint} was trained on features from {how}"
                                        + (f" (CNN weights digest {digest})" if digest else "")
                                        + ": give a store extracted that way") from None
            models.append(ck.build_model(device))
            sources.append(StoreFeatures(store, ck.max_frames))
        return cls(models, sources, cks[0].vocab, device, cks[0].decoding)

    def available(self, vids: Sequence[str]) -> Tuple[List[str], List[str]]:
        """(ids every store has, ids some store lacks), for store-backed members."""
        have = [v for v in vids if all(v in s for s in self.sources)]
        kept = set(have)
        return have, [v for v in vids if v not in kept]

    @torch.inference_mode()
    def caption(self, keys: Sequence[str], weights: Optional[Sequence[float]] = None,
                decoding: Optional[DecodeConfig] = None, batch_size: int = 128, progress: bool = False,
                **flags) -> Dict[str, str]:
        """Captions of ``keys``; ``weights`` per member (default: the decoding's alpha for an RGB and a
        flow model, :func:`fusion_weights`). The search is ``decoding`` (default: the first checkpoint's)
        with ``flags`` (beam, max_len, len_penalty, alpha) given on top; ``progress``: a bar over the videos."""
        from tqdm import tqdm

        dec = (decoding or self.decoding).given(**flags)
        weights = list(weights) if weights is not None else fusion_weights(dec.alpha, len(self.models)) or [1.0]
        search = dec.search()
        fusion = Fusion(list(zip(self.models, weights)))
        for m in self.models:
            m.eval()
        out: Dict[str, str] = {}
        bar = tqdm(total=len(keys), desc="caption", unit="video", disable=not progress, leave=False)
        for i in range(0, len(keys), batch_size):
            chunk = list(keys[i:i + batch_size])
            inputs = []
            for source in self.sources:
                feats = [source(k) for k in chunk]
                empty = [k for k, f in zip(chunk, feats) if len(f) == 0]
                if empty:
                    raise S2VTError(f"video {empty[0]} has no frames in its features; re-extract it")
                x, lens = pad_features(feats)
                inputs.append((x.to(self.device, non_blocking=True), lens))
            toks = decode(fusion, inputs, **search)
            out.update({k: self.vocab.decode(t) for k, t in zip(chunk, toks)})
            bar.update(len(chunk))
        bar.close()
        return out

    @torch.inference_mode()
    def attention(self, key: str, caption: str) -> List[Optional[List[dict]]]:
        """Per member: for each word of ``caption`` (then <eos>), the attention weights over the encoding
        steps (frames) that predicted it, as ``[{"word": w, "weights": [T floats]}]``; None for a member
        without attention (``--decoder s2vt``)."""
        ids = self.vocab.encode(caption)
        words = [self.vocab.itos[i] for i in ids] + ["<eos>"]
        words_in = torch.tensor([[Vocab.bos] + ids], device=self.device)               # (1, L+1)
        out: List[Optional[List[dict]]] = []
        for model, source in zip(self.models, self.sources):
            if not hasattr(model, "attention"):
                out.append(None)
                continue
            f = source(key)
            a = model.attention(f[None].to(self.device), torch.tensor([len(f)]), words_in)[0]  # (L+1, T)
            out.append([{"word": w, "weights": [round(x, 6) for x in row]} for w, row in zip(words, a.tolist())])
        return out

