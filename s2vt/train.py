"""Training: ``s2vt train``. One function per job, explicit arguments, no globals.

The run directory receives ``config.json``, ``vocab.json``, ``metrics.jsonl``,
``curves.png``, ``last.pt`` (every epoch and at the end) and ``best.pt`` (best
validation score). ``--resume`` continues from ``last.pt`` exactly: same data order,
same dropout masks, bitwise-equal weights on the CPU. Under ``torchrun`` each process
trains on its slice of every global batch (DDP); rank 0 validates and writes.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from . import checkpoint
from .data import CaptionDataset, EpochSampler, FeatureSource, collate_captions
from .datasets import load_corpus
from .errors import S2VTError
from .model import ModelConfig, S2VT
from .store import FeatureStore, signature_diff
from .vocab import Vocab


class TrainingDiverged(S2VTError):
    pass


@dataclass
class TrainConfig:
    dataset: str = "synthetic"        # msvd | mvad | generic | synthetic
    annotations: str = ""             # dataset root (captions and split files)
    features: str = ""                # HDF5 feature store from `s2vt extract`
    out: str = "runs/s2vt"            # run directory
    train_split: str = "train"
    val_split: str = "val"
    epochs: int = 30
    max_steps: int = 0                # stop after this many optimiser steps (0 = no limit)
    batch_size: int = 64
    optimizer: str = "adam"           # adam | sgd
    lr: float = 2e-4                  # adam preset; sgd preset: 0.01 with momentum 0.9
    momentum: float = 0.9             # sgd only
    weight_decay: float = 0.0
    grad_clip: float = 5.0            # max global gradient norm
    schedule: str = "none"            # none | step | cosine (per epoch)
    step_epochs: int = 10             # step schedule: multiply lr by gamma every step_epochs
    gamma: float = 0.5
    min_count: int = 1                # vocabulary: words seen at least this often in training
    val_meteor: bool = True           # select the model on val METEOR of greedy captions (else val loss)
    patience: int = 0                 # early stopping: epochs without improvement (0 = off)
    shuffle_frames: bool = False      # the paper's random-frame-order ablation
    seed: int = 0
    device: str = "cpu"
    amp: bool = False                 # bf16 autocast (CUDA)
    compile: bool = False             # torch.compile the training forward
    workers: int = 0                  # DataLoader worker processes
    preload: bool = True              # read all features into memory first (when they fit)
    log_every: int = 50
    val_every: int = 1                # validate (and maybe save best.pt) every N epochs and after the last
    save_every: int = 0               # also write last.pt every N steps (0 = per epoch only)
    model: ModelConfig = field(default_factory=ModelConfig)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise S2VTError(f"unknown training options: {sorted(unknown)}")
        d = dict(d)
        d["model"] = ModelConfig(**d.get("model", {}))
        return cls(**d)


def dist_info():
    """(rank, world size) from torchrun's environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise S2VTError(f"unknown optimizer {cfg.optimizer!r} (adam or sgd)")


def make_scheduler(opt, cfg: TrainConfig):
    if cfg.schedule == "none":
        f = lambda e: 1.0
    elif cfg.schedule == "step":
        f = lambda e: cfg.gamma ** (e // cfg.step_epochs)
    elif cfg.schedule == "cosine":
        f = lambda e: 0.5 * (1 + math.cos(math.pi * min(e, cfg.epochs) / cfg.epochs))
    else:
        raise S2VTError(f"unknown schedule {cfg.schedule!r} (none, step or cosine)")
    return torch.optim.lr_scheduler.LambdaLR(opt, f)


@torch.inference_mode()
def evaluate_loss(model: S2VT, loader, device) -> float:
    """Mean token NLL over a loader of captions."""
    model.eval()
    tot, n = 0.0, 0
    for feats, flens, win, tgt, wlens in loader:
        _, loss = model(feats.to(device), flens, win.to(device), tgt.to(device), wlens)
        tot += float(loss) * len(feats)
        n += int(wlens.sum())
    return tot / max(n, 1)


def train_one_epoch(model, fwd, loader, optimizer, cfg: TrainConfig, device, state: dict, run: dict, world: int,
                    log, on_step) -> None:
    """One pass over ``loader``; updates ``state`` (step, batch) and ``run`` (non-finite flag, running sums)."""
    model.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp)
    for feats, flens, win, tgt, wlens in loader:
        feats, win, tgt = feats.to(device, non_blocking=True), win.to(device, non_blocking=True), tgt.to(device, non_blocking=True)
        with autocast:
            _, loss = fwd(feats, flens, win, tgt, wlens)
        # per-caption NLL normalised by the global batch: N processes == one process
        scaled = loss * (len(feats) * world / cfg.batch_size) if world > 1 else loss
        optimizer.zero_grad(set_to_none=True)
        scaled.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        run["bad"] |= ~(torch.isfinite(loss.detach()) & torch.isfinite(gnorm))  # no host sync here
        run["loss_sum"] += loss.detach() * len(feats)
        run["tokens"] += int(wlens.sum())
        run["samples"] += len(feats)
        state["step"] += 1
        state["batch"] += 1
        on_step()
        if state["step"] % cfg.log_every == 0:
            log()
        if cfg.max_steps and state["step"] >= cfg.max_steps:
            return


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, meteor=None) -> dict:
    """Train an S2VT model; returns a summary with the best validation score and paths.

    ``meteor``: a running :class:`s2vt.metrics.Meteor` to reuse for validation (else one is started).
    """
    from tqdm import tqdm

    rank, world = dist_info()
    device = torch.device(cfg.device)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    out = Path(cfg.out)
    last_path, best_path = out / "last.pt", out / "best.pt"
    ck = checkpoint.load(last_path) if resume else None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    # ---- data
    corpus = load_corpus(cfg.dataset, cfg.annotations)
    store = FeatureStore(cfg.features)
    train_items = corpus.split_items(cfg.train_split)
    val_items = corpus.split_items(cfg.val_split)
    miss_tr = [v for v, _ in train_items if v not in store]
    miss_va = [v for v, _ in val_items if v not in store]
    train_items = [(v, c) for v, c in train_items if v in store]
    val_items = [(v, c) for v, c in val_items if v in store]
    if miss_tr or miss_va:
        print(f"[s2vt] skipping {len(miss_tr)} train / {len(miss_va)} val videos without features in "
              f"{store.path} (e.g. {(miss_tr + miss_va)[:3]}; see its failed list)")
    if not train_items:
        raise S2VTError(f"no training video of {cfg.dataset} at {cfg.annotations} has features in {store.path}")
    vocab = Vocab.build([c for _, caps in train_items for c in caps], cfg.min_count)  # training split only
    cfg.model.feat_dim = int(store.signature["dim"])
    cfg.model.vocab_size = len(vocab)
    if ck is not None:
        _check_resume(ck, cfg, vocab, store.signature, last_path)
    source = FeatureSource(store, [v for v, _ in train_items + val_items], preload=cfg.preload)
    train_ds = CaptionDataset(source, train_items, vocab, cfg.model.max_frames, cfg.model.max_words,
                              cfg.shuffle_frames, cfg.seed)
    val_ds = CaptionDataset(source, val_items, vocab, cfg.model.max_frames, cfg.model.max_words)
    sampler = EpochSampler(len(train_ds), cfg.batch_size, cfg.seed, rank, world, drop_last=world > 1)
    gen = torch.Generator()  # the loader's own seed source: keeps the global RNG for dropout only
    loader = DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate_captions, num_workers=cfg.workers,
                        pin_memory=device.type == "cuda", generator=gen, persistent_workers=cfg.workers > 0)
    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, collate_fn=collate_captions, generator=gen)

    # ---- model and optimiser
    torch.manual_seed(cfg.seed)
    model = S2VT(cfg.model).to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    state = {"step": 0, "epoch": 0, "batch": 0, "best": -math.inf, "best_epoch": -1, "stale": 0}
    if ck is not None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        state.update({k: ck["state"][k] for k in ("step", "epoch", "batch", "best", "best_epoch", "stale")})
        torch.set_rng_state(ck["rng"]["torch"])
        if device.type == "cuda" and ck["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ck["rng"]["cuda"], device)
    ddp = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    fwd = torch.compile(ddp) if cfg.compile else ddp
    if rank == 0:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        vocab.save(out / "vocab.json")

    own_meteor = False
    if not (cfg.val_meteor and rank == 0 and val_items):
        meteor = None
    elif meteor is None:
        from .metrics import Meteor

        meteor, own_meteor = Meteor(), True
    refs = {v: caps for v, caps in val_items}
    metrics_path = out / "metrics.jsonl"
    if rank == 0 and ck is None and metrics_path.exists():
        metrics_path.unlink()
    run = {"bad": torch.zeros((), dtype=torch.bool, device=device), "loss_sum": torch.zeros((), device=device),
           "tokens": 0, "samples": 0, "t0": time.time()}
    bar = tqdm(total=cfg.max_steps or cfg.epochs * sampler.batches_per_epoch(), initial=state["step"],
               desc="train", unit="step", disable=not progress or rank != 0)

    def check_finite():
        if bool(run["bad"]):
            raise TrainingDiverged(f"loss or gradient norm became NaN/inf before step {state['step']}; "
                                   f"stopped without saving (last good checkpoint: {last_path if last_path.exists() else 'none'}). "
                                   f"Try a lower --lr or --grad-clip.")

    def log():
        check_finite()
        el = time.time() - run["t0"]
        tok_loss = float(run["loss_sum"]) / max(run["tokens"], 1)  # summed NLL / tokens
        rec = {"step": state["step"], "epoch": state["epoch"], "train_loss": tok_loss,
               "lr": optimizer.param_groups[0]["lr"], "samples_per_s": run["samples"] * world / max(el, 1e-9)}
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        bar.set_postfix(loss=f"{tok_loss:.3f}", samples_s=f"{rec['samples_per_s']:.0f}")
        run.update(loss_sum=torch.zeros((), device=device), tokens=0, samples=0, t0=time.time())

    def snapshot() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "state": dict(state), "config": asdict(cfg), "vocab": vocab.to_list(),
                "feature_signature": store.signature,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}}

    def save_last():
        check_finite()
        if rank == 0:
            checkpoint.save(snapshot(), last_path)

    def on_step():
        bar.update()
        if cfg.save_every and state["step"] % cfg.save_every == 0:
            save_last()

    try:
        while state["epoch"] < cfg.epochs and not (cfg.max_steps and state["step"] >= cfg.max_steps):
            sampler.set_epoch(state["epoch"], state["batch"])
            train_ds.set_epoch(state["epoch"])
            train_one_epoch(model, fwd, loader, optimizer, cfg, device, state, run, world, log, on_step)
            if state["batch"] < sampler.batches_per_epoch():  # stopped mid-epoch (max_steps)
                break
            check_finite()
            state["epoch"] += 1
            state["batch"] = 0
            scheduler.step()
            due = state["epoch"] % cfg.val_every == 0 or state["epoch"] >= cfg.epochs
            if rank == 0 and not due:
                checkpoint.save(snapshot(), last_path)
            if rank == 0 and due:
                rec = validate(model, val_loader, source, refs, vocab, device, meteor, cfg)
                rec.update(epoch=state["epoch"], step=state["step"])
                score = rec["val_meteor"] if meteor is not None else -rec["val_loss"]
                improved = score > state["best"]
                if improved:
                    state.update(best=score, best_epoch=state["epoch"], stale=0)
                else:
                    state["stale"] += 1
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                snap = snapshot()
                checkpoint.save(snap, last_path)
                if improved:
                    checkpoint.save(snap, best_path)
                plot_curves(metrics_path, out / "curves.png")
                bar.write(f"epoch {state['epoch']}: val loss {rec['val_loss']:.3f}"
                          + (f", val METEOR {100 * rec['val_meteor']:.1f}" if meteor is not None else "")
                          + (" (best)" if improved else ""))
            if world > 1:
                import torch.distributed as dist

                flag = torch.tensor([state["stale"]], device=device)
                dist.broadcast(flag, 0)
                state["stale"] = int(flag)
            if cfg.patience and state["stale"] >= cfg.patience:
                bar.write(f"early stop: no improvement for {cfg.patience} epochs")
                break
        save_last()
        if rank == 0 and not best_path.exists():
            checkpoint.save(snapshot(), best_path)
    finally:
        bar.close()
        if own_meteor:
            meteor.close()
    return {"out": str(out), "best": state["best"], "best_epoch": state["best_epoch"], "steps": state["step"],
            "best_path": str(best_path), "last_path": str(last_path)}


def validate(model, val_loader, source, refs, vocab, device, meteor, cfg: TrainConfig) -> dict:
    rec = {"val_loss": evaluate_loss(model, val_loader, device) if len(val_loader.dataset) else float("nan")}
    if meteor is not None:
        from .metrics import score

        from .evaluate import caption_features

        model.eval()
        caps = caption_features(model, [source], [cfg.model.max_frames], list(refs), vocab, device)
        corpus, _ = score(refs, caps, meteor=meteor)
        rec["val_meteor"] = corpus["METEOR"]
        rec["val_cider"] = corpus["CIDEr"]
    return rec


def _check_resume(ck: dict, cfg: TrainConfig, vocab: Vocab, signature: dict, path: Path) -> None:
    """Refuse to resume into a different architecture, vocabulary or feature extraction."""
    if ck["vocab"] != vocab.to_list():
        raise S2VTError(f"cannot resume {path}: the vocabulary differs ({len(ck['vocab'])} -> {len(vocab)} words: "
                        "different training captions or --min-count)")
    old = ck["config"]["model"]
    new = asdict(cfg.model)
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]
    if diff:
        raise S2VTError(f"cannot resume {path}: the model differs ({'; '.join(diff)})")
    sd = signature_diff(signature, ck["feature_signature"])
    if sd:
        raise S2VTError(f"cannot resume {path}: features were extracted differently ({'; '.join(sd)})")


def plot_curves(metrics_path: Path, png: Path) -> None:
    """Training loss per log interval, validation loss and METEOR per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(l) for l in open(metrics_path)]
    tr = [(r["step"], r["train_loss"]) for r in recs if "train_loss" in r]
    va = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
    me = [(r["step"], 100 * r["val_meteor"]) for r in recs if "val_meteor" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if tr:
        axes[0].plot(*zip(*tr), label="train")
    if va:
        axes[0].plot(*zip(*va), "o-", label="val")
    axes[0].set(xlabel="step", ylabel="loss (per token)", title="loss")
    axes[0].legend()
    if me:
        axes[1].plot(*zip(*me), "o-")
    axes[1].set(xlabel="step", ylabel="METEOR", title="val METEOR (greedy)")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
