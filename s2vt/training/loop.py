"""Training: ``s2vt train``, in the shape of torchvision's reference scripts.

:func:`train` sets up (data, model, optimiser, resume), then runs a short epoch loop over
:func:`train_one_epoch` and :func:`validate`, each returning what it measured. The loop's
progress lives in one small :class:`LoopState`; the caller's config is never mutated.

The run directory receives ``config.json`` (the resolved config), ``vocab.json``,
``metrics.jsonl``, ``curves.png``, ``last.pt`` (every epoch and at the end) and ``best.pt``
(best validation score). ``--resume`` continues from ``last.pt`` exactly: same data order,
same dropout masks, bitwise-equal weights on the CPU. Under ``torchrun`` each process
trains on its slice of every global batch (DDP); rank 0 validates and writes.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from s2vt.training.batches import (BatchStream, CaptionTable, EpochSampler, FeatureBank, check_batch_size,
                                  num_frames, place_bank)
from s2vt.features.frames import StoreFeatures
from s2vt.captioning.captioner import Captioner
from s2vt.models.checkpoint import Checkpoint, LoopState, differences, vocab_difference
from s2vt.runtime.errors import ConfigError
from s2vt.runtime.devices import configure, resolve as resolve_device, torchrun_world
from s2vt.data.corpora import DATASETS, load_corpus
from s2vt.training.objectives import CrossEntropy
from s2vt.training.config import TrainConfig, flat
from s2vt.training.recipes import few_steps_hint
from s2vt.runtime.errors import S2VTError
from s2vt.runtime.fileio import check_not_other_kind, folder_lock, write_json
from s2vt.runtime.hostmem import keep_freed_memory
from s2vt.runtime.console import say
from s2vt.models.registry import build_model
from s2vt.features.signature import check_complete
from s2vt.features.store import FeatureStore, signature_diff
from s2vt.data.vocab import Vocab

# options a resumed run may change; any other difference from last.pt is refused
RESUMABLE_CHANGES = {"epochs", "max_steps", "log_every", "save_every", "val_every", "patience", "device",
                     "dist_timeout", "val_timeout", "decoding", "tensorboard", "out", "annotations", "features"}  # paths may move; contents are checked
RUN_FILES = ("config.json", "vocab.json", "metrics.jsonl", "curves.png")


class TrainingDiverged(S2VTError):
    """Loss or gradients became non-finite: a failure while running (exit status 1)."""

    exit_code = 1


@dataclass
class TrainData:
    vocab: Vocab
    table: CaptionTable
    stream: BatchStream
    sampler: EpochSampler
    val_table: Optional[CaptionTable]
    val_stream: Optional[BatchStream]
    val_refs: Dict[str, List[str]]
    store: FeatureStore


def dist_info():
    """(rank, world size) from torchrun's environment; (0, 1) otherwise."""
    return torchrun_world() or (0, 1)


def optimizer_flags(device: torch.device) -> dict:
    """The optimiser's implementation on ``device``: the fused CUDA kernels on a GPU, the default elsewhere."""
    return {"fused": True} if device.type == "cuda" else {"fused": None}


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    fused, o = optimizer_flags(model_device(model)), cfg.optim
    if o.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay, **fused)
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, **fused)


def make_scheduler(opt, cfg: TrainConfig):
    o = cfg.optim
    if o.schedule == "step":
        f = lambda e: o.gamma ** (e // o.step_epochs)
    elif o.schedule == "cosine":
        f = lambda e: 0.5 * (1 + math.cos(math.pi * min(e, cfg.epochs) / cfg.epochs))
    else:
        f = lambda e: 1.0
    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def train_step(model, objective, optimizer, batch, cfg: TrainConfig, world: int = 1):
    """One optimiser step of ``objective`` (s2vt.training.objectives) on ``batch``; returns (loss, finite
    flag) as device tensors (no host sync)."""
    with torch.autocast(batch.feats.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
        loss = objective(batch)
    # per-caption NLL normalised by the global batch: N processes == one process
    scaled = loss * (len(batch) * world / cfg.batch_size) if world > 1 else loss
    optimizer.zero_grad(set_to_none=True)
    scaled.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip, foreach=True)
    optimizer.step()
    return loss.detach(), torch.isfinite(loss.detach()) & torch.isfinite(gnorm)


def train_one_epoch(model, objective, optimizer, batches, cfg: TrainConfig, state: LoopState, world: int = 1,
                    on_step=None) -> dict:
    """Steps over ``batches`` (the rest of this epoch); returns loss sums and counts of the pass.

    Stops early at ``cfg.max_steps``. ``on_step(state, stats)`` runs after every step (logging, saving).
    """
    model.train()
    device = next(model.parameters()).device
    stats = {"loss_sum": torch.zeros((), device=device), "ok": torch.ones((), dtype=torch.bool, device=device),
             "tokens": 0, "samples": 0, "t0": time.time()}
    for batch in batches:
        loss, ok = train_step(model, objective, optimizer, batch, cfg, world)
        stats["ok"] &= ok
        stats["loss_sum"] += loss * len(batch)
        stats["tokens"] += int(batch.word_lens.sum())
        stats["samples"] += len(batch)
        state.step += 1
        state.batch += 1
        if on_step is not None:
            on_step(state, stats)
        if cfg.max_steps and state.step >= cfg.max_steps:
            break
    return stats


@torch.inference_mode()
def validate(model, data: TrainData, cfg: TrainConfig, meteor=None) -> dict:
    """Val loss (mean token NLL) and, with ``meteor``, METEOR/CIDEr of greedy captions."""
    from s2vt.evaluation.metrics import score

    model.eval()
    rec: dict = {"val_loss": float("nan")}
    if data.val_stream is not None:
        tot, n = torch.zeros((), device=next(model.parameters()).device), 0
        order = [list(range(i, min(i + cfg.batch_size, len(data.val_table))))
                 for i in range(0, len(data.val_table), cfg.batch_size)]
        for b in data.val_stream.epoch(order, 0):
            with torch.autocast(b.feats.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                _, loss = model(b.feats, b.feat_lens, b.words_in, b.targets, b.word_lens, b.device_lens)
            tot += loss.float() * len(b)
            n += int(b.word_lens.sum())
        rec["val_loss"] = float(tot) / max(n, 1)
    if meteor is not None and data.val_refs:
        bank = data.stream.bank
        source = bank.source(data.table.vids) if bank is not None else StoreFeatures(data.store, cfg.model.max_frames)
        cap = Captioner([model], [source], data.vocab, model_device(model))
        caps = cap.caption(list(data.val_refs), decoding=cfg.decoding, beam=cfg.validation.select_beam, batch_size=256)
        corpus, _ = score(data.val_refs, caps, meteor=meteor)
        rec.update(val_meteor=corpus["METEOR"], val_cider=corpus["CIDEr"], val_beam=cfg.validation.select_beam)
    return rec


def model_device(model) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------- setup

def load_data(cfg: TrainConfig, device: torch.device, rank: int, world: int, log=say) -> TrainData:
    """Captions, vocabulary (training split only) and a batch stream over the feature bank."""
    if not cfg.dataset:
        raise ConfigError(f"--dataset is required: the format of --annotations ({', '.join(DATASETS)})")
    corpus = load_corpus(cfg.dataset, cfg.annotations)
    store = FeatureStore(cfg.features)
    check_complete(store.signature, store.path)
    train_all = corpus.split_items(cfg.train_split)
    val_all = corpus.split_items(cfg.val_split) if cfg.val_split else []
    frames = {v: num_frames(store, v) for v, _ in train_all + val_all if v in store}  # shapes, read once
    usable = lambda items: [(v, c) for v, c in items if frames.get(v, 0) > 0]
    train_items, val_items = usable(train_all), usable(val_all)
    kept = {v for v, _ in train_items + val_items}
    missing = [v for v, _ in train_all + val_all if v not in kept]
    if missing:
        log(f"[s2vt] skipping {len(train_all) - len(train_items)} train / {len(val_all) - len(val_items)} val "
            f"videos without features in {store.path} (e.g. {missing[:3]}; see its failed list)")
    if not train_items:
        raise S2VTError(f"no training video of {cfg.dataset} at {cfg.annotations} has features in {store.path}")
    if not val_items:
        log(f"[s2vt] no validation: split {cfg.val_split!r} has no video with features; the last epoch is kept")
    vocab = Vocab.build([c for _, caps in train_items for c in caps], cfg.min_count)
    if len(vocab) <= 4:
        raise S2VTError(f"the vocabulary is empty: no word of the {cfg.train_split} captions is seen "
                        f"--min-count {cfg.min_count} times; lower --min-count")
    vids = list(dict.fromkeys(v for v, _ in train_items + val_items))  # one bank row per video
    table = CaptionTable(train_items, vocab, cfg.model.max_words, vids)
    if len(table) == 0:
        raise S2VTError(f"no training caption has a word in the vocabulary (check --min-count, {cfg.annotations})")
    val_table = CaptionTable(val_items, vocab, cfg.model.max_words, vids) if val_items else None
    dtype = torch.bfloat16 if cfg.amp else torch.float32
    cap = cfg.model.max_frames
    bank = build_bank(store, vids, np.asarray([min(frames[v], cap) for v in vids], np.int64), cap, device, dtype, log)
    stream = lambda t, shuffle: BatchStream(t, bank, device, cfg.model.max_frames, shuffle, cfg.seed, store, dtype)
    sampler = EpochSampler(len(table), cfg.batch_size, cfg.seed, rank, world, drop_last=world > 1)
    return TrainData(vocab, table, stream(table, cfg.shuffle_frames), sampler, val_table,
                     stream(val_table, False) if val_table else None, {v: c for v, c in val_items}, store)


def build_bank(store: FeatureStore, vids: List[str], lengths, max_frames: int, device, dtype,
               log) -> Optional[FeatureBank]:
    """The feature bank on the device when it fits, else in host memory; None: read the store per batch.

    ``lengths``: (V,) frames of each video after capping to ``max_frames``."""
    place = place_bank(FeatureBank.nbytes(store, vids, max_frames, dtype, lengths), device)
    if place == "store":
        log(f"[s2vt] features of {len(vids)} videos do not fit in memory: reading {store.path} for every batch")
        return None
    if place == "host":
        log(f"[s2vt] features do not fit in {device} memory: keeping them in host memory")
    return FeatureBank.build(store, vids, max_frames, device if place == "device" else "cpu", dtype, lengths=lengths)


def under_torchrun(world: int) -> bool:
    """Whether this process trains in a process group: several processes, or one started by torchrun
    (``torchrun --nproc_per_node 1`` runs the same DDP code as 8 processes do)."""
    return world > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def setup_distributed(device: torch.device, world: int, timeout: int, val_timeout: int):
    """Join the training group on ``device`` (already ``cuda:LOCAL_RANK`` on a GPU); returns the control
    group: gloo, with ``val_timeout``, for the waits on rank 0 (validation, saving), so that no
    collective of the NCCL group is pending while rank 0 works alone (its watchdog would end the run)."""
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as e:
            raise S2VTError(f"could not join the {world}-process training group (RANK={os.environ.get('RANK')}, "
                            f"MASTER_ADDR={os.environ.get('MASTER_ADDR')}): {str(e).splitlines()[0][:200]}. "
                            "Start every process with torchrun, or unset RANK/WORLD_SIZE for one process.")
    return dist.new_group(backend="gloo", timeout=timedelta(seconds=max(timeout, val_timeout)))


def leave_distributed(wait: bool, control) -> None:
    """Tear the process group down so that no communication thread outlives the interpreter; ``wait``: first
    wait for every peer to finish (not after an error, when a peer may never arrive)."""
    import torch.distributed as dist

    try:
        if wait:
            dist.barrier(group=control)
    finally:
        dist.destroy_process_group()


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to replace another run's checkpoints unless asked to resume or overwrite."""
    check_not_other_kind(out)
    if resume and overwrite:
        raise S2VTError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    if resume:
        if not (out / "last.pt").is_file():
            raise S2VTError(f"--resume: {out / 'last.pt'} does not exist (train without --resume first)")
        return
    existing = [p.name for p in (out / "last.pt", out / "best.pt") if p.exists()]
    if existing and not overwrite:
        raise S2VTError(f"{out} already holds a run ({', '.join(existing)}): pass --resume to continue it, "
                        "--overwrite to replace it, or choose another --out")
    foreign = [n for n in RUN_FILES if (out / n).exists()]
    if foreign and not existing and not overwrite:
        raise S2VTError(f"{out} holds files a run would replace ({', '.join(foreign)}) but no checkpoint: "
                        "choose another --out, or pass --overwrite")


def check_resume(ck: Checkpoint, cfg: TrainConfig, vocab: Vocab, signature: dict, path: Path) -> None:
    """Refuse to resume into a different architecture, vocabulary, feature extraction or recipe."""
    if ck.vocab != vocab:
        raise S2VTError(f"cannot resume {path}: {vocab_difference(ck.vocab, vocab)}")
    diff = differences(asdict(ck.model_config), asdict(cfg.model))
    if diff:
        raise S2VTError(f"cannot resume {path}: the model differs ({'; '.join(diff)})")
    sd = signature_diff(signature, ck.feature_signature)
    if sd:
        raise S2VTError(f"cannot resume {path}: features were extracted differently ({'; '.join(sd)})")
    was, now = flat(ck.train_config), cfg.to_dict()  # compared option by option, whichever layout was recorded
    recipe = differences(was, {k: v for k, v in now.items() if k in was}, skip=RESUMABLE_CHANGES | {"model"},
                         as_flags=True)
    if recipe:
        raise S2VTError(f"cannot resume {path} with a different recipe ({'; '.join(recipe)}); "
                        f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change on --resume")


def snapshot(model, optimizer, scheduler, state: LoopState, cfg: TrainConfig, data: TrainData) -> Checkpoint:
    device = model_device(model)
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    return Checkpoint(cfg.model, model.state_dict(), data.vocab, data.store.signature, cfg.decoding,
                      train_config=cfg.to_dict(),
                      state=asdict(state), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=rng)


def restore(ck: Checkpoint, model, optimizer, scheduler, device) -> LoopState:
    model.load_state_dict(ck.weights)
    # the saved groups carry the implementation of the device they ran on, and load_state_dict places
    # each state tensor by them (a fused optimiser's ``step`` on the parameter's device): this device's
    saved = dict(ck.optimizer, param_groups=[{**g, **optimizer_flags(device)} for g in ck.optimizer["param_groups"]])
    optimizer.load_state_dict(saved)
    scheduler.load_state_dict(ck.scheduler)
    torch.set_rng_state(ck.rng["torch"])
    if device.type == "cuda" and ck.rng.get("cuda") is not None:
        torch.cuda.set_rng_state(ck.rng["cuda"], device)
    return LoopState(**ck.state)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, meteor=None, overwrite: bool = False) -> dict:
    """Train an S2VT model; returns a summary with the best validation score and paths.

    ``meteor``: a running :class:`s2vt.evaluation.metrics.Meteor` to reuse for validation (else one is started).
    """
    cfg = cfg.resolved()
    rank, world = dist_info()
    check_batch_size(cfg.batch_size, world)
    device = resolve_device(cfg.device)  # cuda:LOCAL_RANK under torchrun
    if cfg.amp and device.type != "cuda":
        raise ConfigError("--amp (bf16) is for CUDA devices; on the CPU it is slower than fp32: drop --amp")
    configure(device, fp32=not cfg.amp)
    if device.type == "cpu":
        keep_freed_memory()  # about 1.15x the samples/s on the CPU (BENCHMARKS.md)
    if not under_torchrun(world):
        return _train(cfg, device, rank, world, resume, progress, meteor, overwrite)
    import torch.distributed as dist

    joined = not dist.is_initialized()  # a group the caller made is the caller's to close
    control = setup_distributed(device, world, cfg.distributed.dist_timeout, cfg.distributed.val_timeout)
    finished = False
    try:
        result = _train(cfg, device, rank, world, resume, progress, meteor, overwrite, control)
        finished = True
        return result
    finally:
        if joined:
            leave_distributed(finished, control)


def _train(cfg: TrainConfig, device: torch.device, rank: int, world: int, resume: bool, progress: bool, meteor,
           overwrite: bool, control=None) -> dict:
    """train() once the device (and, under torchrun, the process group) is set up: rank 0 holds the
    run folder's lock for the whole run, so a second run on the same --out stops at once."""
    out = Path(cfg.out)
    with folder_lock(out) if rank == 0 else contextlib.nullcontext():  # a file at --out: refused by name
        return _train_locked(cfg, device, rank, world, resume, progress, meteor, overwrite, control)


def _train_locked(cfg: TrainConfig, device: torch.device, rank: int, world: int, resume: bool, progress: bool,
                  meteor, overwrite: bool, control=None) -> dict:
    from tqdm import tqdm

    out = Path(cfg.out)
    if cfg.scst.init and out.is_dir() and Path(cfg.scst.init).resolve().parent == out.resolve():
        raise S2VTError(f"--out {out} holds --init {cfg.scst.init}: a run never writes over the checkpoint it starts "
                        "from; choose another --out")
    check_run_folder(out, resume, overwrite)
    ck = Checkpoint.load(out / "last.pt") if resume else None
    data = load_data(cfg, device, rank, world, log=say if rank == 0 else (lambda *a: None))
    hint = few_steps_hint(len(data.table), cfg.batch_size, cfg.epochs, cfg.recipe)
    if hint and rank == 0 and cfg.objective == "xe":
        say(f"[s2vt] note: {hint}")
    cfg.model.feat_dim, cfg.model.vocab_size = int(data.store.signature["dim"]), len(data.vocab)  # our own copy
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    scst = None
    if cfg.objective == "scst":
        from s2vt.training import scst as scst_mod

        scst, data = scst_mod.setup(cfg, data, model, device, rank, world)
    if ck is not None:
        check_resume(ck, cfg, data.vocab, data.store.signature, out / "last.pt")
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    state = restore(ck, model, optimizer, scheduler, device) if ck is not None else LoopState()
    if state.epoch >= cfg.epochs or (cfg.max_steps and state.step >= cfg.max_steps):
        print(f"[s2vt] nothing to train: {out / 'last.pt'} has finished {state.epoch} epochs / {state.step} steps "
              f"(--epochs {cfg.epochs}, --max-steps {cfg.max_steps}); raise them to train on")
        return summary(out, state)
    net = model
    if control is not None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # no device_ids: the batch is already on the device, and DDP would move the CPU lengths there too
        net = DDP(model)
    objective = scst if scst is not None else CrossEntropy(net)  # SCST runs in one process (scst.setup refuses torchrun)
    writer = RunWriter(out, cfg, data, rank, fresh=ck is None)
    writer.extra_log = scst.pop_stats if scst is not None else None
    if meteor is None and cfg.validation.val_meteor and rank == 0 and data.val_refs:
        from s2vt.evaluation.metrics import shared_meteor

        meteor = shared_meteor()
    meteor = meteor if cfg.validation.val_meteor and rank == 0 else None
    bar = tqdm(total=cfg.max_steps or cfg.epochs * data.sampler.batches_per_epoch(), initial=state.step,
               desc="train", unit="step", disable=not progress or rank != 0)
    save = lambda: writer.save_last(snapshot(model, optimizer, scheduler, state, cfg, data), state)
    try:
        run_epochs(model, objective, optimizer, scheduler, data, cfg, state, world, writer, bar, save, meteor, control)
        if not writer.best_path.exists() and rank == 0:  # no validation ran: the last model is the one kept
            snapshot(model, optimizer, scheduler, state, cfg, data).save(writer.best_path)
    finally:
        bar.close()
    return summary(out, state, writer.val_seconds)


def summary(out: Path, state: LoopState, val_s: float = 0.0) -> dict:
    """What train() returns (and the CLI prints as JSON): best score (None if no validation ran), paths,
    and ``val_s``, the seconds this call spent validating."""
    return {"out": str(out), "best": state.best if math.isfinite(state.best) else None,
            "best_epoch": state.best_epoch, "steps": state.step, "best_path": str(out / "best.pt"),
            "last_path": str(out / "last.pt"), "val_s": val_s}


def run_epochs(model, objective, optimizer, scheduler, data: TrainData, cfg: TrainConfig, state: LoopState, world: int,
               writer: "RunWriter", bar, save, meteor, control=None) -> None:
    """The epoch loop: train, validate when due, keep the best, stop early on patience."""
    def on_step(st: LoopState, stats: dict) -> None:
        bar.update()
        if st.step % cfg.logging.log_every == 0 or st.batch == data.sampler.batches_per_epoch():  # a point per epoch at least
            writer.log_train(st, stats, optimizer, world, bar)
        if cfg.logging.save_every and st.step % cfg.logging.save_every == 0:
            save()

    while state.epoch < cfg.epochs and not (cfg.max_steps and state.step >= cfg.max_steps):
        batches = data.stream.epoch(data.sampler.batches(state.epoch, state.batch), state.epoch)
        stats = train_one_epoch(model, objective, optimizer, batches, cfg, state, world, on_step)
        writer.check_finite(stats, state)
        if state.batch < data.sampler.batches_per_epoch():  # stopped mid-epoch (max_steps)
            break
        state.epoch, state.batch = state.epoch + 1, 0
        scheduler.step()
        if state.epoch % cfg.validation.val_every == 0 or state.epoch >= cfg.epochs:
            t = time.time()
            rec = validate(model, data, cfg, meteor) if writer.rank == 0 else {}
            writer.select(rec, state, meteor is not None, time.time() - t, bar)
            if writer.rank == 0:
                ck = snapshot(model, optimizer, scheduler, state, cfg, data)
                writer.save_epoch(ck, improved=state.best_epoch == state.epoch)
        elif writer.rank == 0:
            save()
        if control is not None:
            state.stale = broadcast_int(state.stale, control)
        if cfg.validation.patience and state.stale >= cfg.validation.patience:
            bar.write(f"early stop: no improvement in {cfg.validation.patience} validations")
            break
    save()


def broadcast_int(value: int, group) -> int:
    """Rank 0's ``value`` on every rank, over the (gloo) control group: the others wait here for rank 0."""
    import torch.distributed as dist

    t = torch.tensor([value])
    dist.broadcast(t, 0, group=group)
    return int(t)


def tensorboard_writer(logdir: Path):
    """A TensorBoard SummaryWriter on ``logdir``, or one line saying how to install TensorBoard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard "
                          "(or pip install -e '.[tensorboard]')") from None
    return SummaryWriter(str(logdir))


class RunWriter:
    """Everything rank 0 writes into the run folder: config, vocabulary, metrics, curves, checkpoints."""

    def __init__(self, out: Path, cfg: TrainConfig, data: TrainData, rank: int, fresh: bool):
        self.out, self.rank, self.cfg, self.val_seconds = out, rank, cfg, 0.0
        self.epoch_batches = max(data.sampler.batches_per_epoch(), 1)  # for fractional epochs in the log
        self.tb = tensorboard_writer(out / "tensorboard") if cfg.logging.tensorboard and rank == 0 else None
        self.extra_log = None  # () -> dict added to each train line (the SCST rewards)
        self.last_path, self.best_path, self.metrics = out / "last.pt", out / "best.pt", out / "metrics.jsonl"
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            write_json(cfg.to_dict(), out / "config.json", indent=2)
            write_json(data.vocab.to_list(), out / "vocab.json", indent=0)
            if fresh:
                self.best_path.unlink(missing_ok=True)
                self.metrics.unlink(missing_ok=True)

    def append(self, rec: dict) -> None:
        if self.rank == 0:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k not in ("step", "epoch", "epochs") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(("val/" if k.startswith("val") else "train/") + k, v, rec["step"])
            self.tb.flush()

    def check_finite(self, stats: dict, state: LoopState) -> None:
        if not bool(stats["ok"]):
            raise TrainingDiverged(f"loss or gradient norm became NaN/inf before step {state.step}; stopped without "
                                   f"saving (last good checkpoint: {self.last_path if self.last_path.exists() else 'none'}). "
                                   "Try a lower --lr or --grad-clip, and check the features for NaN.")

    def log_train(self, state: LoopState, stats: dict, optimizer, world: int, bar) -> None:
        loss_sum, ok = torch.stack([stats["loss_sum"].float(), stats["ok"].float()]).cpu().tolist()  # one read
        self.check_finite({"ok": ok}, state)
        el = time.time() - stats["t0"]
        loss = loss_sum / max(stats["tokens"], 1)  # summed NLL / tokens
        self.append({"step": state.step, "epoch": state.epoch,
                     "epochs": round(state.epoch + state.batch / self.epoch_batches, 4), "train_loss": loss,
                     "lr": optimizer.param_groups[0]["lr"],
                     "samples_per_s": stats["samples"] * world / max(el, 1e-9),
                     **(self.extra_log() if self.extra_log else {})})
        bar.set_postfix(loss=f"{loss:.3f}", samples_s=f"{stats['samples'] * world / max(el, 1e-9):.0f}")
        stats.update(loss_sum=torch.zeros_like(stats["loss_sum"]), tokens=0, samples=0, t0=time.time())

    def select(self, rec: dict, state: LoopState, by_meteor: bool, seconds: float, bar) -> None:
        """Update best/stale from a validation record; log it."""
        if self.rank != 0:
            return
        self.val_seconds += seconds
        if not math.isfinite(rec["val_loss"]) and "val_meteor" not in rec:
            return  # no validation data: nothing to select on
        score, by = (rec["val_meteor"], "METEOR") if by_meteor else (-rec["val_loss"], "loss")
        if by_meteor and self.cfg.objective == "scst":
            score, by = rec["val_cider"], "CIDEr-D"  # SCST optimises CIDEr-D: select on it
        if score > state.best:
            state.best, state.best_epoch, state.stale = score, state.epoch, 0
        else:
            state.stale += 1
        rec.update(epoch=state.epoch, step=state.step, val_seconds=seconds)
        self.append(rec)
        bar.write(f"epoch {state.epoch}: val loss {rec['val_loss']:.3f}"
                  + (f", val METEOR {100 * rec['val_meteor']:.1f}" if by_meteor else "")
                  + (f", val CIDEr-D {100 * rec['val_cider']:.1f}" if "val_cider" in rec else "")
                  + (f" (best by {by})" if state.best_epoch == state.epoch else ""))

    def save_epoch(self, ck: Checkpoint, improved: bool) -> None:
        ck.save(self.last_path)
        if improved:
            ck.save(self.best_path)
        from s2vt.evaluation.report import plot_curves

        plot_curves(self.metrics, self.out / "curves.png", ck.state.get("best_epoch"))

    def save_last(self, ck: Checkpoint, state: LoopState) -> None:
        if self.rank == 0:
            ck.save(self.last_path)
