"""Every CUDA path against the CPU, in one run: ``scripts/gpu_check.sh`` (``python -m s2vt.apps.gpu_check``).

Each check runs one job of the project on ``--device`` and on the CPU, from the same seed and
the same files, and compares the results; the JSON written to ``--out`` is
``{"device", "torch", "cuda", "checks": {name: {"pass", "detail"}}}`` and the exit status is 1 when
any check fails. A check that needs a GPU passes as ``skipped`` on the CPU. With ``--device cpu``
the run compares the CPU with itself: it checks that this script and every path it drives still
work (the test suite runs it that way), not the GPU.

Checks: ``train_fp32`` (per-step losses within 1e-3 relative), ``train_amp`` (--amp within 2%, with
a bf16 bank, bf16 linear layers and fp32 LSTMs), ``train_attention`` / ``train_shuffle_frames`` (the
attention decoder / the random-frame-order ablation, losses within 1e-3), ``train_scst`` (a few SCST
steps from the CPU's cross-entropy checkpoint: the same first greedy reward, finite losses),
``bank_paths`` (the bank on the device, in host memory and read from the store give identical
batches), ``torchrun`` (DDP through torchrun, one process per GPU and 2 when two exist, equals one
process), ``extract_fp32`` / ``extract_bf16`` (cosine >= 0.999 / 0.99 per frame, the store's recorded
precision and the convolutions' output dtype those asked for; on a CPU ``--precision bf16`` warns and
computes fp32), ``extract_batch_size`` (fp32 features do not depend on the batch size),
``extract_timm`` / ``extract_raft`` (a timm backbone and RAFT flow, cosine >= 0.999 / 0.99),
``caption`` (a raw file: the same caption), ``caption_attention`` (``--attention``: the same caption
and weights within 1e-3), ``evaluate`` (a split: the same captions and scores),
``resume_cpu_checkpoint`` (a CPU run resumed on the device ends where the CPU run ends). Each check
makes the CPU runs it compares with when no check before it has, so it also runs alone (``--only``).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

MODEL = ["--embed", "16", "--hidden", "24", "--dropout", "0.0"]  # dropout off: CUDA and CPU draw other masks


def s2vt(*args: str) -> str:
    """Run an ``s2vt`` command in this process; its standard output, or RuntimeError with its errors."""
    from s2vt.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    if rc != 0:
        raise RuntimeError(f"s2vt {' '.join(map(str, args[:1]))} exited {rc}: {err.getvalue().strip()[-500:]}")
    return out.getvalue()


class Work:
    """The files every check shares: a small embedded dataset, its RGB features on the CPU."""

    def __init__(self, root: Path, device: str, quick: bool):
        self.root, self.device, self.quick = root, device, quick
        self.cuda = torch.device(device).type == "cuda"
        self.data = root / "data"
        n = (8, 2, 3) if quick else (24, 4, 8)
        s2vt("synth", self.data, "--train", n[0], "--val", n[1], "--test", n[2], "--frames", 16 if quick else 32,
             "--width", 64, "--height", 48, "--workers", 1)
        self.steps = 4 if quick else 12
        self.cpu_features = self.extract("cpu", "cpu.h5")

    def extract(self, device: str, name: str, *extra) -> Path:
        out = self.root / name
        if not out.exists():
            s2vt("extract", "--dataset", "synthetic", "--root", self.data, "--out", out, "--stride", 4,
                 "--input-size", 64, "--crop-ratio", 1.0, "--workers", 0, "--device", device, "--quiet", *extra)
        return out

    def cpu_run(self, name: str = "train_cpu", *extra) -> Path:
        """The CPU training run ``name`` that device runs are compared with: trained by whichever check
        needs it first, so that every check also runs alone (``--only``)."""
        out = self.root / name
        return out if (out / "last.pt").exists() else self.train("cpu", name, *extra)

    def train(self, device: str, name: str, *extra) -> Path:
        out = self.root / name
        s2vt("train", "--dataset", "synthetic", "--annotations", self.data, "--features", self.cpu_features,
             "--out", out, "--device", device, "--seed", 0, "--batch-size", 8, "--lr", "3e-3", "--log-every", 1,
             "--no-val-meteor", "--quiet", *MODEL, *(["--max-steps", self.steps] if "--max-steps" not in extra else []),
             *extra)
        return out


def records(run: Path) -> List[dict]:
    """The train lines of a run's metrics.jsonl."""
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "train_loss" in r]


def losses(run: Path) -> List[float]:
    return [r["train_loss"] for r in records(run)]


@contextlib.contextmanager
def module_dtypes():
    """{(kind, input dtype, output dtype)} of every linear, LSTM and convolution call in this process while
    active (kind: linear, lstm, conv): what precision the networks ran in, seen from outside."""
    kinds = ((torch.nn.Linear, "linear"), (torch.nn.LSTM, "lstm"), (torch.nn.Conv2d, "conv"))
    seen = set()

    def first(x):
        floats = [t for t in torch.utils._pytree.tree_leaves(x) if isinstance(t, torch.Tensor) and t.is_floating_point()]
        return str(floats[0].dtype).replace("torch.", "") if floats else None

    def hook(mod, args, out):
        kind = next((k for cls, k in kinds if isinstance(mod, cls)), None)
        if kind:
            seen.add((kind, first(args), first(out)))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def rel_diff(a: List[float], b: List[float]) -> float:
    if len(a) != len(b) or not a:
        return math.inf
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def weights_diff(a: Path, b: Path) -> float:
    """Largest difference between two checkpoints' weights, relative to the weights' scale."""
    from s2vt.models.checkpoint import Checkpoint

    wa, wb = Checkpoint.load(a).weights, Checkpoint.load(b).weights
    return max(float((wa[k].float() - wb[k].float()).abs().max() / wb[k].float().abs().max().clamp_min(1e-12))
               for k in wa)


def skipped(why: str) -> dict:
    return {"pass": True, "skipped": True, "detail": why}


# ----------------------------------------------------------------------------- the checks

def compare_training(w: Work, name: str, *extra) -> dict:
    """A training run with ``extra`` flags on the device against the same run on the CPU: per-step losses
    within 1e-3 relative."""
    ref, got = losses(w.cpu_run(f"{name}_cpu", *extra)), losses(w.train(w.device, f"{name}_dev", *extra))
    d = rel_diff(got, ref)
    return {"pass": d <= 1e-3, "detail": {"max_rel_loss_diff": d, "steps": len(ref), "last_loss": got[-1:]}}


def check_train_fp32(w: Work) -> dict:
    return compare_training(w, "train")


def check_train_amp(w: Work) -> dict:
    """--amp within 2% of fp32, and in the dtypes its help names: the bank in bf16 (the projection's input),
    the linear layers' outputs in bf16, the LSTMs in fp32."""
    if not w.cuda:
        return skipped("--amp is for CUDA devices")
    ref = losses(w.cpu_run())
    with module_dtypes() as seen:
        got = losses(w.train(w.device, "train_amp", "--amp"))
    d = rel_diff(got, ref)
    linear_out = {o for k, _, o in seen if k == "linear"}
    lstm = {(i, o) for k, i, o in seen if k == "lstm"}
    bank = "bfloat16" in {i for k, i, _ in seen if k == "linear"}
    ok = linear_out == {"bfloat16"} and lstm == {("float32", "float32")} and bank
    return {"pass": d <= 0.02 and ok, "detail": {"max_rel_loss_diff": d, "steps": len(ref), "bf16_bank": bank,
                                                  "linear_out": sorted(linear_out), "lstm": sorted(lstm)}}


def check_train_attention(w: Work) -> dict:
    return compare_training(w, "attention", "--decoder", "attention")


def check_train_shuffle_frames(w: Work) -> dict:
    return compare_training(w, "shuffle", "--shuffle-frames")


def check_train_scst(w: Work) -> dict:
    """--objective scst for a few steps from the CPU's cross-entropy checkpoint, on the device and on the CPU.
    Each device draws its own random numbers, so the sampled captions differ; the greedy ones do not: the
    first step's greedy reward (from the same weights) is the same, and every loss is finite."""
    extra = ("--objective", "scst", "--init", _checkpoint(w), "--scst-samples", 2)
    ref, got = records(w.cpu_run("scst_cpu", *extra)), records(w.train(w.device, "scst_dev", *extra))
    if not ref or len(got) != len(ref):
        return {"pass": False, "detail": {"steps": [len(ref), len(got)]}}
    g, r = got[0]["reward_greedy"], ref[0]["reward_greedy"]
    d = abs(g - r) / max(abs(r), 1e-12)
    finite = all(math.isfinite(r["train_loss"]) for r in got)
    return {"pass": d <= 1e-4 and finite, "detail": {"steps": len(got), "first_greedy_reward_rel_diff": d,
                                                     "finite_losses": finite,
                                                     "reward_sample": [r["reward_sample"] for r in got]}}


def check_bank_paths(w: Work) -> dict:
    """The device bank, the host bank (pinned buffers and side-stream copies on a GPU) and the store."""
    from s2vt.training.batches import BatchStream, CaptionTable, EpochSampler, FeatureBank
    from s2vt.data.corpora import load_corpus
    from s2vt.features.store import FeatureStore
    from s2vt.data.vocab import Vocab

    store = FeatureStore(w.cpu_features)
    items = [(v, c) for v, c in load_corpus("synthetic", w.data).split_items("train") if v in store]
    vocab = Vocab.build([c for _, caps in items for c in caps])
    vids = [v for v, _ in items]
    table = CaptionTable(items, vocab, 20, vids)
    order = EpochSampler(len(table), 8, seed=1).batches(0)
    paths = {"device": FeatureBank.build(store, vids, 80, w.device), "host": FeatureBank.build(store, vids, 80, "cpu"),
             "store": None}
    out, detail = {}, {}
    for name, bank in paths.items():
        stream = BatchStream(table, bank, w.device, 80, shuffle_frames=True, seed=1, store=store)
        detail[name] = "device gathers" if stream.on_device else ("host, uploaded" if bank is not None else "store")
        out[name] = [[t.cpu() for t in (b.feats, b.feat_lens, b.words_in, b.targets, b.word_lens)]
                     for b in stream.epoch(order, 0)]
    same = all(len(out[n]) == len(out["device"]) and all(
        torch.equal(x, y) for a, b in zip(out[n], out["device"]) for x, y in zip(a, b)) for n in out)
    return {"pass": same, "detail": {"paths": detail, "batches": len(order)}}


def torchrun_command(w: Work, out: Path) -> List[str]:
    """``torchrun --standalone --nproc_per_node N``: one process per GPU, 2 when two exist, each on its own
    GPU (a bare ``cuda`` is ``cuda:LOCAL_RANK``); one process on the CPU."""
    nproc = min(2, torch.cuda.device_count()) if w.cuda else 1
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "s2vt", "train", "--dataset", "synthetic", "--annotations", str(w.data), "--features",
            str(w.cpu_features), "--out", str(out), "--device", "cuda" if w.cuda else w.device, "--seed", "0",
            "--batch-size", "8", "--lr", "3e-3", "--no-val-meteor", "--quiet", "--max-steps", str(w.steps), *MODEL]


def check_torchrun(w: Work) -> dict:
    """DDP through torchrun (:func:`torchrun_command`) against one process."""
    out = w.root / "torchrun"
    cmd = torchrun_command(w, out)
    nproc = int(cmd[cmd.index("--nproc_per_node") + 1])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads())))  # the same sums as here
    if r.returncode != 0:
        return {"pass": False, "detail": {"nproc": nproc, "error": r.stderr.strip()[-800:]}}
    single = w.train(w.device, "torchrun_single")  # same global batches, one process
    d = weights_diff(out / "last.pt", single / "last.pt")
    return {"pass": d <= 1e-4, "detail": {"nproc": nproc, "max_rel_weight_diff": d}}


def _cosines(a: Path, b: Path) -> np.ndarray:
    from s2vt.features.store import FeatureStore

    sa, sb = FeatureStore(a), FeatureStore(b)
    cos = []
    for vid in sa.ids:
        x, y = sa.features(vid).astype(np.float64), sb.features(vid).astype(np.float64)
        cos += list((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-12))
    return np.asarray(cos)


def check_extract(w: Work, precision: str) -> dict:
    """Features within a cosine of the CPU's, computed and recorded in the precision asked for (on a CPU
    ``--precision bf16`` computes and records fp32): the store's precision, and the convolutions' outputs."""
    from s2vt.features.store import FeatureStore

    with module_dtypes() as seen:
        dev = w.extract(w.device, f"dev_{precision}.h5", "--splits", "test", "--precision", precision)
    cos = _cosines(dev, w.cpu_features)
    low = 0.999 if precision == "fp32" else 0.99
    want = precision if w.cuda else "fp32"
    recorded = FeatureStore(dev).signature["precision"]
    convs = sorted({o for k, _, o in seen if k == "conv"})
    ok = recorded == want and convs == ["bfloat16" if want == "bf16" else "float32"]
    return {"pass": bool(len(cos) and cos.min() >= low) and ok,
            "detail": {"min_cosine": float(cos.min()), "frames": len(cos), "recorded": recorded, "conv_out": convs}}


def check_extract_batch_size(w: Work) -> dict:
    from s2vt.features.store import FeatureStore

    a = w.extract(w.device, "dev_b2.h5", "--splits", "test", "--batch-size", 2)
    b = w.extract(w.device, "dev_b7.h5", "--splits", "test", "--batch-size", 7)
    sa, sb = FeatureStore(a), FeatureStore(b)
    diff = max(float(np.abs(sa.features(v) - sb.features(v)).max() / (np.abs(sb.features(v)).max() + 1e-12))
               for v in sb.ids)
    return {"pass": diff <= 1e-4, "detail": {"max_rel_diff": diff}}


def _random_weights(w: Work, model: str) -> Path:
    """A weights file of a randomly initialised timm model or torchvision RAFT (the same file for both devices)."""
    path = w.root / f"{model.replace(':', '_')}.pth"
    if not path.exists():
        torch.manual_seed(0)
        if model.startswith("raft"):
            from torchvision.models import optical_flow

            net = getattr(optical_flow, model)(weights=None)
        else:
            import timm

            net = timm.create_model(model[len("timm:"):], pretrained=False)
        torch.save(net.state_dict(), path)
    return path


def check_extract_timm(w: Work) -> dict:
    """A timm backbone (--cnn timm:resnet18) on the device against the CPU."""
    weights = _random_weights(w, "timm:resnet18")
    args = ("--splits", "test", "--cnn", "timm:resnet18", "--weights", weights)
    cos = _cosines(w.extract(w.device, "dev_timm.h5", *args), w.extract("cpu", "cpu_timm.h5", *args))
    return {"pass": bool(len(cos) and cos.min() >= 0.999), "detail": {"min_cosine": float(cos.min()), "frames": len(cos)}}


def check_extract_raft(w: Work) -> dict:
    """Learned flow (--flow-method raft_small, batched on the device) against the CPU: flow images are
    rounded to integers, so a few pixels may differ by one level; the features must still agree."""
    weights = _random_weights(w, "raft_small")
    args = ("--splits", "test", "--stream", "flow", "--flow-method", "raft_small", "--flow-weights", weights,
            "--input-size", 128)
    cos = _cosines(w.extract(w.device, "dev_raft.h5", *args), w.extract("cpu", "cpu_raft.h5", *args))
    return {"pass": bool(len(cos) and cos.min() >= 0.99), "detail": {"min_cosine": float(cos.min()), "frames": len(cos)}}


def _checkpoint(w: Work) -> Path:
    return w.cpu_run() / "best.pt"


def check_caption(w: Work) -> dict:
    video = sorted((w.data / "videos").iterdir())[0]
    ck = _checkpoint(w)
    got = [s2vt("caption", video, "--checkpoint", ck, "--device", d, "--beam", 2).strip() for d in ("cpu", w.device)]
    return {"pass": got[0] == got[1] and bool(got[0]), "detail": {"cpu": got[0], "device": got[1]}}


def check_caption_attention(w: Work) -> dict:
    """``caption --attention --json`` of a raw file with an attention checkpoint: the same caption, and
    attention weights within 1e-3."""
    video = sorted((w.data / "videos").iterdir())[0]
    ck = w.cpu_run("attention_cpu", "--decoder", "attention") / "best.pt"
    got = [json.loads(s2vt("caption", video, "--checkpoint", ck, "--device", d, "--beam", 2, "--attention",
                           "--json").strip().splitlines()[-1]) for d in ("cpu", w.device)]
    same = got[0]["caption"] == got[1]["caption"] and bool(got[0]["caption"])
    a, b = got[0]["attention"], got[1]["attention"]
    diff = max((abs(x - y) for u, v in zip(a, b) for x, y in zip(u["weights"], v["weights"])), default=math.inf) \
        if same and len(a) == len(b) else math.inf
    return {"pass": same and diff <= 1e-3, "detail": {"cpu": got[0]["caption"], "device": got[1]["caption"],
                                                      "words": len(a), "max_weight_diff": diff}}


def check_evaluate(w: Work) -> dict:
    """``s2vt evaluate`` on the device; its captions against the CPU's, decoded the same way."""
    from s2vt.captioning.captioner import Captioner, Member

    ck = _checkpoint(w)
    out = w.root / "eval_device.json"
    s2vt("evaluate", "--checkpoint", ck, "--features", w.cpu_features, "--dataset", "synthetic",
         "--annotations", w.data, "--split", "test", "--device", w.device, "--beam", 3, "--out", out)
    got = json.loads(out.read_text())
    caps = {v: e["caption"] for v, e in got["videos"].items()}
    ref = Captioner.from_members([Member(str(ck), str(w.cpu_features))], "cpu").caption(sorted(caps), beam=3)
    return {"pass": bool(caps) and caps == ref, "detail": {"videos": len(caps), "metrics_device": got["metrics"]}}


def check_resume_cpu_checkpoint(w: Work) -> dict:
    half = w.steps // 2
    run = w.train("cpu", "resume", "--max-steps", half, "--save-every", half)
    s2vt("train", "--dataset", "synthetic", "--annotations", w.data, "--features", w.cpu_features, "--out", run,
         "--device", w.device, "--seed", 0, "--batch-size", 8, "--lr", "3e-3", "--log-every", 1, "--no-val-meteor",
         "--quiet", *MODEL, "--max-steps", w.steps, "--resume")
    d = weights_diff(run / "last.pt", w.cpu_run() / "last.pt")
    return {"pass": d <= 1e-3, "detail": {"steps": [half, w.steps], "max_rel_weight_diff": d}}


CHECKS: Dict[str, Callable[[Work], dict]] = {
    "train_fp32": check_train_fp32, "train_amp": check_train_amp, "train_attention": check_train_attention,
    "train_shuffle_frames": check_train_shuffle_frames, "train_scst": check_train_scst,
    "bank_paths": check_bank_paths, "torchrun": check_torchrun, "extract_fp32": lambda w: check_extract(w, "fp32"),
    "extract_bf16": lambda w: check_extract(w, "bf16"), "extract_batch_size": check_extract_batch_size,
    "extract_timm": check_extract_timm, "extract_raft": check_extract_raft, "caption": check_caption,
    "caption_attention": check_caption_attention, "evaluate": check_evaluate,
    "resume_cpu_checkpoint": check_resume_cpu_checkpoint,
}


def run_checks(device: str, out: Path, quick: bool, only=None) -> dict:
    from s2vt.runtime.devices import cuda_settings, name, resolve

    dev = resolve(device)
    report = {"device": name(dev), "torch": torch.__version__, "cuda": torch.version.cuda, "checks": {}}
    with tempfile.TemporaryDirectory(prefix="s2vt_gpu_check_") as tmp:
        work = Work(Path(tmp), str(dev), quick)
        for check in only or CHECKS:  # in the order given: each check makes what it reads
            t = time.perf_counter()
            try:
                res = CHECKS[check](work)
            except Exception as e:  # a crash is a failed check, recorded with its cause
                res = {"pass": False, "detail": {"error": f"{type(e).__name__}: {e}",
                                                 "where": traceback.format_exc().strip().splitlines()[-3:]}}
            res["seconds"] = round(time.perf_counter() - t, 2)
            report["checks"][check] = res
            print(f"{'ok  ' if res['pass'] else 'FAIL'} {check} ({res['seconds']} s): "
                  f"{json.dumps(res.get('detail'))[:300]}", flush=True)
    report["cuda_settings"] = cuda_settings()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="the device checked against the CPU (default: cuda)")
    p.add_argument("--out", default="gpu_check.json", help="the JSON report")
    p.add_argument("--quick", action="store_true", help="smaller data (the CPU dry run)")
    p.add_argument("--only", nargs="+", choices=sorted(CHECKS), help="run these checks only, in this order")
    a = p.parse_args(argv)
    report = run_checks(a.device, Path(a.out), a.quick, a.only)
    failed = [k for k, v in report["checks"].items() if not v["pass"]]
    print(f"{len(report['checks']) - len(failed)} of {len(report['checks'])} checks passed on {report['device']}"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"; report: {a.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
