#!/usr/bin/env python
"""Training samples/s at the paper's shapes against two baselines run in the same process.

* ceiling: a bare fused step of the same shapes - linear 4096->500, nn.LSTM(500,1000),
  nn.LSTM(1500,1000) over the padded (frames + words) sequence, linear to the vocabulary,
  cross-entropy, backward, Adam - with tensors already on the device;
* loop: the same model written with per-time-step nn.LSTMCell calls (as public
  re-implementations are);
* s2vt: our model (packed, masked, exact per-video lengths) with data loading from an
  HDF5 feature store through the DataLoader included.

  python scripts/bench_train.py --batch-sizes 64 --steps 3         # CPU
  python scripts/bench_train.py --device cuda --amp --batch-sizes 64 256
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from s2vt.data import CaptionDataset, EpochSampler, FeatureSource, collate_captions
from s2vt.model import ModelConfig, S2VT
from s2vt.store import FeatureStore, FeatureWriter
from s2vt.vocab import Vocab


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64])
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (after 1 warm-up)")
    p.add_argument("--frames", type=int, default=80)
    p.add_argument("--words", type=int, default=20)
    p.add_argument("--feat-dim", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=13000)
    p.add_argument("--videos", type=int, default=96, help="videos in the generated feature store")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--skip-loop", action="store_true")
    return p.parse_args(argv)


class Ceiling(nn.Module):
    def __init__(self, D, V, E=500, H=1000):
        super().__init__()
        self.proj, self.emb = nn.Linear(D, E), nn.Embedding(V, E)
        self.l1, self.l2 = nn.LSTM(E, H, batch_first=True), nn.LSTM(H + E, H, batch_first=True)
        self.out = nn.Linear(H, V)

    def forward(self, feats, words, targets):
        B, T, _ = feats.shape
        L = words.shape[1]
        x1 = torch.cat([self.proj(feats), feats.new_zeros(B, L, self.proj.out_features)], 1)
        h1, _ = self.l1(x1)
        w = torch.cat([words.new_zeros(B, T), words], 1)
        h2, _ = self.l2(torch.cat([h1, self.emb(w)], -1))
        return F.cross_entropy(self.out(h2[:, T:]).flatten(0, 1).float(), targets.flatten())


class Loop(nn.Module):
    """The same S2VT written as a per-time-step LSTMCell loop."""

    def __init__(self, D, V, E=500, H=1000):
        super().__init__()
        self.proj, self.emb = nn.Linear(D, E), nn.Embedding(V, E)
        self.c1, self.c2 = nn.LSTMCell(E, H), nn.LSTMCell(H + E, H)
        self.out = nn.Linear(H, V)
        self.E, self.H = E, H

    def forward(self, feats, words, targets):
        B, T, _ = feats.shape
        h1 = c1 = h2 = c2 = feats.new_zeros(B, self.H)
        pad = feats.new_zeros(B, self.E)
        x = self.proj(feats)
        for t in range(T):
            h1, c1 = self.c1(x[:, t], (h1, c1))
            h2, c2 = self.c2(torch.cat([h1, pad], 1), (h2, c2))
        logits = []
        for t in range(words.shape[1]):
            h1, c1 = self.c1(pad, (h1, c1))
            h2, c2 = self.c2(torch.cat([h1, self.emb(words[:, t])], 1), (h2, c2))
            logits.append(self.out(h2))
        return F.cross_entropy(torch.stack(logits, 1).flatten(0, 1).float(), targets.flatten())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, n, device):
    step()  # warm-up
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return (time.perf_counter() - t) / n


def main(args):
    device = torch.device(args.device)
    D, V, T, L = args.feat_dim, args.vocab, args.frames, args.words
    ac = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(V - 4)]
    vocab = Vocab(words)
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "f.h5"
        w = FeatureWriter(store_path, {"stream": "rgb", "dim": D})
        items = []
        for i in range(args.videos):
            w.add(f"v{i}", rng.standard_normal((T, D), dtype=np.float32), np.arange(T), {})
            items.append((f"v{i}", [" ".join(rng.choice(words, L)) for _ in range(2)]))
        w.finalize()
        store = FeatureStore(store_path)
        ds = CaptionDataset(FeatureSource(store, [v for v, _ in items], preload=True), items, vocab, T, L)
        dev = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
        print(f"device: {dev}; torch {torch.__version__}; {T} frames x {D}-d, {L} words, E=500, H=1000, "
              f"vocab {V}{', bf16 autocast' if args.amp else ''}")
        for B in args.batch_sizes:
            feats = torch.randn(B, T, D, device=device)
            win = torch.randint(4, V, (B, L + 1), device=device)
            tgt = torch.randint(4, V, (B, L + 1), device=device)
            res = {}
            for name, cls in (("ceiling", Ceiling), ("loop", Loop)):
                if name == "loop" and args.skip_loop:
                    continue
                torch.manual_seed(0)
                m = cls(D, V).to(device)
                opt = torch.optim.Adam(m.parameters(), 1e-4)

                def step():
                    with ac():
                        loss = m(feats, win, tgt)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

                res[name] = B / time_steps(step, args.steps, device)
            torch.manual_seed(0)
            model = S2VT(ModelConfig(feat_dim=D, vocab_size=len(vocab))).to(device)
            opt = torch.optim.Adam(model.parameters(), 1e-4)
            sampler = EpochSampler(len(ds), B, seed=0, drop_last=True)
            loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_captions, num_workers=args.workers,
                                pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
            it = iter(loader)

            def ours():
                nonlocal it
                try:
                    batch = next(it)
                except StopIteration:
                    sampler.set_epoch(sampler.epoch + 1)
                    it = iter(loader)
                    batch = next(it)
                f, fl, wi, tg, wl = batch
                with ac():
                    _, loss = model(f.to(device, non_blocking=True), fl, wi.to(device, non_blocking=True),
                                    tg.to(device, non_blocking=True), wl)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()

            res["s2vt"] = B / time_steps(ours, args.steps, device)
            line = f"batch {B:4d}: s2vt {res['s2vt']:8.1f} samples/s | ceiling {res['ceiling']:8.1f} -> {res['s2vt'] / res['ceiling']:.2f}x"
            if "loop" in res:
                line += f" | per-step loop {res['loop']:8.1f} -> {res['s2vt'] / res['loop']:.2f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main(parse_args())
