"""``s2vt demo``: the whole pipeline on the embedded dataset, with the paper's ablations.

Stages (each reused on a re-run unless ``--fresh``): generate the dataset, extract RGB
and flow features, train RGB / flow / RGB-random-order models for each seed, tune the
fusion weight on val, evaluate on test, print the table (mean and spread over seeds),
caption a held-out test video from its raw file, and write the HTML report.
"""
from __future__ import annotations

import json
import shutil
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List

from .datasets import load_corpus
from .evaluate import Captioner, Member, evaluate, tune_alpha, write_json
from .extract import ExtractConfig, extract
from .metrics import Meteor, score
from .model import ModelConfig
from .synth import SynthConfig, generate
from .train import TrainConfig, train


@dataclass
class DemoPreset:
    synth: SynthConfig
    stride: int
    input_size: int
    model: ModelConfig
    epochs: int
    batch_size: int
    lr: float
    seeds: List[int]
    beam: int
    workers: int = 2
    device: str = "cpu"
    val_meteor: bool = True   # select checkpoints on val METEOR (else val loss)


PRESETS = {
    # a few minutes on a 2-core CPU
    "cpu": DemoPreset(SynthConfig(train=300, val=40, test=80, frames=48, width=128, height=96), stride=4,
                      input_size=112, model=ModelConfig(embed=128, hidden=256, dropout=0.3, max_frames=80),
                      epochs=12, batch_size=32, lr=2e-3, seeds=[0, 1, 2], beam=5),
    # seconds: for tests
    "tiny": DemoPreset(SynthConfig(train=12, val=4, test=4, frames=16, width=64, height=48), stride=4,
                       input_size=64, model=ModelConfig(embed=32, hidden=32, dropout=0.0), epochs=1,
                       batch_size=8, lr=2e-3, seeds=[0], beam=2, workers=0, val_meteor=False),
    # MSVD-sized set and the paper's model sizes: for a GPU
    "gpu": DemoPreset(SynthConfig(train=1200, val=100, test=670, frames=120, width=320, height=240), stride=10,
                      input_size=224, model=ModelConfig(), epochs=30, batch_size=64, lr=2e-4,
                      seeds=[0, 1, 2], beam=5, workers=8, device="cuda"),
}

ROW_ORDER = ("constant caption", "Flow", "RGB", "RGB random order", "RGB+Flow")


def _stage(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def constant_baseline(corpus, split: str) -> Dict[str, str]:
    """The most frequent training caption, for every video of ``split``."""
    counts = Counter(c for v in corpus.splits["train"] for c in corpus.captions[v])
    best = max(counts, key=lambda c: (counts[c], c))
    return {v: best for v in corpus.splits[split]}


def mean_spread(values: List[float]) -> str:
    m = 100 * statistics.mean(values)
    return f"{m:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{m:.1f}"


def run_demo(workdir="demo_out", preset: str = "cpu", fresh: bool = False, device: str = "", seeds=None) -> dict:
    t_start = time.time()
    p = PRESETS[preset]
    device = device or p.device
    seeds = list(seeds) if seeds else p.seeds
    wd = Path(workdir)
    if fresh and wd.exists():
        shutil.rmtree(wd)
    wd.mkdir(parents=True, exist_ok=True)
    timings = {}

    data = wd / "data"
    _stage(f"1/6 embedded dataset -> {data}")
    t = time.time()
    cfg_file = data / "synth_config.json"
    if cfg_file.exists() and json.loads(cfg_file.read_text()) == asdict(p.synth):
        print("reusing the generated dataset")
    else:
        generate(data, p.synth)
    corpus = load_corpus("synthetic", data)
    print(json.dumps(corpus.stats()["splits"]))
    timings["dataset"] = time.time() - t

    _stage("2/6 features (RGB frames and optical-flow images, EfficientNet-Lite0)")
    t = time.time()
    items = [(v, corpus.video_path(v)) for ids in corpus.splits.values() for v in ids]
    stores = {}
    for stream in ("rgb", "flow"):
        ecfg = ExtractConfig(stream=stream, stride=p.stride, input_size=p.input_size, crop_ratio=1.0,
                             workers=p.workers, device=device)
        stores[stream] = wd / "features" / f"{stream}.h5"
        stores[stream].parent.mkdir(exist_ok=True)
        summary = extract(items, stores[stream], ecfg)
        print("\n".join(summary.lines()))
    timings["features"] = time.time() - t

    _stage(f"3/6 training (seeds {seeds}): RGB, Flow, RGB random frame order")
    t = time.time()
    runs: Dict[str, Dict[int, Path]] = {"RGB": {}, "Flow": {}, "RGB random order": {}}
    for seed in seeds:
        for row, stream, shuffle in (("RGB", "rgb", False), ("Flow", "flow", False), ("RGB random order", "rgb", True)):
            out = wd / "runs" / f"{row.replace(' ', '_').lower()}_seed{seed}"
            runs[row][seed] = out
            if (out / "done.json").exists():
                print(f"reusing {out}")
                continue
            cfg = TrainConfig(dataset="synthetic", annotations=str(data), features=str(stores[stream]), out=str(out),
                              epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, seed=seed, device=device,
                              shuffle_frames=shuffle, model=ModelConfig(**asdict(p.model)), log_every=1000,
                              val_meteor=p.val_meteor)
            print(f"-- {row}, seed {seed} -> {out}")
            res = train(cfg, progress=False)
            write_json(res, out / "done.json")
    timings["training"] = time.time() - t

    _stage("4/6 fusion weight on val, evaluation on test")
    t = time.time()
    test_refs = dict(corpus.split_items("test"))
    val_refs = dict(corpus.split_items("val"))
    per_seed: Dict[str, List[dict]] = {r: [] for r in ROW_ORDER}
    alphas = {}
    evals = wd / "eval"
    with Meteor() as meteor:
        const, _ = score(test_refs, constant_baseline(corpus, "test"), meteor=meteor)
        per_seed["constant caption"] = [const]
        for seed in seeds:
            members = {row: Member(str(runs[row][seed] / "best.pt"), str(stores["flow" if row == "Flow" else "rgb"]))
                       for row in runs}
            for row in ("Flow", "RGB", "RGB random order"):
                r = evaluate(Captioner([members[row]], device), test_refs, beam=p.beam, meteor=meteor)
                write_json(r, evals / f"{row.replace(' ', '_')}_seed{seed}.json")
                per_seed[row].append(r["metrics"])
            fused = Captioner([members["RGB"], members["Flow"]], device)
            alpha, curve = tune_alpha(fused, val_refs, beam=1, meteor=meteor)
            alphas[seed] = {"alpha": alpha, "val_meteor": curve}
            r = evaluate(fused, test_refs, [alpha, 1 - alpha], beam=p.beam, meteor=meteor)
            write_json(r, evals / f"RGB_Flow_seed{seed}.json")
            per_seed["RGB+Flow"].append(r["metrics"])
    timings["evaluation"] = time.time() - t

    _stage("5/6 results on the test split")
    lines = ["| model | METEOR | BLEU-4 | CIDEr |", "|---|---|---|---|"]
    for row in ROW_ORDER:
        ms = per_seed[row]
        lines.append(f"| {row} | " + " | ".join(mean_spread([m[k] for m in ms]) for k in ("METEOR", "Bleu_4", "CIDEr")) + " |")
    table = "\n".join(lines)
    print(table)
    print(f"(mean ± standard deviation over seeds {seeds}; beam {p.beam}; fusion alpha per seed: "
          f"{ {s: a['alpha'] for s, a in alphas.items()} })")
    m = {row: statistics.mean(x["METEOR"] for x in per_seed[row]) for row in ROW_ORDER}
    findings = {
        "RGB+Flow >= max(RGB, Flow)": m["RGB+Flow"] >= max(m["RGB"], m["Flow"]),
        "RGB ordered > RGB random order": m["RGB"] > m["RGB random order"],
        "every model above the constant caption": min(m[r] for r in ROW_ORDER[1:]) > m["constant caption"],
    }
    for k, v in findings.items():
        print(f"  {'holds' if v else 'does NOT hold'}: {k}")

    _stage("6/6 a held-out test video, captioned from its raw file; HTML report")
    from .caption import VideoCaptioner
    from .report import write_report

    vid = corpus.splits["test"][0]
    s0 = seeds[0]
    vc = VideoCaptioner([str(runs["RGB"][s0] / "best.pt"), str(runs["Flow"][s0] / "best.pt")],
                        alpha=alphas[s0]["alpha"], device=device)
    generated = vc.caption(corpus.video_path(vid), beam=p.beam)
    print(f"{corpus.video_path(vid)}\n  generated:  {generated}")
    for ref in corpus.captions[vid]:
        print(f"  reference:  {ref}")
    report = write_report(evals / f"RGB_Flow_seed{s0}.json", wd / "report.html", corpus.video_path,
                          title="s2vt demo: RGB+Flow on the embedded test split")
    timings["total"] = time.time() - t_start
    results = {"preset": preset, "seeds": seeds, "table": table, "per_seed": per_seed, "alphas": alphas,
               "findings": findings, "example": {"video": vid, "generated": generated,
                                                 "references": corpus.captions[vid]},
               "timings_s": timings}
    write_json(results, wd / "results.json")
    (wd / "results.md").write_text(table + "\n")
    print(f"\ndone in {timings['total'] / 60:.1f} min. Everything is in {wd}/:")
    print("  data/ (videos, captions)  features/rgb.h5 features/flow.h5  runs/ (checkpoints, metrics, curves)")
    print(f"  eval/ (per-video captions and scores)  results.md results.json  {report.name}")
    return results
