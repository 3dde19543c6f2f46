"""Self-critical sequence training (Rennie et al., CVPR 2017): ``s2vt train --objective scst --init RUN/best.pt``.

Per training video, K captions are sampled (multinomial, temperature 1) and the greedy caption
is decoded; the reward of a caption is its CIDEr-D against the video's references, with document
frequencies from the training split, and the loss is ``-(reward - reward(greedy)) * log p(sample)``
averaged over the B*K samples. Sampling and the log-probabilities run with dropout off, so the
gradient is that of the distribution sampled from; the LSTMs stay in training mode (cuDNN runs an
RNN's backward only in training mode), the dropout layers alone are switched off. An SCST epoch
is one pass over the training videos (not over captions); checkpoints are selected on val CIDEr.

:class:`CiderD` is coco-caption's CIDEr-D (``pycocoevalcap.cider.Cider``: n = 1..4, tf-idf with
clipped matches, Gaussian length penalty sigma = 6, x10) vectorised over a batch: the references'
n-gram vectors and norms are built once per run, a batch of candidates is scored with sorts,
``searchsorted`` and scatter-adds over integer n-gram codes, without a Python loop over captions.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import nn

from s2vt.runtime.errors import ConfigError
from s2vt.runtime.errors import S2VTError
from s2vt.data.vocab import Vocab, tokenize
from s2vt.models.s2vt import to_device

BOS, EOS, PAD = Vocab.bos, Vocab.eos, Vocab.pad


class CiderD:
    """CIDEr-D of candidate id sequences against fixed reference sets.

    refs: one list of references per row (each a list of positive word ids; rows may be empty
    when never scored); document frequencies count each n-gram once per row that has references.
    """

    def __init__(self, refs: Sequence[Sequence[Sequence[int]]], n: int = 4, sigma: float = 6.0, device="cpu"):
        self.n, self.sigma, self.device = n, sigma, torch.device(device)
        words = [w for rs in refs for r in rs for w in r]
        self.base = (max(words) if words else 0) + 2        # candidate ids may exceed the references' (one more)
        if self.base ** n >= 2 ** 63:
            raise ConfigError(f"CIDEr-D: {self.base} word ids do not fit {n}-gram codes in int64")
        docs = sum(1 for rs in refs if rs)
        if docs == 0:
            raise S2VTError("CIDEr-D needs references: no video of the training split has a caption")
        self.ref_len = math.log(float(docs))
        flat = [(row, r) for row, rs in enumerate(refs) for r in rs]
        R = len(flat)
        rmax = max(len(rs) for rs in refs)
        vid_refs = np.full((len(refs), rmax), -1, np.int64)
        k = 0
        for row, rs in enumerate(refs):
            vid_refs[row, :len(rs)] = np.arange(k, k + len(rs))
            k += len(rs)
        t = lambda a, dt=torch.int64: torch.as_tensor(np.asarray(a), dtype=dt, device=self.device)
        self.vid_refs = t(vid_refs)                                                  # (rows, Rmax) -1 = none
        self.ref_count = t((vid_refs >= 0).sum(1), torch.float64)                    # (rows,)
        self.ref_bigrams = t([max(len(r) - 1, 0) for _, r in flat], torch.float64)   # (R,) length as coco-caption
        self.known, self.idf, self.ref_keys, self.ref_vals, self.ref_norm = [], [], [], [], []
        for g in range(1, n + 1):
            counts = [self._counts(r, g) for _, r in flat]
            df: Dict[int, int] = {}
            for row, rs in enumerate(refs):
                seen = set()
                for i in vid_refs[row, :len(rs)]:
                    seen.update(counts[i])
                for c in seen:
                    df[c] = df.get(c, 0) + 1
            known = np.array(sorted(df), np.int64)
            idf = self.ref_len - np.log(np.maximum(1.0, np.array([df[c] for c in known], np.float64)))
            col = {c: j for j, c in enumerate(known)}
            keys, vals, norm = [], [], np.zeros(R)
            for i, cnt in enumerate(counts):
                for c, tf in cnt.items():
                    v = tf * idf[col[c]]
                    keys.append(i * len(known) + col[c])
                    vals.append(v)
                    norm[i] += v * v
            order = np.argsort(keys)
            self.known.append(t(known))
            self.idf.append(t(idf, torch.float64))
            self.ref_keys.append(t(np.asarray(keys, np.int64)[order]))
            self.ref_vals.append(t(np.asarray(vals, np.float64)[order], torch.float64))
            self.ref_norm.append(t(np.sqrt(norm), torch.float64))

    def _counts(self, ids: Sequence[int], g: int) -> Dict[int, int]:
        out: Dict[int, int] = {}
        for i in range(len(ids) - g + 1):
            c = 0
            for w in ids[i:i + g]:
                c = c * self.base + int(w)
            out[c] = out.get(c, 0) + 1
        return out

    def __call__(self, seqs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """seqs (M, L) word ids, 0-padded at the end; rows (M,) reference row of each -> CIDEr-D (M,) float64."""
        seqs, rows = seqs.to(self.device).clamp(max=self.base - 1), rows.to(self.device)
        M, L = seqs.shape
        lens = (seqs > 0).sum(1)
        hyp_len = (lens - 1).clamp(min=0).double()                                   # (M,) bigrams
        refs = self.vid_refs[rows]                                                   # (M, Rmax)
        has = refs >= 0
        rlen = torch.where(has, self.ref_bigrams[refs.clamp(min=0)], torch.zeros((), dtype=torch.float64,
                                                                                  device=self.device))
        penalty = torch.exp(-((hyp_len[:, None] - rlen) ** 2) / (2 * self.sigma ** 2))  # (M, Rmax)
        total = torch.zeros(M, refs.shape[1], dtype=torch.float64, device=self.device)
        for g in range(1, self.n + 1):
            if L < g:
                continue
            P = L - g + 1
            win = torch.stack([seqs[:, i:i + P] for i in range(g)], -1)               # (M, P, g)
            codes = torch.zeros(M, P, dtype=torch.int64, device=self.device)
            for i in range(g):
                codes = codes * self.base + win[..., i]
            codes = torch.where((win > 0).all(-1), codes, torch.full_like(codes, -1))
            s, _ = codes.sort(1)                                                     # (M, P) invalid (-1) first
            valid = s >= 0
            start = valid & torch.cat([torch.ones(M, 1, dtype=torch.bool, device=self.device), s[:, 1:] != s[:, :-1]], 1)
            gid = torch.cumsum(start.view(-1).long(), 0) - 1                         # group of each entry
            G = int(start.sum())
            if G == 0:
                continue
            tf = torch.zeros(G, dtype=torch.float64, device=self.device).scatter_add_(
                0, gid[valid.view(-1)], torch.ones(int(valid.sum()), dtype=torch.float64, device=self.device))
            g_row = torch.arange(M, device=self.device)[:, None].expand(M, P)[start]  # (G,)
            g_code = s[start]                                                        # (G,)
            known = self.known[g - 1]
            K = len(known)
            pos = torch.searchsorted(known, g_code).clamp(max=max(K - 1, 0))
            found = (known[pos] == g_code) if K else torch.zeros_like(g_code, dtype=torch.bool)
            idf = torch.where(found, self.idf[g - 1][pos] if K else tf, torch.full_like(tf, self.ref_len))
            vh = tf * idf                                                            # (G,)
            norm_h = torch.zeros(M, dtype=torch.float64, device=self.device).index_add_(0, g_row, vh * vh).sqrt()
            # the reference's value of each candidate n-gram, for every reference of the row
            gr = refs[g_row]                                                         # (G, Rmax)
            key = gr.clamp(min=0) * K + pos[:, None]
            rk = self.ref_keys[g - 1]
            kp = torch.searchsorted(rk, key).clamp(max=max(len(rk) - 1, 0))
            hit = (rk[kp] == key) & (gr >= 0) & found[:, None] if len(rk) else torch.zeros_like(key, dtype=torch.bool)
            ref_val = self.ref_vals[g - 1][kp] if len(rk) else torch.zeros_like(key, dtype=torch.float64)
            vr = torch.where(hit, ref_val, torch.zeros((), dtype=torch.float64, device=self.device))
            val = torch.zeros_like(total).index_add_(0, g_row, torch.minimum(vh[:, None], vr) * vr)  # (M, Rmax)
            norm_r = torch.where(has, self.ref_norm[g - 1][refs.clamp(min=0)], torch.zeros_like(total))
            denom = norm_h[:, None] * norm_r
            val = torch.where(denom != 0, val / torch.where(denom != 0, denom, torch.ones_like(denom)), val)
            total += val * penalty
        per_ref = torch.where(has, total / self.n, torch.zeros_like(total))
        return per_ref.sum(1) / self.ref_count[rows].clamp(min=1) * 10.0


def reference_ids(captions_per_row: Sequence[Sequence[str]], vocab: Vocab) -> List[List[List[int]]]:
    """Tokenised references as ids: vocabulary words keep their ids, other words get ids beyond the
    vocabulary (so they count for CIDEr-D but can never be matched by a generated word)."""
    extra: Dict[str, int] = {}
    out = []
    for caps in captions_per_row:
        rs = []
        for c in caps:
            ids = [vocab.stoi[w] if w in vocab.stoi else extra.setdefault(w, len(vocab) + len(extra))
                   for w in tokenize(c)]
            if ids:
                rs.append(ids)
        out.append(rs)
    return out


def draw(lp: torch.Tensor) -> torch.Tensor:
    """One word per row of log-probabilities ``lp`` (N, V), drawn from them: argmax of p / q with
    q ~ Exp(1), the draw ``torch.multinomial(p, 1)`` makes (the same words on the CPU), without the
    validity checks by which multinomial reads two values back from a GPU at every word."""
    p = lp.exp()
    return (p / torch.empty_like(p).exponential_()).argmax(-1)


@torch.no_grad()
def rollout(model, feats: torch.Tensor, lens: torch.Tensor, K: int, max_len: int, sample: bool) -> torch.Tensor:
    """Captions of each video, K per video (rows b*K .. b*K+K-1): sampled (temperature 1) or greedy.

    feats (B, T, D), lens (B,) -> tokens (B*K, max_len) ending in <eos> where one was drawn, 0-padded after it."""
    B = feats.shape[0]
    state = model.encode(feats, lens)
    state = model.reorder_state(state, torch.arange(B * K, device=feats.device) // K)
    tok = torch.full((B * K,), BOS, dtype=torch.long, device=feats.device)
    out = torch.zeros(B * K, max_len, dtype=torch.long, device=feats.device)
    alive = torch.ones(B * K, dtype=torch.bool, device=feats.device)
    for t in range(max_len):
        lp, state = model.step(tok, state)
        tok = draw(lp) if sample else lp.argmax(-1)
        out[:, t] = torch.where(alive, tok, torch.zeros_like(tok))
        alive &= tok != EOS
    return out


def dropout_off(model: nn.Module) -> None:
    """``model`` in training mode with every dropout layer in eval mode: no dropout, and modules that
    are backpropagated through (cuDNN's LSTMs) in the mode their backward needs."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()


class SCSTLoss:
    """The self-critical objective (s2vt.training.objectives): ``loss = objective(batch)``, the batch's
    ``rows`` holding each video's row of reference captions (set by :class:`RewardRows`). Samples
    ``samples`` captions per video, rewards each by its CIDEr-D minus the greedy caption's."""

    def __init__(self, model: nn.Module, cider: CiderD, samples: int, max_len: int):
        self.model, self.cider, self.K, self.max_len = model, cider, samples, max_len
        self.sums = {"reward_sample": 0.0, "reward_greedy": 0.0, "n": 0}

    def __call__(self, batch) -> torch.Tensor:
        feats, feat_lens, device_lens, rows = batch.feats, batch.feat_lens, batch.device_lens, batch.rows
        if rows is None:
            raise ValueError("an SCST batch carries the reward row of each video (Batch.rows)")
        dropout_off(self.model)                             # the gradient of what was sampled
        K, B = self.K, feats.shape[0]
        samples = rollout(self.model, feats, feat_lens, K, self.max_len, sample=True)      # (B*K, Lm)
        greedy = rollout(self.model, feats, feat_lens, 1, self.max_len, sample=False)      # (B, Lm)
        words = lambda s: s.masked_fill(s == EOS, 0)
        host = words(torch.cat([samples, greedy]).cpu())    # the step's one sync: CIDEr-D is scored on the host
        r_s = self.cider(host[:B * K], rows.repeat_interleave(K)).view(B, K)
        r_g = self.cider(host[B * K:], rows)                                           # (B,)
        adv = to_device((r_s - r_g[:, None]).float().view(-1), feats.device)               # (B*K,)
        words_in = torch.cat([samples.new_full((B * K, 1), BOS), words(samples)[:, :-1]], 1)  # (B*K, Lm)
        word_lens = (host[:B * K, :-1] != 0).sum(1) + 1                                     # (B*K,) with <bos>
        rep = torch.arange(B * K, device=feats.device) // K                                 # (B*K,) video of each
        fl = to_device(feat_lens.cpu(), feats.device) if device_lens is None else device_lens[0]
        lens = (fl[rep], (words_in != 0).sum(1))                                             # on the device
        logits, _ = self.model(feats[rep], feat_lens.cpu().repeat_interleave(K), words_in, None, word_lens, lens)
        logp = torch.log_softmax(logits.float(), -1).gather(2, samples[..., None])[..., 0]  # (B*K, Lm)
        logp = (logp * (samples != 0)).sum(1)                                                # (B*K,)
        self.sums["reward_sample"] += float(r_s.mean()) * B
        self.sums["reward_greedy"] += float(r_g.mean()) * B
        self.sums["n"] += B
        return -(adv * logp).mean()

    def pop_stats(self) -> dict:
        """Mean CIDEr-D of the samples and of the greedy captions since the last call (the reward curve)."""
        n = max(self.sums["n"], 1)
        rec = {"reward_sample": self.sums["reward_sample"] / n, "reward_greedy": self.sums["reward_greedy"] / n}
        self.sums = {"reward_sample": 0.0, "reward_greedy": 0.0, "n": 0}
        return rec


class RewardRows:
    """A batch stream over one row per training video whose batches carry each video's reward row."""

    def __init__(self, stream, cider_row: np.ndarray):
        self.inner, self.cider_row = stream, cider_row
        self.bank, self.table = stream.bank, stream.table

    def epoch(self, batches, epoch: int):
        order = [self.inner.sort_batch(b) for b in batches]
        for idx, b in zip(order, self.inner.epoch(batches, epoch)):
            yield b.with_rows(torch.from_numpy(self.cider_row[self.inner.table.video_row[idx]]))


def setup(cfg, data, model, device, rank: int, world: int):
    """Load ``--init`` into ``model`` (refusing another decoder, vocabulary or feature extraction) and return
    (the loss to train with, ``data`` with a per-video stream and sampler)."""
    import dataclasses

    from s2vt.training.batches import BatchStream, CaptionTable, EpochSampler
    from s2vt.models.checkpoint import Checkpoint, differences, vocab_difference
    from s2vt.data.corpora import load_corpus
    from s2vt.features.store import signature_diff

    if world > 1:
        raise ConfigError("--objective scst runs in one process; start it without torchrun")
    init = Checkpoint.load(cfg.scst.init)
    if init.model_config.decoder != cfg.model.decoder:
        raise ConfigError(f"--init {cfg.scst.init} was trained with --decoder {init.model_config.decoder}, this run has "
                          f"--decoder {cfg.model.decoder}: pass --decoder {init.model_config.decoder}")
    if init.vocab != data.vocab:
        raise ConfigError(f"--init {cfg.scst.init}: {vocab_difference(init.vocab, data.vocab)}; train on the same "
                          "captions with the same --min-count")
    sd = signature_diff(data.store.signature, init.feature_signature)
    if sd:
        raise ConfigError(f"--init {cfg.scst.init} was trained on features extracted differently ({'; '.join(sd)})")
    diff = differences(dataclasses.asdict(init.model_config), dataclasses.asdict(cfg.model), skip=("dropout",))
    if diff:
        raise ConfigError(f"--init {cfg.scst.init} has another model ({'; '.join(diff)}): pass its model flags")
    model.load_state_dict(init.weights)
    vids = data.table.vids
    row = {v: i for i, v in enumerate(vids)}  # each video's row of the bank (one lookup per caption, not a search)
    train_items = [(v, c) for v, c in load_corpus(cfg.dataset, cfg.annotations).split_items(cfg.train_split)
                   if v in row]
    caps = dict(train_items)
    refs = reference_ids([caps.get(v, []) for v in vids], data.vocab)
    if not any(refs):
        raise ConfigError(f"--objective scst: no video of the {cfg.train_split} split has a reference caption")
    cider = CiderD(refs, device="cpu")
    loss = SCSTLoss(model, cider, cfg.scst.scst_samples, cfg.model.max_words + 1)
    table = CaptionTable([(v, c[:1]) for v, c in train_items if refs[row[v]]], data.vocab,
                         cfg.model.max_words, vids)
    s = data.stream
    stream = BatchStream(table, s.bank, device, cfg.model.max_frames, cfg.shuffle_frames, cfg.seed, data.store, s.dtype)
    sampler = EpochSampler(len(table), cfg.batch_size, cfg.seed, rank, world, drop_last=world > 1)
    return loss, dataclasses.replace(data, stream=RewardRows(stream, np.arange(len(vids))), sampler=sampler)
