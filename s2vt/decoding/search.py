"""Greedy and batched beam-search decoding, with shallow fusion of several models.

Works on anything with ``encode(feats, lens) -> state``, ``step(tokens, state) ->
(logprobs, state)`` and ``reorder_state(state, order)``. A :class:`Fusion` of an RGB
and a flow model scores each step as ``alpha * log p_rgb + (1 - alpha) * log p_flow``
(the paper's late fusion); a single model is a fusion of one.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

import torch

from s2vt.runtime.config import check_fields, option
from s2vt.runtime.errors import S2VTError
from s2vt.data.vocab import Vocab

BOS, EOS, PAD = Vocab.bos, Vocab.eos, Vocab.pad
MAX_LEN = 30  # words a generated caption may have (training captions: at most 20)


@dataclass
class DecodeConfig:
    """How captions are generated. ``s2vt train`` stores its values in every checkpoint as the
    checkpoint's defaults; ``caption``, ``evaluate`` and ``benchmark`` use those unless a flag
    is given. The fusion weight is a decoding setting too (None: tuned on val where a val split
    is at hand, else 0.5)."""

    beam: int = option(5, "beam size (1 = greedy)", low=1, high=100)
    max_len: int = option(MAX_LEN, "words a generated caption may have at most", low=1, high=1000)
    len_penalty: float = option(1.0, "beam score = sum log p / length ** len_penalty", low=0.0, high=10.0)
    alpha: Optional[float] = option(None, "fusion: the RGB model's weight in [0, 1], flow's is 1 - alpha "
                                          "(default: tuned on val by evaluate / benchmark; 0.5 for caption)",
                                    low=0.0, high=1.0)

    def __post_init__(self):
        check_fields(self)

    def given(self, **flags) -> "DecodeConfig":
        """These settings with the flags that were given (not None) on top."""
        return replace(self, **{k: v for k, v in flags.items() if v is not None})

    def search(self) -> dict:
        """What the search itself uses (beam, max_len, len_penalty): the keyword arguments of :func:`decode`."""
        return {"beam": self.beam, "max_len": self.max_len, "len_penalty": self.len_penalty}


DEFAULT_ALPHA = 0.5  # the RGB model's fusion weight when none is given or tuned: equal weights


def fusion_weights(alpha: Optional[float], members: int) -> Optional[List[float]]:
    """Per-member weights of a captioner of ``members`` models: None for one model; for an RGB and a
    flow model ``[alpha, 1 - alpha]`` (score = alpha*log p_rgb + (1-alpha)*log p_flow), alpha
    ``DEFAULT_ALPHA`` when None."""
    if members != 2:
        return None
    a = DEFAULT_ALPHA if alpha is None else alpha
    return [a, 1 - a]


class Fusion:
    """Weighted sum of the members' log-probabilities at every step.

    members: [(model, weight)]; inputs to ``encode``: one (feats, lens) per member.
    Members with weight 0 are not run.
    """

    def __init__(self, members: Sequence[Tuple[torch.nn.Module, float]]):
        self.members = [(m, float(w)) for m, w in members if w != 0]
        if not self.members:
            raise S2VTError("fusion needs at least one member with non-zero weight")
        sizes = {m.cfg.vocab_size for m, _ in self.members}
        if len(sizes) != 1:
            raise S2VTError(f"fused models must share one vocabulary, got sizes {sorted(sizes)}")
        self.keep = [i for i, (_, w) in enumerate(members) if w != 0]

    def encode(self, inputs: Sequence[Tuple[torch.Tensor, torch.Tensor]]):
        inputs = [inputs[i] for i in self.keep]
        return [m.encode(f, l) for (m, _), (f, l) in zip(self.members, inputs)]

    def step(self, tokens: torch.Tensor, states):
        total, new = None, []
        for (m, w), s in zip(self.members, states):
            lp, s = m.step(tokens, s)
            total = w * lp if total is None else total + w * lp
            new.append(s)
        return total, new

    def reorder_state(self, states, order: torch.Tensor):
        return [m.reorder_state(s, order) for (m, _), s in zip(self.members, states)]


def _as_decoder(model_or_fusion):
    return model_or_fusion if isinstance(model_or_fusion, Fusion) else Fusion([(model_or_fusion, 1.0)])


def _as_inputs(inputs):
    # a single (feats, lens) pair, or a list of them (one per fused model)
    return [inputs] if isinstance(inputs, tuple) and torch.is_tensor(inputs[0]) else list(inputs)


@torch.inference_mode()
def greedy(model, inputs, max_len: int = MAX_LEN) -> List[List[int]]:
    """Most likely word at each step until <eos>. Returns token ids per video (no <eos>)."""
    dec, inputs = _as_decoder(model), _as_inputs(inputs)
    B = inputs[0][0].shape[0]
    device = inputs[0][0].device
    state = dec.encode(inputs)
    tok = torch.full((B,), BOS, dtype=torch.long, device=device)
    out = torch.full((B, max_len), PAD, dtype=torch.long, device=device)
    alive = torch.ones(B, dtype=torch.bool, device=device)
    for t in range(max_len):
        lp, state = dec.step(tok, state)
        tok = lp.argmax(-1) if t < max_len - 1 else torch.full_like(tok, EOS)  # as beam search: <eos> forced last
        out[:, t] = torch.where(alive, tok, torch.full_like(tok, PAD))
        alive &= tok != EOS
        if not bool(alive.any()):
            break
    return [_strip(r) for r in out.tolist()]


def _strip(ids: List[int]) -> List[int]:
    res = []
    for i in ids:
        if i in (EOS, PAD):
            break
        res.append(i)
    return res


@torch.inference_mode()
def beam_search(model, inputs, beam: int = 5, max_len: int = MAX_LEN, len_penalty: float = 1.0) -> List[List[int]]:
    """Batched beam search over B videos x K beams.

    A hypothesis ending in <eos> after n steps is scored ``sum log p / n ** len_penalty``.
    Each step expands every live beam, records finished candidates among the best 2K,
    and keeps the K best unfinished ones. A video stops when no live beam can still beat
    its best finished hypothesis (log-probs only fall, so a live beam's final score is at
    most ``score / max_len ** len_penalty``), or at ``max_len`` where <eos> is forced.
    The search is exact in that sense: it never stops early on a count of finished beams.
    Returns the best hypothesis per video (token ids, no <eos>).
    """
    dec, inputs = _as_decoder(model), _as_inputs(inputs)
    B = inputs[0][0].shape[0]
    K = beam
    device = inputs[0][0].device
    state = dec.encode(inputs)
    state = dec.reorder_state(state, torch.arange(B, device=device).repeat_interleave(K))  # (.., B*K, H)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0                                       # all beams start identical: expand one
    tokens = torch.zeros(B * K, 0, dtype=torch.long, device=device)
    prev = torch.full((B * K,), BOS, dtype=torch.long, device=device)
    best = torch.full((B,), float("-inf"), device=device)    # best finished normalised score
    best_tokens = torch.full((B, max_len), PAD, dtype=torch.long, device=device)
    base = (torch.arange(B, device=device) * K)[:, None]     # (B, 1) offset of each video's beams
    for t in range(max_len):
        lp, state = dec.step(prev, state)                    # (B*K, V)
        V = lp.shape[-1]
        if t == max_len - 1:                                 # out of room: finish every beam
            forced = torch.full_like(lp, float("-inf"))
            forced[:, EOS] = 0.0
            lp = lp + forced
        cand = (scores[:, :, None] + lp.view(B, K, V)).view(B, K * V)
        top_scores, top_idx = cand.topk(min(2 * K, K * V), dim=1)   # (B, 2K)
        top_beam, top_tok = top_idx // V, top_idx % V
        is_eos = (top_tok == EOS) & torch.isfinite(top_scores)
        norm = top_scores / float(t + 1) ** len_penalty
        norm_fin = torch.where(is_eos, norm, torch.full_like(norm, float("-inf")))
        cand_best, cand_arg = norm_fin.max(1)                       # (B,)
        improve = cand_best > best
        if bool(improve.any()):
            src = (base[:, 0] + top_beam.gather(1, cand_arg[:, None])[:, 0])   # (B,) flat beam index
            hyp = torch.full((B, max_len), PAD, dtype=torch.long, device=device)
            hyp[:, :t] = tokens[src]
            best_tokens = torch.where(improve[:, None], hyp, best_tokens)
            best = torch.where(improve, cand_best, best)
        if t == max_len - 1:
            break
        # continue with the K best candidates that did not end
        cont_scores = torch.where(is_eos, torch.full_like(top_scores, float("-inf")), top_scores)
        scores, pick = cont_scores.topk(K, dim=1)                    # (B, K)
        bound = scores[:, 0] / (float(max_len) ** len_penalty if len_penalty > 0 else 1.0)
        if bool((best >= bound).all()):                              # nothing live can win any more
            break
        src = (base + top_beam.gather(1, pick)).view(-1)             # (B*K,)
        prev = top_tok.gather(1, pick).view(-1)
        tokens = torch.cat([tokens[src], prev[:, None]], 1)
        state = dec.reorder_state(state, src)
    return [_strip(r) for r in best_tokens.tolist()]


def decode(model, inputs, beam: int = 1, max_len: int = MAX_LEN, len_penalty: float = 1.0) -> List[List[int]]:
    """Greedy for ``beam <= 1``, else beam search."""
    if beam <= 1:
        return greedy(model, inputs, max_len)
    return beam_search(model, inputs, beam, max_len, len_penalty)
