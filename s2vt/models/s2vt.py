"""The S2VT model: one two-layer stacked LSTM that reads frames, then emits words.

Per video with T frames and a caption of L words, the stack runs T + L + 1 steps:

    step        0 .. T-1 (encode)            T .. T+L (decode)
    LSTM1 in    linear(frame feature)        zeros
    LSTM2 in    [LSTM1 out ; <pad> = zeros]  [LSTM1 out ; embed(<bos>, w1 .. wL)]
    target      -                            w1 .. wL, <eos>

Each video's sequence is packed to its own length, so its output does not depend on
what else is in the batch, and training is two fused whole-sequence LSTM calls.
Decoding goes through ``encode`` / ``step`` / ``reorder_state`` (see s2vt.decoding.search).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from s2vt.runtime.config import check_fields, option
from s2vt.runtime.errors import ConfigError

State = Tuple[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
DECODERS = ("s2vt", "attention")  # the models of s2vt.models.registry


@dataclass
class ModelConfig:
    feat_dim: int = option(4096, "feature size (VGG-16 fc7 in the paper); set from the feature store",
                           low=1, high=65536, cli=False)
    vocab_size: int = option(0, "words in the vocabulary; set from the training captions", low=0, high=1_000_000, cli=False)
    embed: int = option(500, "frame projection and word embedding size (paper: 500)", low=1, high=8192)
    hidden: int = option(1000, "units in each LSTM layer (paper: 1000)", low=1, high=8192)
    dropout: float = option(0.5, "dropout on projected frames and LSTM outputs", low=0.0, high=0.95)
    max_frames: int = option(80, "encoder steps at most; longer videos are subsampled uniformly (paper: 80)",
                             low=1, high=10_000)
    max_words: int = option(20, "caption words at most in training (paper: 20)", low=1, high=1000)
    decoder: str = option("s2vt", "s2vt (the paper) or attention (soft temporal attention over the encoded frames, "
                          "s2vt.models.attention)", choices=DECODERS)

    def __post_init__(self):
        check_fields(self)


def step_lengths(feat_lens: torch.Tensor, word_lens: torch.Tensor,
                 device_lens: Optional[Tuple[torch.Tensor, torch.Tensor]], device: torch.device):
    """Per-video steps (B,) on the CPU, for packing, and frames / words (B,) on ``device``,
    whichever device the lengths come on (DDP with ``device_ids`` moves every tensor argument
    to the GPU; packing needs CPU lengths)."""
    cpu = lambda t: t if t.device.type == "cpu" else t.cpu()
    seq_lens = cpu(feat_lens) + cpu(word_lens)
    if device_lens is None:
        device_lens = (feat_lens, word_lens)
    fl, wl = (t.to(device, non_blocking=True) for t in device_lens)
    return seq_lens, fl, wl


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor ``t`` on ``device`` without making the host wait: on a GPU it is pinned first, so the
    copy is asynchronous (a copy from pageable memory blocks the host until it is done)."""
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def pack(x: torch.Tensor, lens: torch.Tensor) -> PackedSequence:
    """``x`` (B, S, ...) packed to ``lens`` (B,) on the CPU, with no host-device sync.

    Rows already in decreasing length pack as they are; otherwise they are ordered on the host and the
    order and its inverse are copied to ``x``'s device asynchronously (``enforce_sorted=False`` would copy
    them from pageable memory, and unpacking would read them back). The LSTM puts its states back in the
    batch's order; :func:`unpack` does so for the outputs."""
    if bool((lens[:-1] >= lens[1:]).all()):
        return pack_padded_sequence(x, lens, batch_first=True)
    order = torch.sort(lens, descending=True, stable=True).indices                      # (B,) on the CPU
    order_d, back_d = to_device(order, x.device), to_device(torch.argsort(order), x.device)
    p = pack_padded_sequence(x.index_select(0, order_d), lens[order], batch_first=True)
    return PackedSequence(p.data, p.batch_sizes, order_d, back_d)


def unpack(packed: PackedSequence, total_length: int) -> torch.Tensor:
    """The padded (B, total_length, ...) outputs of :func:`pack`'s sequence, in the batch's order."""
    out, _ = pad_packed_sequence(PackedSequence(packed.data, packed.batch_sizes), batch_first=True,
                                 total_length=total_length)
    return out if packed.unsorted_indices is None else out.index_select(0, packed.unsorted_indices)


def run_lstm(lstm: nn.LSTM, x, state=None):
    """``lstm`` in float32 whatever autocast says.

    CUDA autocast sends the fused LSTM (cuDNN's RNN) through a wrapper that casts it to
    float16 whatever the autocast dtype, so under bf16 autocast its forward and backward
    would run in fp16 with no loss scaling. Here the LSTMs run in fp32 with autocast off,
    and the linear layers around them in the autocast dtype: every op in a dtype we chose."""
    device_type = (x.data if isinstance(x, PackedSequence) else x).device.type
    if not torch.is_autocast_enabled(device_type):
        return lstm(x, state)
    with torch.autocast(device_type, enabled=False):
        state = None if state is None else tuple(t.float() for t in state)
        return lstm(x.float(), state)


class S2VT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 4:
            raise ConfigError(f"ModelConfig.vocab_size must be set from a vocabulary (got {cfg.vocab_size})")
        self.cfg = cfg
        self.proj = nn.Linear(cfg.feat_dim, cfg.embed)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed, padding_idx=0)  # <pad> embeds to zeros
        self.lstm1 = nn.LSTM(cfg.embed, cfg.hidden, batch_first=True)
        self.lstm2 = nn.LSTM(cfg.hidden + cfg.embed, cfg.hidden, batch_first=True)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden, cfg.vocab_size)

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor, words_in: torch.Tensor,
                targets: Optional[torch.Tensor] = None, word_lens: Optional[torch.Tensor] = None,
                device_lens: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        """Teacher-forced logits over the decode steps, and the loss when targets are given.

        feats: (B, T, D) padded frame features; feat_lens: (B,) on the CPU
        words_in: (B, L+1) <bos> w1..wL padded with <pad>; targets: (B, L+1) w1..wL <eos>
        word_lens: (B,) on the CPU, L+1 per caption (computed from words_in when omitted)
        device_lens: (feat_lens, word_lens) already on feats' device (saves two copies per step)
        A batch ordered by decreasing T_i + L_i + 1 packs without a permutation.
        Returns logits (B, L+1, V) and the summed token NLL divided by B (or None).
        """
        B, T, _ = feats.shape
        L1 = words_in.shape[1]
        if word_lens is None:
            word_lens = (words_in != 0).sum(1)  # (B,) includes <bos>
        seq_lens, fl, wl = step_lengths(feat_lens, word_lens, device_lens, feats.device)
        S = T + L1
        frames = self.drop(self.proj(feats))      # (B, T, E)
        fmask = torch.arange(T, device=feats.device)[None, :] < fl[:, None]
        x1 = F.pad(frames * fmask[..., None], (0, 0, 0, L1))  # (B, S, E): zeros where a video has no frame
        # word of each step: step s holds word s - T_i (decode steps only)
        s = torch.arange(S, device=feats.device)[None, :]                      # (1, S)
        j = s - fl[:, None]                             # (B, S)
        wmask = (j >= 0) & (j < wl[:, None])
        j = j.clamp(0, L1 - 1)
        words = torch.gather(words_in, 1, j) * wmask                            # (B, S) ids, 0 = <pad>
        h1, _ = run_lstm(self.lstm1, pack(x1, seq_lens))
        h1 = unpack(h1, S)                                                      # (B, S, H)
        x2 = torch.cat([self.drop(h1), self.embed(words)], -1)                  # (B, S, H+E)
        h2, _ = run_lstm(self.lstm2, pack(x2, seq_lens))
        h2 = unpack(h2, S)                                                      # (B, S, H)
        # decode-step outputs only: step T_i + k for k in 0..L
        k = torch.arange(L1, device=feats.device)[None, :] + fl[:, None]  # (B, L+1)
        h_dec = torch.gather(h2, 1, k[..., None].expand(B, L1, h2.shape[-1]))  # (B, L+1, H)
        logits = self.out(self.drop(h_dec))                                     # (B, L+1, V)
        if targets is None:
            return logits, None
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                              ignore_index=0, reduction="sum")  # <pad> targets contribute nothing
        return logits, nll / B

    # ------------------------------------------------------------------ decoding API

    def encode(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> State:
        """Read the frames; returns the (h, c) of both layers after each video's last frame.

        feats: (B, T, D); feat_lens: (B,). State tensors: (1, B, H).
        """
        x1 = self.proj(feats)                                                   # (B, T, E)
        lens = feat_lens.cpu()
        h1, s1 = run_lstm(self.lstm1, pack(x1, lens))
        h1 = unpack(h1, feats.shape[1])                                         # (B, T, H)
        x2 = torch.cat([h1, h1.new_zeros(*h1.shape[:2], self.cfg.embed)], -1)   # (B, T, H+E)
        _, s2 = run_lstm(self.lstm2, pack(x2, lens))
        return s1, s2

    def step(self, prev_tokens: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """One decode step. prev_tokens: (N,) -> log-probs (N, V) and the new state."""
        s1, s2 = state
        N = prev_tokens.shape[0]
        h1, s1 = run_lstm(self.lstm1, s1[0].new_zeros(N, 1, self.cfg.embed), s1)  # (N, 1, H)
        x2 = torch.cat([h1, self.embed(prev_tokens)[:, None]], -1)              # (N, 1, H+E)
        h2, s2 = run_lstm(self.lstm2, x2, s2)
        return F.log_softmax(self.out(h2[:, 0]).float(), -1), (s1, s2)

    @staticmethod
    def reorder_state(state: State, order: torch.Tensor) -> State:
        """Select/permute batch rows of the state: ``order`` (N',) indexes dim 1."""
        return tuple((h.index_select(1, order), c.index_select(1, order)) for h, c in state)
