"""``s2vt demo --study decoders``: S2VT against temporal attention, each with and without SCST,
measured on the embedded dataset with the demo's machinery (work folder, dataset, features,
seeds, mean ± SD table, beyond-noise verdicts, results.json with ``per_seed``, report.html).

Per seed: a cross-entropy model for each decoder (the demo's recipe), then SCST fine-tuning of
each from its best checkpoint (``--objective scst --init``, selected on val CIDEr). Every row is
captioned on the test split with the demo's beam and scored (METEOR, BLEU-4, CIDEr, and the
colour / shape / motion accuracies against the clips' ground truth).
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

from s2vt.data.attributes import accuracy, load_truth
from s2vt.apps.demo import COLUMNS as DEMO_COLUMNS
from s2vt.apps.demo import _stage, begin, on_gpu, results_table
from s2vt.runtime.console import print_summary
from s2vt.features.extract import extract
from s2vt.features.config import ExtractConfig
from s2vt.runtime.fileio import atomic_write, write_json
from s2vt.evaluation.metrics import shared_meteor
from s2vt.evaluation.stats import PerVideo, compare, findings_markdown, mean_std, paired, paired_words, print_findings
from s2vt.training.config import TrainConfig
from s2vt.training.loop import train

ROWS = ("RGB S2VT", "RGB attention", "RGB S2VT + SCST", "RGB attention + SCST")
COLUMNS = tuple(c for c in DEMO_COLUMNS if c[0] != "all three")  # the demo's, but "all three"
STUDIES = ("decoders",)
# SCST fine-tuning on the cpu preset: a few epochs over the 300 training videos, a small lr
SCST = {"cpu": dict(epochs=6, lr=2e-4, scst_samples=5, val_every=2),
        "tiny": dict(epochs=1, lr=1e-4, scst_samples=2, val_every=1),
        "gpu": dict(epochs=10, lr=2e-5, scst_samples=5, val_every=2)}


def _run(wd: Path, row: str, seed: int) -> Path:
    return wd / "runs" / f"study_{row.replace(' + ', '_').replace(' ', '_').lower()}_seed{seed}"


def _train_once(cfg: TrainConfig, meteor) -> dict:
    out = Path(cfg.out)
    if (out / "done.json").exists():
        print(f"reusing {out}")
        return json.loads((out / "done.json").read_text())
    res = train(cfg, progress=False, meteor=meteor, overwrite=True)
    write_json(res, out / "done.json")
    return res


def study_table(per_seed: Dict[str, List[dict]]) -> str:
    return results_table(per_seed, ROWS, COLUMNS)


def rgb_store(wd: Path, p, corpus, device: str) -> Path:
    """The embedded dataset's RGB features (every split) in ``wd/features/rgb.h5``."""
    items = [(v, corpus.video_path(v)) for ids in corpus.splits.values() for v in ids]
    store = wd / "features" / "rgb.h5"
    store.parent.mkdir(exist_ok=True)
    ecfg = ExtractConfig(stream="rgb", stride=p.stride, input_size=p.input_size, crop_ratio=1.0, workers=p.workers,
                         device=device, precision="bf16" if on_gpu(device) else "fp32")
    print_summary(extract(items, store, ecfg), "demo")
    return store


def train_rows(wd: Path, p, preset: str, data: Path, store: Path, seeds, device: str, meteor) -> Dict[str, dict]:
    """Both decoders with cross-entropy, then SCST from each; returns {SCST row: {seed: metrics.jsonl records}}."""
    run = lambda out, seed, decoder, **more: p.run_config(
        out, seed, device, dataset="synthetic", annotations=str(data), features=str(store),
        model=replace(p.train.model, decoder=decoder), **more)
    rewards: Dict[str, Dict[int, List[dict]]] = {r: {} for r in ROWS if "SCST" in r}
    s = SCST[preset]
    for seed in seeds:
        for decoder, row in (("s2vt", "RGB S2VT"), ("attention", "RGB attention")):
            xe = _run(wd, row, seed)
            print(f"-- {row}, seed {seed} -> {xe}", flush=True)
            _train_once(run(xe, seed, decoder), meteor)
            sc = _run(wd, row + " + SCST", seed)
            print(f"-- {row} + SCST, seed {seed} -> {sc}", flush=True)
            _train_once(run(sc, seed, decoder, log_every=2, objective="scst", init=str(xe / "best.pt"),
                            epochs=s["epochs"], lr=s["lr"], scst_samples=s["scst_samples"], val_every=s["val_every"]),
                        meteor)
            rewards[row + " + SCST"][seed] = [json.loads(l) for l in (sc / "metrics.jsonl").read_text().splitlines()]
    return rewards


def evaluate_rows(wd: Path, p, data: Path, corpus, store: Path, seeds, device: str, meteor) -> tuple:
    """Every row and seed on the test split, with the attribute accuracies: ({row: [metrics per seed]},
    {row: [{video: metric statistics} per seed]})."""
    from s2vt.captioning.captioner import Captioner, Member
    from s2vt.evaluation.evaluate import evaluate

    from s2vt.runtime.devices import configure

    configure(device)  # IEEE fp32 on a GPU, whatever the training runs before set
    truth, test_refs = load_truth(data), dict(corpus.split_items("test"))
    per_seed: Dict[str, List[dict]] = {r: [] for r in ROWS}
    per_video: PerVideo = {r: [] for r in ROWS}
    (wd / "bench").mkdir(exist_ok=True)
    for seed in seeds:
        for row in ROWS:
            cap = Captioner.from_members([Member(str(_run(wd, row, seed) / "best.pt"), str(store))], device)
            ev = evaluate(cap, test_refs, None, cap.decoding.given(beam=p.beam), meteor)
            write_json(ev, wd / "bench" / f"{_run(wd, row, seed).name}.json")
            caps = {v: r["caption"] for v, r in ev["videos"].items()}
            per_seed[row].append({**ev["metrics"], **accuracy(caps, truth)})
            per_video[row].append({v: r["stats"] for v, r in ev["videos"].items()})
    return per_seed, per_video


def paired_gain(per_seed: Dict[str, List[dict]], tuned: str, init: str, metric: str = "CIDEr",
                per_video: Optional[PerVideo] = None) -> dict:
    """``tuned``'s gain over ``init`` seed by seed (each SCST run starts from the cross-entropy run of
    its seed): beyond seed noise when every seed gains and the mean gain exceeds the gains' SD. With
    ``per_video`` statistics, also the paired bootstrap's difference, CI and p (seeds paired)."""
    gains = [a[metric] - b[metric] for a, b in zip(per_seed[tuned], per_seed[init])]
    m, sd = mean_std(gains)
    f = {"rows": [tuned, init], "metric": metric, "paired": True, "gains": gains, "mean_gain": m, "sd_gain": sd,
         "holds": m > 0, "beyond_noise": len(gains) > 1 and min(gains) > 0 and m > sd}
    if per_video:
        f.update(paired(per_video, tuned, init, metric))
    return f


def _paired_line(name: str, f: dict) -> str:
    word = ("holds beyond seed noise" if f["beyond_noise"] else
            "holds on the mean only" if f["holds"] else "does NOT hold")
    gains = ", ".join(f"{100 * g:+.1f}" for g in f["gains"])
    return (f"  {name}: {word}: gain {100 * f['mean_gain']:.1f} ± {100 * f['sd_gain']:.1f} "
            f"({f['metric']}, x100; per seed {gains})" + paired_words(f))


def study_findings(per_seed: Dict[str, List[dict]], per_video: Optional[PerVideo] = None) -> Dict[str, dict]:
    v = per_video
    return {
        "attention above S2VT (METEOR)": compare(per_seed, "RGB attention", "RGB S2VT", per_video=v),
        "SCST above cross-entropy, S2VT (CIDEr)": compare(per_seed, "RGB S2VT + SCST", "RGB S2VT", "CIDEr", v),
        "SCST above cross-entropy, attention (CIDEr)": compare(per_seed, "RGB attention + SCST", "RGB attention",
                                                               "CIDEr", v),
        "SCST above cross-entropy, S2VT (METEOR)": compare(per_seed, "RGB S2VT + SCST", "RGB S2VT", per_video=v),
        "SCST above cross-entropy, attention (METEOR)": compare(per_seed, "RGB attention + SCST", "RGB attention",
                                                                per_video=v),
        "SCST gain over its initialisation, S2VT (CIDEr, paired by seed)": paired_gain(per_seed, "RGB S2VT + SCST",
                                                                                      "RGB S2VT", per_video=v),
        "SCST gain over its initialisation, attention (CIDEr, paired by seed)": paired_gain(
            per_seed, "RGB attention + SCST", "RGB attention", per_video=v),
    }


def print_study_findings(found: Dict[str, dict]) -> None:
    print_findings({k: f for k, f in found.items() if not f.get("paired")})
    for name, f in found.items():
        if f.get("paired"):
            print(_paired_line(name, f))


def reward_curves(rewards: Dict[str, dict]) -> Dict[str, dict]:
    """{SCST row: {seed: [(step, sampled reward, greedy reward)]}}, printed first -> last."""
    curves = {row: {s: [(r["step"], round(r["reward_sample"], 4), round(r["reward_greedy"], 4))
                        for r in recs if "reward_sample" in r] for s, recs in by_seed.items()}
              for row, by_seed in rewards.items()}
    for row, by_seed in curves.items():
        for s, c in by_seed.items():
            if c:
                print(f"  {row} seed {s}: greedy CIDEr-D reward {c[0][2]:.3f} -> {c[-1][2]:.3f}, "
                      f"sampled {c[0][1]:.3f} -> {c[-1][1]:.3f} over {c[-1][0]} steps")
    return curves


def run_study(workdir="demo_out", study: str = "decoders", preset: str = "cpu", fresh: bool = False, device: str = "",
              seeds=None, workers: Optional[int] = None) -> dict:
    """``s2vt demo --study decoders``: S2VT and attention, each with and without SCST, over seeds,
    in ``workdir`` (the demo's work folder rules); returns what ``results.json`` holds."""
    from s2vt.evaluation.report import write_report

    t_start = time.time()
    p, device, seeds, wd, corpus, timings = begin(workdir, preset, fresh, device, seeds, workers, stages=5)
    data = wd / "data"
    _stage("2/5 RGB features (EfficientNet-Lite0)")
    t = time.time()
    store = rgb_store(wd, p, corpus, device)
    timings["features"] = time.time() - t
    meteor = shared_meteor()  # one METEOR process for validation and evaluation
    _stage(f"3/5 training (seeds {seeds}): S2VT and attention, cross-entropy then SCST")
    t = time.time()
    rewards = train_rows(wd, p, preset, data, store, seeds, device, meteor)
    timings["training"] = time.time() - t
    _stage("4/5 every row on the test split")
    t = time.time()
    per_seed, per_video = evaluate_rows(wd, p, data, corpus, store, seeds, device, meteor)
    timings["evaluation"] = time.time() - t

    _stage("5/5 results on the test split")
    table = study_table(per_seed)
    print(table)
    print(f"(x100; mean ± standard deviation over seeds {seeds}; beam {p.beam})")
    found = study_findings(per_seed, per_video)
    print_study_findings(found)
    curves = reward_curves(rewards)
    write_report(wd / "bench" / f"{_run(wd, ROWS[-1], seeds[0]).name}.json", wd / "report.html", corpus.video_path,
                 title=f"s2vt demo --study {study}: {ROWS[-1]} on the embedded test split")
    timings["total"] = time.time() - t_start
    print("stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    results = {"study": study, "preset": preset, "seeds": seeds, "table": table, "per_seed": per_seed,
               "findings": found, "reward_curves": curves, "timings_s": timings}
    write_json(results, wd / "results.json")
    atomic_write(wd / "results.md", table + "\n\n" + findings_markdown(found) + "\n")
    print(f"\ndone in {timings['total'] / 60:.1f} min. Everything is in {wd}/ (results.md results.json report.html)")
    return results
