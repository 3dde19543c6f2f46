#!/usr/bin/env python
"""Training samples/s at the paper's shapes: our training path against baselines run in the same process.

Per batch size, four figures (samples/s):

* ceiling: a bare fused step of the same shapes - linear 4096->500, nn.LSTM(500,1000),
  nn.LSTM(1500,1000) over the padded (frames + words) sequence, linear to the vocabulary,
  cross-entropy, backward, Adam - with tensors already on the device;
* loop: the same model written with per-time-step nn.LSTMCell calls (as public
  re-implementations are); null with --skip-loop;
* model_alone: our model (packed, exact per-video lengths) and the optimiser step
  ``s2vt train`` takes, on one batch already on the device;
* end_to_end: the same, with every batch built by the batch stream ``s2vt train`` uses
  (the feature bank when the features fit on the device, else the host path) from an HDF5
  feature store of --videos generated videos.

  python scripts/bench_train.py --batch-sizes 64 --steps 3                 # CPU, paper shapes
  python scripts/bench_train.py --feat-dim 1024 --vocab 2000 --batch-sizes 32 --json
  python scripts/bench_train.py --device cuda --amp --batch-sizes 64 256 --steps 20 --json
  python scripts/bench_train.py --objective scst --batch-sizes 32 --json   # adds "scst" figures

With ``--objective scst`` each batch size also gets ``scst``: seconds of one self-critical
step (K samples and the greedy caption per video, CIDEr-D rewards, teacher-forced log p, backward,
Adam), of the CIDEr-D rewards alone (B*K samples + B greedy captions against the references,
s2vt.training.scst.CiderD), and of our cross-entropy step on the same batch.
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from s2vt.training.batches import BatchStream, CaptionTable, EpochSampler, FeatureBank, place_bank
from s2vt.runtime.devices import configure, resolve, synchronize
from s2vt.runtime.devices import name as device_name
from s2vt.runtime.hostmem import keep_freed_memory
from s2vt.models.s2vt import run_lstm
from s2vt.models.s2vt import ModelConfig, S2VT
from s2vt.features.store import FeatureStore, FeatureWriter
from s2vt.training.config import TrainConfig
from s2vt.training.loop import make_optimizer, train_step
from s2vt.training.objectives import CrossEntropy
from s2vt.data.vocab import Vocab


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64])
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (after 1 warm-up)")
    p.add_argument("--frames", type=int, default=80)
    p.add_argument("--words", type=int, default=20)
    p.add_argument("--feat-dim", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=13000)
    p.add_argument("--videos", type=int, default=96, help="videos in the generated feature store")
    p.add_argument("--captions", type=int, default=2, help="captions per video")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (and a bf16 feature bank)")
    p.add_argument("--skip-loop", action="store_true", help="do not time the per-step LSTMCell loop")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    p.add_argument("--objective", choices=["xe", "scst"], default="xe", help="scst: also time the self-critical step")
    p.add_argument("--scst-samples", type=int, default=5, help="captions sampled per video (--objective scst)")
    p.add_argument("--default-allocator", action="store_true",
                   help="keep glibc's malloc defaults (s2vt train keeps freed memory on the CPU: s2vt.runtime.hostmem)")
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
        h1, _ = run_lstm(self.l1, x1)  # the LSTMs in fp32, as s2vt.models.s2vt runs them
        w = torch.cat([words.new_zeros(B, T), words], 1)
        h2, _ = run_lstm(self.l2, torch.cat([h1, self.emb(w)], -1))
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
    synchronize(device)  # that device's queue, not the current device's


def time_steps(step, n, device):
    step()  # warm-up
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return (time.perf_counter() - t) / n


def make_store(path: Path, args, words):
    """A feature store of --videos videos with --frames frames and --captions captions of --words words."""
    rng = np.random.default_rng(0)
    w = FeatureWriter(path, {"stream": "rgb", "dim": args.feat_dim})
    items = []
    for i in range(args.videos):
        w.add(f"v{i}", rng.standard_normal((args.frames, args.feat_dim), dtype=np.float32), np.arange(args.frames), {})
        items.append((f"v{i}", [" ".join(rng.choice(words, args.words)) for _ in range(args.captions)]))
    w.finalize()
    return FeatureStore(path), items


def bench_baselines(B, args, device, ac) -> dict:
    D, V, T, L = args.feat_dim, args.vocab, args.frames, args.words
    feats = torch.randn(B, T, D, device=device)
    win = torch.randint(4, V, (B, L + 1), device=device)
    tgt = torch.randint(4, V, (B, L + 1), device=device)
    res = {"loop": None}
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
    return res


def bench_ours(B, args, device, stream, n_samples, vocab_size) -> dict:
    """model_alone and end_to_end with the optimiser step s2vt train takes (train_step)."""
    cfg = TrainConfig.from_dict(dict(batch_size=B, lr=1e-4, amp=args.amp, device=str(device)))
    torch.manual_seed(0)
    model = S2VT(ModelConfig(feat_dim=args.feat_dim, vocab_size=vocab_size)).to(device).train()
    opt = make_optimizer(model, cfg)
    sampler = EpochSampler(n_samples, B, seed=0)
    state = {"epoch": 0, "it": iter(())}

    def next_batch():
        for _ in range(2):
            try:
                return next(state["it"])
            except StopIteration:  # a new epoch: works whatever the batch size
                state["epoch"] += 1
                state["it"] = stream.epoch(sampler.batches(state["epoch"]), state["epoch"])
        raise RuntimeError("the store holds no sample")

    fixed = next_batch()
    xe = CrossEntropy(model)
    alone = lambda: train_step(model, xe, opt, fixed, cfg)
    e2e = lambda: train_step(model, xe, opt, next_batch(), cfg)
    alone(), e2e()  # warm-up
    spent = {"model_alone": 0.0, "end_to_end": 0.0}
    for _ in range(args.steps):  # interleaved, so a busy moment of the machine hits both alike
        for name, step in (("model_alone", alone), ("end_to_end", e2e)):
            sync(device)
            t = time.perf_counter()
            step()
            sync(device)
            spent[name] += time.perf_counter() - t
    return {k: B * args.steps / v for k, v in spent.items()}


def bench_scst(B, args, device, stream, n_samples, vocab, items) -> dict:
    """Seconds per SCST step, per CIDEr-D reward computation, per cross-entropy step (same model, batch B)."""
    from s2vt.training.scst import CiderD, SCSTLoss, reference_ids

    cfg = TrainConfig.from_dict(dict(batch_size=B, lr=1e-5, amp=args.amp, device=str(device)))
    torch.manual_seed(0)
    model = S2VT(ModelConfig(feat_dim=args.feat_dim, vocab_size=len(vocab))).to(device).train()
    opt = make_optimizer(model, cfg)
    cider = CiderD(reference_ids([caps for _, caps in items], vocab))
    K, Lm = args.scst_samples, args.words + 1
    loss = SCSTLoss(model, cider, K, Lm)
    batch = next(iter(stream.epoch(EpochSampler(n_samples, B, seed=0).batches(0), 0)))
    batch = batch.with_rows(torch.arange(len(batch)) % len(items))  # each video's reward row
    g = torch.Generator().manual_seed(0)
    samples = torch.randint(4, len(vocab), (len(batch) * (K + 1), Lm), generator=g)
    rows = torch.arange(len(batch) * (K + 1)) % len(items)
    variants = {"step_s": lambda: train_step(model, loss, opt, batch, cfg),
                "cider_s": lambda: cider(samples, rows),
                "xe_step_s": lambda: train_step(model, CrossEntropy(model), opt, batch, cfg)}
    spent = dict.fromkeys(variants, 0.0)
    for f in variants.values():
        f()  # warm-up
    for _ in range(args.steps):
        for name, f in variants.items():
            sync(device)
            t = time.perf_counter()
            f()
            sync(device)
            spent[name] += time.perf_counter() - t
    res = {k: v / args.steps for k, v in spent.items()}
    res.update(samples=K, cider_over_xe_step=res["cider_s"] / res["xe_step_s"],
               cider_over_scst_step=res["cider_s"] / res["step_s"])
    return res


def main(args):
    device = resolve(args.device)
    if args.default_allocator:
        os.environ["S2VT_KEEP_FREED_MEMORY"] = "0"  # s2vt.runtime.hostmem then keeps glibc's defaults
    configure(device, fp32=not args.amp)  # as s2vt train does
    if device.type == "cpu":
        keep_freed_memory()  # as s2vt train does
    ac = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
    words = [f"w{i}" for i in range(args.vocab - 4)]
    vocab = Vocab(words)
    dtype = torch.bfloat16 if args.amp else torch.float32
    dev = device_name(device)
    print(f"device: {dev}; torch {torch.__version__}; {args.frames} frames x {args.feat_dim}-d, {args.words} words, "
          f"E=500, H=1000, vocab {args.vocab}{', bf16 autocast' if args.amp else ''}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        store, items = make_store(Path(tmp) / "f.h5", args, words)
        vids = [v for v, _ in items]
        table = CaptionTable(items, vocab, args.words, vids)
        place = place_bank(FeatureBank.nbytes(store, vids, args.frames, dtype), device)
        bank = None if place == "store" else FeatureBank.build(store, vids, args.frames,
                                                              device if place == "device" else "cpu", dtype)
        stream = BatchStream(table, bank, device, args.frames, store=store, dtype=dtype)
        print(f"batch path: {'feature bank on ' + str(device) if place == 'device' else place + ' path'}")
        for B in args.batch_sizes:
            res = {**bench_baselines(B, args, device, ac), **bench_ours(B, args, device, stream, len(table), len(vocab))}
            results[str(B)] = res
            line = (f"batch {B:4d}: end_to_end {res['end_to_end']:8.1f} | model_alone {res['model_alone']:8.1f} "
                    f"-> e2e/model {res['end_to_end'] / res['model_alone']:.2f}x | ceiling {res['ceiling']:8.1f} "
                    f"-> e2e/ceiling {res['end_to_end'] / res['ceiling']:.2f}x")
            if res["loop"]:
                line += f" | loop {res['loop']:8.1f} -> e2e/loop {res['end_to_end'] / res['loop']:.2f}x"
            print(line, flush=True)
            if args.objective == "scst":
                res["scst"] = sc = bench_scst(B, args, device, stream, len(table), vocab, items)
                print(f"batch {B:4d} scst (K={sc['samples']}): step {sc['step_s']:.3f} s | CIDEr-D rewards "
                      f"{sc['cider_s']:.4f} s ({sc['cider_over_xe_step']:.2f}x our cross-entropy step of "
                      f"{sc['xe_step_s']:.3f} s)", flush=True)
    if args.json:
        print(json.dumps({"device": dev, "torch": torch.__version__, "amp": args.amp, "results": results}))


if __name__ == "__main__":
    main(parse_args())
