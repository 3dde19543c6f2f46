"""S2VT with soft temporal attention (Yao et al., ICCV 2015, on S2VT's stack): ``--decoder attention``.

The two-layer stack and its encode-then-decode schedule are S2VT's (s2vt.models.s2vt). What is
added: at every word step, LSTM2 also reads a context vector, an additive (Bahdanau)
attention over LSTM1's outputs at the encoding steps, queried by LSTM2's previous hidden state:

    step        0 .. T-1 (encode)               T .. T+L (decode)
    LSTM1 in    linear(frame feature)           zeros
    LSTM2 in    [LSTM1 out ; zeros ; zeros]     [LSTM1 out ; embed(<bos>, w1 .. wL) ; context]
    context     -                               sum_t a_t * enc_t,  a = softmax_t(v . tanh(K enc_t + Q h2))

LSTM1 runs as one fused call over the whole sequence (it never sees words), and LSTM2 as one
fused call over the encoding steps; only LSTM2's decode steps run one at a time, because each
context depends on the previous word step's state. Decoding uses ``encode`` / ``step`` /
``reorder_state`` as S2VT does; ``attention`` returns the weights of given captions.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from s2vt.runtime.errors import ConfigError
from s2vt.models.s2vt import ModelConfig, run_lstm
from s2vt.models.s2vt import pack, to_device, unpack

LSTMState = Tuple[torch.Tensor, torch.Tensor]


class AttentionS2VT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 4:
            raise ConfigError(f"ModelConfig.vocab_size must be set from a vocabulary (got {cfg.vocab_size})")
        self.cfg = cfg
        E, H = cfg.embed, cfg.hidden
        self.proj = nn.Linear(cfg.feat_dim, E)
        self.embed = nn.Embedding(cfg.vocab_size, E, padding_idx=0)
        self.lstm1 = nn.LSTM(E, H, batch_first=True)
        self.lstm2 = nn.LSTM(H + E + H, H, batch_first=True)
        self.att_k = nn.Linear(H, H)               # keys: encoder outputs
        self.att_q = nn.Linear(H, H, bias=False)   # query: LSTM2's previous hidden state
        self.att_v = nn.Linear(H, 1, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(H, cfg.vocab_size)

    # ------------------------------------------------------------------ shared pieces

    def _attend(self, query: torch.Tensor, keys: torch.Tensor, enc: torch.Tensor, mask: torch.Tensor):
        """query (N, H), keys (N, T, H) = att_k(enc), enc (N, T, H), mask (N, T) True on frames.

        Returns context (N, H) and weights (N, T) (zero on padding, summing to 1)."""
        e = self.att_v(torch.tanh(keys + self.att_q(query)[:, None])).squeeze(-1)   # (N, T)
        a = torch.softmax(e.float().masked_fill(~mask, float("-inf")), -1).to(enc.dtype)
        return torch.bmm(a[:, None], enc)[:, 0], a                                  # (N, H), (N, T)

    def _encode(self, frames: torch.Tensor, lens: torch.Tensor, extra: int, fl: Optional[torch.Tensor] = None):
        """frames (B, T, E) projected; lens (B,) on the CPU; ``extra`` zero steps after the frames;
        fl: the lengths already on frames' device (else copied there asynchronously).

        Returns LSTM1 outputs (B, T + extra, H), LSTM2 state after each video's last frame, frame mask (B, T)."""
        B, T, _ = frames.shape
        lens = lens.cpu()
        fl = to_device(lens, frames.device) if fl is None else fl
        mask = torch.arange(T, device=frames.device)[None, :] < fl[:, None]         # (B, T)
        x1 = F.pad(frames * mask[..., None], (0, 0, 0, extra))                       # (B, T+extra, E)
        h1, s1 = run_lstm(self.lstm1, pack(x1, lens + extra))
        h1 = unpack(h1, T + extra)                                                   # (B, T+extra, H)
        enc = h1[:, :T] * mask[..., None]                                            # (B, T, H)
        x2 = torch.cat([enc, enc.new_zeros(B, T, self.cfg.embed + self.cfg.hidden)], -1)  # (B, T, H+E+H)
        _, s2 = run_lstm(self.lstm2, pack(x2, lens))
        return h1, s1, s2, mask

    def _decode(self, feats, feat_lens, words_in, fl: Optional[torch.Tensor] = None):
        """Teacher-forced LSTM2 outputs (B, L+1, H) and attention weights (B, L+1, T); fl: feat_lens on
        feats' device when the caller has them there."""
        B, T, _ = feats.shape
        L1 = words_in.shape[1]
        fl = to_device(feat_lens.cpu(), feats.device) if fl is None else fl
        h1, _, s2, mask = self._encode(self.drop(self.proj(feats)), feat_lens, L1, fl)
        enc = h1[:, :T]
        keys = self.att_k(enc)                                                      # (B, T, H)
        k = torch.arange(L1, device=feats.device)[None, :] + fl[:, None]            # (B, L+1) decode steps
        h1_dec = self.drop(torch.gather(h1, 1, k[..., None].expand(B, L1, h1.shape[-1])))  # (B, L+1, H)
        emb = self.embed(words_in)                                                  # (B, L+1, E)
        outs, alphas = [], []
        for t in range(L1):
            ctx, a = self._attend(s2[0][0], keys, enc, mask)
            o, s2 = run_lstm(self.lstm2, torch.cat([h1_dec[:, t], emb[:, t], ctx], -1)[:, None], s2)  # (B, 1, H)
            outs.append(o[:, 0])
            alphas.append(a)
        return torch.stack(outs, 1), torch.stack(alphas, 1)

    # ------------------------------------------------------------------ training

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor, words_in: torch.Tensor,
                targets: Optional[torch.Tensor] = None, word_lens: Optional[torch.Tensor] = None,
                device_lens: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        """As :meth:`s2vt.models.s2vt.S2VT.forward`: logits (B, L+1, V) and the summed token NLL / B (or None).

        feats (B, T, D), feat_lens (B,), words_in / targets (B, L+1); device_lens: (feat_lens, word_lens)
        already on feats' device (word_lens is accepted for the same call signature: padded word steps are
        masked by the <pad> targets)."""
        h_dec, _ = self._decode(feats, feat_lens, words_in, None if device_lens is None else device_lens[0])
        logits = self.out(self.drop(h_dec))                                         # (B, L+1, V)
        if targets is None:
            return logits, None
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                              ignore_index=0, reduction="sum")
        return logits, nll / feats.shape[0]

    @torch.inference_mode()
    def attention(self, feats: torch.Tensor, feat_lens: torch.Tensor, words_in: torch.Tensor) -> torch.Tensor:
        """Weights over the encoding steps at each word step of given captions: (B, L+1, T).

        words_in (B, L+1): <bos> w1..wL; row k holds the weights used to predict word k+1 (then <eos>)."""
        return self._decode(feats, feat_lens, words_in)[1]

    # ------------------------------------------------------------------ decoding API

    def encode(self, feats: torch.Tensor, feat_lens: torch.Tensor):
        """State after each video's last frame: (LSTM1 (h, c), LSTM2 (h, c), keys (B, T, H), enc (B, T, H), mask (B, T))."""
        h1, s1, s2, mask = self._encode(self.proj(feats), feat_lens, 0)
        enc = h1 * mask[..., None]
        return s1, s2, self.att_k(enc), enc, mask

    def step(self, prev_tokens: torch.Tensor, state):
        """One decode step. prev_tokens: (N,) -> log-probs (N, V) and the new state."""
        s1, s2, keys, enc, mask = state
        N = prev_tokens.shape[0]
        h1, s1 = run_lstm(self.lstm1, s1[0].new_zeros(N, 1, self.cfg.embed), s1)              # (N, 1, H)
        ctx, _ = self._attend(s2[0][0], keys, enc, mask)                            # (N, H)
        x2 = torch.cat([h1[:, 0], self.embed(prev_tokens), ctx], -1)[:, None]       # (N, 1, H+E+H)
        h2, s2 = run_lstm(self.lstm2, x2, s2)
        return F.log_softmax(self.out(h2[:, 0]).float(), -1), (s1, s2, keys, enc, mask)

    @staticmethod
    def reorder_state(state, order: torch.Tensor):
        """Select/permute batch rows: LSTM states on dim 1, attention memory on dim 0."""
        s1, s2, keys, enc, mask = state
        (h1, c1), (h2, c2) = s1, s2
        return ((h1.index_select(1, order), c1.index_select(1, order)),
                (h2.index_select(1, order), c2.index_select(1, order)),
                keys.index_select(0, order), enc.index_select(0, order), mask.index_select(0, order))
