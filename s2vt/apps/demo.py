"""``s2vt demo``: the whole pipeline on the embedded dataset, with the paper's ablations.

Stages (each reused on a re-run unless ``--fresh``): generate the dataset, extract RGB
and flow features, train RGB / flow / RGB-random-order models for each seed, run
``evaluate.benchmark`` (fusion weight tuned on val, every row on test), print the
table (mean and standard deviation over seeds of METEOR, BLEU-4, CIDEr and the
per-attribute accuracies), state which findings hold beyond seed noise, caption a
held-out test video from its raw file, and write the HTML report.

The work folder is the demo's own: it holds a marker file (``.s2vt-demo``). A non-empty
folder without one is refused, and ``--fresh`` deletes only what the demo writes
(``OWN``), never other files.
"""
from __future__ import annotations

import json
import shutil
import statistics
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

from s2vt.data.attributes import accuracy, load_truth
from s2vt.runtime.config import from_dict
from s2vt.data.corpora import load_corpus
from s2vt.decoding.search import DecodeConfig
from s2vt.runtime.devices import resolve as resolve_device
from s2vt.runtime.errors import S2VTError
from s2vt.runtime.console import print_summary
from s2vt.features.extract import extract
from s2vt.features.config import ExtractConfig
from s2vt.runtime.fileio import atomic_write, check_not_other_kind, write_json
from s2vt.evaluation.metrics import score, shared_meteor
from s2vt.models.s2vt import ModelConfig
from s2vt.data.synth import SynthConfig, generate
from s2vt.evaluation.stats import PerVideo, compare, findings_markdown, mean_spread, print_findings
from s2vt.training.config import TrainConfig
from s2vt.training.loop import train
from s2vt.training.recipes import recipe

MARKER = ".s2vt-demo"
OWN = ("data", "features", "runs", "bench", "report.html", "results.md", "results.json")


@dataclass
class DemoPreset:
    """A demo's sizes: the dataset, the features, the training recipe (a TrainConfig whose paths,
    seed, device and stream are filled in per run) and the seeds."""

    synth: SynthConfig
    stride: int
    input_size: int
    train: TrainConfig
    seeds: List[int]
    workers: Optional[int] = 2  # decoding processes of the feature extraction (None: cores - 1 on a GPU)
    device: str = "cpu"
    alpha: Optional[float] = None  # fixed fusion weight (None: tuned on val by the benchmark)

    @property
    def beam(self) -> int:
        return self.train.decoding.beam

    @classmethod
    def from_dict(cls, d: dict) -> "DemoPreset":
        """A preset from its JSON form (``asdict``), checked field by field."""
        if not isinstance(d, dict):
            raise S2VTError(f"a demo preset must be a JSON object, got {type(d).__name__}")
        train = TrainConfig.from_dict(d["train"]) if isinstance(d.get("train"), dict) else d.get("train")
        return from_dict(cls, {**d, "train": train}, "demo preset", nested={"synth": SynthConfig})

    def run_config(self, out: Path, seed: int, device: str, **fields) -> TrainConfig:
        """The recipe of one run (``fields``: dataset, features, shuffle_frames, model, ..., named as the flags
        are); amp on GPUs only."""
        return self.train.with_options(out=str(out), seed=seed, device=device, amp=self.train.amp and on_gpu(device),
                                       **fields)


def _recipe(model: ModelConfig, epochs: int, batch_size: int, lr: float, beam: int, **more) -> TrainConfig:
    return TrainConfig.from_dict(dict(model=model, epochs=epochs, batch_size=batch_size, lr=lr, log_every=1000,
                                      decoding=DecodeConfig(beam=beam), **more))


PRESETS = {
    # ~10 minutes on a 2-core CPU
    "cpu": DemoPreset(SynthConfig(train=300, val=40, test=80, frames=48, width=128, height=96), stride=4,
                      input_size=112, train=TrainConfig.from_dict({**recipe("small"), "recipe": "small",
                                                                   "log_every": 1000}),
                      seeds=[0, 1, 2]),
    # seconds: for tests
    "tiny": DemoPreset(SynthConfig(train=12, val=4, test=4, frames=16, width=64, height=48), stride=4,
                       input_size=64, train=_recipe(ModelConfig(embed=32, hidden=32, dropout=0.0), epochs=1,
                                                    batch_size=8, lr=2e-3, beam=2, val_meteor=False),
                       seeds=[0], workers=0, alpha=0.5),
    # MSVD-sized set and the paper's model sizes: one GPU, about ten minutes
    "gpu": DemoPreset(SynthConfig(train=1200, val=100, test=670, frames=120, width=320, height=240), stride=10,
                      input_size=224, train=_recipe(ModelConfig(), epochs=20, batch_size=64, lr=2e-4, beam=5,
                                                    val_every=5, amp=True),
                      seeds=[0, 1, 2], workers=None, device="cuda"),
}

ROW_ORDER = ("constant caption", "Flow", "RGB", "RGB random order", "RGB+Flow")
TRAINED = (("RGB", "rgb", False), ("Flow", "flow", False), ("RGB random order", "rgb", True))  # row, stream, shuffle
BENCH_KEY = {"RGB": "rgb", "Flow": "flow", "RGB random order": "random"}
COLUMNS = (("METEOR", "METEOR"), ("BLEU-4", "Bleu_4"), ("CIDEr", "CIDEr"), ("colour", "acc_colour"),
           ("shape", "acc_shape"), ("motion", "acc_motion"), ("all three", "acc_all"))


def _stage(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def prepare_workdir(wd: Path, fresh: bool) -> None:
    """Claim ``wd`` for the demo (marker file); with ``fresh``, delete the demo's own outputs only."""
    check_not_other_kind(wd, "--workdir")
    marked = (wd / MARKER).exists()
    if wd.is_dir() and any(wd.iterdir()) and not marked:
        raise S2VTError(f"--workdir {wd} is not empty and was not written by `s2vt demo` (no {MARKER} file); "
                        "nothing was deleted. Give an empty or new folder as --workdir")
    if fresh and marked:
        for name in OWN:
            p = wd / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
    wd.mkdir(parents=True, exist_ok=True)
    atomic_write(wd / MARKER, "This folder is an `s2vt demo` work folder; `s2vt demo --fresh` deletes only: "
                 + ", ".join(OWN) + "\n")


def constant_baseline(corpus, split: str) -> Dict[str, str]:
    """The most frequent training caption, for every video of ``split``."""
    counts = Counter(c for v in corpus.splits["train"] for c in corpus.captions[v])
    best = max(counts, key=lambda c: (counts[c], c))
    return {v: best for v in corpus.splits[split]}


def make_dataset(data: Path, cfg: SynthConfig, workers: Optional[int]):
    cfg_file = data / "synth_config.json"
    if cfg_file.exists() and json.loads(cfg_file.read_text()) == asdict(cfg):
        print("reusing the generated dataset")
    else:
        generate(data, cfg, workers=workers, overwrite=True)
    corpus = load_corpus("synthetic", data)
    print(json.dumps(corpus.stats()["splits"]))
    return corpus


def on_gpu(device: str) -> bool:
    return device.startswith("cuda")


def make_features(wd: Path, p: DemoPreset, corpus, device: str) -> Dict[str, Path]:
    items = [(v, corpus.video_path(v)) for ids in corpus.splits.values() for v in ids]
    stores = {}
    for stream in ("rgb", "flow"):
        ecfg = ExtractConfig(stream=stream, stride=p.stride, input_size=p.input_size, crop_ratio=1.0,
                             workers=p.workers, device=device, precision="bf16" if on_gpu(device) else "fp32")
        stores[stream] = wd / "features" / f"{stream}.h5"
        stores[stream].parent.mkdir(exist_ok=True)
        print_summary(extract(items, stores[stream], ecfg), "demo")
    return stores


def train_all(wd: Path, p: DemoPreset, data: Path, stores, seeds, device: str, meteor) -> tuple:
    """Train every (row, seed); returns ({row: {seed: run dir}}, seconds spent validating or None)."""
    runs: Dict[str, Dict[int, Path]] = {row: {} for row, _, _ in TRAINED}
    val_s: Optional[float] = 0.0
    for seed in seeds:
        for row, stream, shuffle in TRAINED:
            out = wd / "runs" / f"{row.replace(' ', '_').lower()}_seed{seed}"
            runs[row][seed] = out
            if (out / "done.json").exists():
                print(f"reusing {out}")
                res = json.loads((out / "done.json").read_text())
            else:
                cfg = p.run_config(out, seed, device, dataset="synthetic", annotations=str(data),
                                   features=str(stores[stream]), shuffle_frames=shuffle)
                print(f"-- {row}, seed {seed} -> {out}", flush=True)
                res = train(cfg, progress=False, meteor=meteor, overwrite=True)  # an unfinished run of ours
                write_json(res, out / "done.json")
            val_s = val_s + res["val_s"] if val_s is not None and "val_s" in res else None
    return runs, val_s


def _bench_file(bench: Path, split: str, row: str, seed: int, seeds: int) -> Path:
    """Where ``s2vt.evaluation.benchmark`` writes one row's captions and scores (``seed``: the index in the seed list)."""
    from s2vt.evaluation.benchmark import file_stem

    return bench / f"{file_stem('synthetic', split, row, seed if seeds > 1 else None)}.json"


def evaluate_all(bench: Path, p: DemoPreset, data: Path, corpus, stores, runs, seeds, device: str, meteor) -> tuple:
    """``s2vt.evaluation.benchmark`` of one entry holding every seed's checkpoints, plus the constant caption, with
    attribute accuracies. Returns (per_seed: {row: [metrics dict per seed]}, alphas: {seed: alpha},
    per_video: {row: [{video: metric statistics} per seed]})."""
    from s2vt.evaluation.benchmark import benchmark

    truth = load_truth(data)
    test_refs = dict(corpus.split_items("test"))
    const_caps = constant_baseline(corpus, "test")
    const_stats: Dict[str, dict] = {}
    const, _ = score(test_refs, const_caps, meteor=meteor, stats=const_stats)
    per_seed: Dict[str, List[dict]] = {r: [] for r in ROW_ORDER}
    per_seed["constant caption"] = [{**const, **accuracy(const_caps, truth)}]
    per_video: PerVideo = {r: [] for r in ROW_ORDER}
    per_video["constant caption"] = [const_stats]
    spec = [{"name": "synthetic", "dataset": "synthetic", "annotations": str(data), "splits": ["test"],
             "alpha": p.alpha,
             **{BENCH_KEY[row]: {"checkpoint": [str(runs[row][s] / "best.pt") for s in seeds],
                                 "features": str(stores["flow" if row == "Flow" else "rgb"])} for row in BENCH_KEY}}]
    _, payload = benchmark(spec, bench, {"beam": p.beam}, device=device, progress=False, meteor=meteor)
    for i, _ in enumerate(seeds):
        for row in ROW_ORDER[1:]:
            f = _bench_file(bench, "test", row, i, len(seeds))
            if not f.exists():
                raise S2VTError(f"benchmark did not write {f}: the demo reads each row's captions from there")
            ev = json.loads(f.read_text())
            caps = {v: r["caption"] for v, r in ev["videos"].items()}
            per_seed[row].append({**ev["metrics"], **accuracy(caps, truth)})
            per_video[row].append({v: r["stats"] for v, r in ev["videos"].items()})
    alphas = dict(zip(seeds, payload["alphas"]["synthetic"]))
    return per_seed, alphas, per_video


def results_table(per_seed: Dict[str, List[dict]], rows=ROW_ORDER, columns=COLUMNS) -> str:
    """Markdown: one row per model, mean ± std over seeds (x100) of every column of ``columns``
    ((heading, metric key) pairs)."""
    lines = ["| model | " + " | ".join(c for c, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(mean_spread([m[k] for m in per_seed[row]]) for _, k in columns) + " |")
    return "\n".join(lines)


def findings(per_seed: Dict[str, List[dict]], per_video: Optional[PerVideo] = None) -> Dict[str, dict]:
    """The paper's findings on test METEOR; "every model above the constant caption" uses the weakest model.
    With ``per_video`` statistics, each also carries the paired difference, its 95% CI and p."""
    weakest = min(ROW_ORDER[1:], key=lambda r: statistics.mean(m["METEOR"] for m in per_seed[r]))
    return {
        "RGB+Flow above RGB": compare(per_seed, "RGB+Flow", "RGB", per_video=per_video),
        "RGB+Flow above Flow": compare(per_seed, "RGB+Flow", "Flow", per_video=per_video),
        "RGB ordered above RGB random order": compare(per_seed, "RGB", "RGB random order", per_video=per_video),
        "every model above the constant caption": compare(per_seed, weakest, "constant caption", per_video=per_video),
    }


def example_and_report(wd: Path, corpus, runs, seeds: List[int], alpha: float, beam: int, device: str) -> dict:
    """Caption the first test video from its raw file with the fused models of the first seed; write report.html."""
    from s2vt.captioning.videos import video_captioner
    from s2vt.evaluation.report import write_report

    vid, seed = corpus.splits["test"][0], seeds[0]
    path = str(corpus.video_path(vid))
    vc = video_captioner([str(runs["RGB"][seed] / "best.pt"), str(runs["Flow"][seed] / "best.pt")], device=device,
                         streams=["rgb", "flow"])
    generated = vc.caption([path], alpha=alpha, beam=beam)[path]
    print(f"{corpus.video_path(vid)}\n  generated:  {generated}")
    for ref in corpus.captions[vid]:
        print(f"  reference:  {ref}")
    write_report(_bench_file(wd / "bench", "test", "RGB+Flow", 0, len(seeds)), wd / "report.html",
                 corpus.video_path,
                 title="s2vt demo: RGB+Flow on the embedded test split")
    return {"video": vid, "generated": generated, "references": corpus.captions[vid]}


def check_device(p: DemoPreset, device: str) -> str:
    """``device`` if this machine has it (checked before any work: the gpu preset's dataset alone is
    gigabytes); a warning when a preset sized for a GPU is to run on a CPU."""
    if resolve_device(device).type == "cpu" and p.device != "cpu":
        warnings.warn(f"this preset is sized for one GPU ({p.device}); on a CPU it runs for many hours", stacklevel=3)
    return device


def check_seeds(seeds) -> List[int]:
    """``--seeds``: each one a training seed, in the range of ``TrainConfig.seed`` (checked before any work)."""
    from dataclasses import fields

    from s2vt.runtime.config import check_value
    from s2vt.runtime.errors import ConfigError, FieldError

    seed = next(f for f in fields(TrainConfig) if f.name == "seed")
    for s in seeds:
        try:
            check_value("seed", s, seed, "TrainConfig")
        except FieldError as e:
            raise ConfigError(f"--seeds: {e.about('a seed')} (the range of s2vt train --seed)") from None
    twice = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if twice:
        raise ConfigError(f"--seeds: seed {twice[0]} is given twice; each seed is one run (mean ± SD over distinct seeds)")
    return list(seeds)


def begin(workdir, preset: str, fresh: bool, device: str, seeds, workers: Optional[int], stages: int):
    """The start the demo and the studies share: preset, device and seeds checked before any work, the
    work folder prepared, the embedded dataset made (stage 1 of ``stages``). Returns (preset, device,
    seeds, work folder, corpus, timings)."""
    p = PRESETS[preset]
    device = check_device(p, device or p.device)
    seeds = check_seeds(seeds) if seeds else p.seeds
    wd = Path(workdir)
    prepare_workdir(wd, fresh)
    _stage(f"1/{stages} embedded dataset -> {wd / 'data'}")
    t = time.time()
    corpus = make_dataset(wd / "data", p.synth, workers)
    return p, device, seeds, wd, corpus, {"dataset": time.time() - t}


def run_demo(workdir="demo_out", preset: str = "cpu", fresh: bool = False, device: str = "", seeds=None,
             workers: Optional[int] = None) -> dict:
    """Run every stage in ``workdir``; returns what ``results.json`` holds.

    workers: processes generating the dataset (None: all cores).
    """
    t_start = time.time()
    p, device, seeds, wd, corpus, timings = begin(workdir, preset, fresh, device, seeds, workers, stages=6)
    data = wd / "data"

    _stage("2/6 features (RGB frames and optical-flow images, EfficientNet-Lite0)")
    t = time.time()
    stores = make_features(wd, p, corpus, device)
    timings["features"] = time.time() - t

    meteor = shared_meteor()  # one METEOR process for validation and evaluation
    _stage(f"3/6 training (seeds {seeds}): RGB, Flow, RGB random frame order")
    t = time.time()
    runs, timings["validation"] = train_all(wd, p, data, stores, seeds, device, meteor)
    timings["training"] = time.time() - t

    _stage("4/6 benchmark: fusion weight on val, every row on test")
    t = time.time()
    per_seed, alphas, per_video = evaluate_all(wd / "bench", p, data, corpus, stores, runs, seeds, device,
                                               meteor)
    timings["evaluation"] = time.time() - t

    _stage("5/6 results on the test split")
    table = results_table(per_seed)
    print(table)
    print(f"(x100; mean ± standard deviation over seeds {seeds}; beam {p.beam}; colour/shape/motion: fraction of "
          f"test videos whose caption names it correctly; fusion alpha per seed: {alphas})")
    found = findings(per_seed, per_video)
    print_findings(found)

    _stage("6/6 a held-out test video, captioned from its raw file; HTML report")
    t = time.time()
    example = example_and_report(wd, corpus, runs, seeds, alphas[seeds[0]], p.beam, device)
    timings["example_and_report"] = time.time() - t
    timings["total"] = time.time() - t_start
    print("stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items() if v is not None))
    results = {"preset": preset, "seeds": seeds, "table": table, "per_seed": per_seed, "alphas": alphas,
               "findings": found, "example": example, "timings_s": timings}
    write_json(results, wd / "results.json")
    atomic_write(wd / "results.md", table + "\n\n" + findings_markdown(found) + "\n")
    print(f"\ndone in {timings['total'] / 60:.1f} min. Everything is in {wd}/:")
    print("  data/ (videos, captions)  features/rgb.h5 features/flow.h5  runs/ (checkpoints, metrics, curves)")
    print("  bench/ (per-video captions and scores)  results.md results.json  report.html")
    return results
