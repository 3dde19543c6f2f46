"""The ``s2vt`` command line. Each subcommand parses its arguments and calls one function
of the package; ``s2vt COMMAND --help`` shows examples."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .errors import S2VTError

F = argparse.RawDescriptionHelpFormatter


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {l}" for l in lines)


# ----------------------------------------------------------------------------- synth / dataset-info

def cmd_synth(a) -> int:
    from .synth import SynthConfig, generate

    cfg = SynthConfig(train=a.train, val=a.val, test=a.test, frames=a.frames, width=a.width, height=a.height,
                      fps=a.fps, captions_per_clip=a.captions_per_clip, seed=a.seed, ext=a.ext)
    out = generate(a.out_dir, cfg)
    print(f"wrote {cfg.train + cfg.val + cfg.test} clips to {out}")
    return 0


def cmd_dataset_info(a) -> int:
    from .datasets import load_corpus

    print(json.dumps(load_corpus(a.name, a.root).stats(), indent=2))
    return 0


# ----------------------------------------------------------------------------- extract

def _extract_items(a):
    from .datasets import load_corpus
    from .video import iter_video_paths

    items = []
    if a.dataset and not a.root:
        raise S2VTError("--dataset needs --root (the dataset folder)")
    if a.dataset:
        corpus = load_corpus(a.dataset, a.root)
        for s in a.splits:
            items += [(v, corpus.video_path(v)) for v in corpus.splits[s]]
    if a.list:
        for n, line in enumerate(Path(a.list).read_text().splitlines(), 1):
            if not line.strip():
                continue
            cols = line.split("\t")
            p = Path(cols[-1].strip())
            items.append((cols[0].strip() if len(cols) == 2 else p.stem, p))
    for v in a.videos:
        p = Path(v)
        if p.is_dir():
            for f in iter_video_paths(p):
                rel = f.relative_to(p).with_suffix("")
                items.append(("__".join(rel.parts), f))
        else:
            items.append((p.stem, p))
    seen = {}
    for vid, p in items:
        if vid in seen and seen[vid] != p:
            raise S2VTError(f"two videos share the id {vid!r}: {seen[vid]} and {p}")
        seen[vid] = p
    return sorted(seen.items())


def cmd_extract(a) -> int:
    from .extract import ExtractConfig, env_shard, extract, shard_items, shard_path

    items = _extract_items(a)
    if not items:
        raise S2VTError("no videos given: pass folders/files, --list FILE or --dataset NAME --root DIR")
    shard = None
    if a.shard:
        i, n = (int(x) for x in a.shard.split("/"))
        shard = (i, n)
    elif env_shard():
        shard = env_shard()
    out = a.out
    if shard and shard[1] > 1:
        items = shard_items(items, *shard)
        out = shard_path(a.out, *shard)
    cfg = ExtractConfig(stream=a.stream, cnn=a.cnn, layer=a.layer, weights=a.weights, stride=a.stride,
                        num_frames=a.num_frames, max_frames=a.max_frames, input_size=a.input_size,
                        crop_ratio=a.crop_ratio, flow_method=a.flow_method, batch_size=a.batch_size,
                        workers=a.workers, device=a.device, precision="bf16" if a.bf16 else "fp32")
    summary = extract(items, out, cfg, progress=not a.quiet, shard=shard)
    print("\n".join(summary.lines()))
    return 1 if summary.failed else 0


def cmd_merge(a) -> int:
    from .store import merge_stores

    out = merge_stores(a.out, a.inputs)
    print(f"merged {len(a.inputs)} stores into {out}")
    return 0


# ----------------------------------------------------------------------------- train

def _add_dataclass_args(p, cls, skip=()):
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        t = f.type if not isinstance(f.type, str) else {"int": int, "float": float, "str": str, "bool": bool}.get(f.type, str)
        if t is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"(default: {default})")
        else:
            p.add_argument(flag, type=t, default=None, help=f"(default: {default})")


def cmd_train(a) -> int:
    from .model import ModelConfig
    from .train import TrainConfig, train

    base = {}
    if a.config:
        base = json.loads(Path(a.config).read_text())
    cfg = TrainConfig.from_dict(base) if base else TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        v = getattr(a, f.name, None)
        if f.name != "model" and v is not None:
            setattr(cfg, f.name, v)
    for f in dataclasses.fields(ModelConfig):
        v = getattr(a, f"model_{f.name}", None)
        if v is not None:
            setattr(cfg.model, f.name, v)
    if cfg.optimizer == "sgd" and a.lr is None and not base:
        cfg.lr = 0.01  # the SGD preset
    for req in ("annotations", "features"):
        if not getattr(cfg, req):
            raise S2VTError(f"--{req} is required")
    res = train(cfg, resume=a.resume, progress=not a.quiet)
    print(json.dumps(res, indent=1))
    return 0


# ----------------------------------------------------------------------------- caption / evaluate / score

def cmd_caption(a) -> int:
    from .caption import VideoCaptioner
    from .video import VideoError

    cks = [a.checkpoint] + ([a.checkpoint_flow] if a.checkpoint_flow else [])
    weights = [a.weights] + ([a.weights_flow] if a.checkpoint_flow else [])
    vc = VideoCaptioner(cks, weights, alpha=a.alpha, device=a.device)
    rc = 0
    for v in a.videos:
        try:
            cap = vc.caption(v, beam=a.beam)
            print(json.dumps({"video": v, "caption": cap}) if a.json else f"{v}\t{cap}", flush=True)
        except (VideoError, S2VTError) as e:
            rc = 1
            print(json.dumps({"video": v, "error": str(e)}) if a.json else f"{v}\terror: {e}", flush=True)
            print(f"s2vt caption: {v}: {e}", file=sys.stderr)
    return rc


def cmd_evaluate(a) -> int:
    from .evaluate import Captioner, Member, evaluate, split_refs, tune_alpha, write_json

    members = [Member(a.checkpoint, a.features)]
    if a.checkpoint_flow:
        if not a.features_flow:
            raise S2VTError("--checkpoint-flow needs --features-flow")
        members.append(Member(a.checkpoint_flow, a.features_flow))
    from .metrics import Meteor

    cap = Captioner(members, a.device)
    weights, alpha_curve = None, None
    with Meteor() as meteor:  # one JVM for every scoring below
        if len(members) == 2:
            alpha = a.alpha
            if alpha is None:
                alpha, alpha_curve = tune_alpha(cap, split_refs(a.dataset, a.annotations, "val"), beam=1, meteor=meteor)
                print(f"alpha tuned on val: {alpha}", file=sys.stderr)
            weights = [alpha, 1 - alpha]
        r = evaluate(cap, split_refs(a.dataset, a.annotations, a.split), weights, a.beam, meteor=meteor)
    r.update(dataset=a.dataset, split=a.split, checkpoints=[m.checkpoint for m in members], alpha_curve=alpha_curve)
    out = Path(a.out) if a.out else Path(a.checkpoint).parent / f"eval_{a.split}_beam{a.beam}{'_fused' if weights else ''}.json"
    write_json(r, out)
    print(json.dumps({"metrics": r["metrics"], "videos": len(r["videos"]), "missing": len(r["missing"]),
                      "written": str(out)}, indent=1))
    return 0


def cmd_score(a) -> int:
    from .metrics import read_tsv, score

    refs = read_tsv(a.references, many=True)
    cands = {k: v[0] for k, v in read_tsv(a.candidates, many=False).items()}
    only_r, only_c = sorted(set(refs) - set(cands)), sorted(set(cands) - set(refs))
    common = sorted(set(refs) & set(cands))
    if not common:
        raise S2VTError("no video id is in both files")
    corpus, per = score({k: refs[k] for k in common}, {k: cands[k] for k in common}, use_meteor=not a.no_meteor)
    out = {"metrics": corpus, "videos": len(common), "missing_candidates": only_r, "missing_references": only_c}
    if a.per_video:
        out["per_video"] = per
    if only_r or only_c:
        print(f"s2vt score: {len(only_r)} ids without a candidate, {len(only_c)} without references (listed in the JSON)",
              file=sys.stderr)
    print(json.dumps(out, indent=1))
    return 0


def cmd_benchmark(a) -> int:
    from .evaluate import benchmark

    if a.spec:
        spec = json.loads(Path(a.spec).read_text())
    else:
        if not (a.dataset and a.annotations):
            raise S2VTError("give --spec FILE.json, or --dataset and --annotations with model options")
        entry = {"name": a.dataset, "dataset": a.dataset, "annotations": a.annotations, "splits": a.splits}
        for k in ("rgb", "flow", "random"):
            ck, ft = getattr(a, f"{k}_checkpoint"), getattr(a, f"{k}_features")
            if ck:
                entry[k] = {"checkpoint": ck, "features": ft}
        spec = [entry]
    table, _ = benchmark(spec, a.out, beam=a.beam, device=a.device)
    print(table)
    print(f"\nwritten: {Path(a.out) / 'benchmark.md'}, {Path(a.out) / 'benchmark.json'}")
    return 0


def cmd_report(a) -> int:
    from .datasets import load_corpus
    from .report import write_report

    if a.dataset and not a.root:
        raise S2VTError("--dataset needs --root (the dataset folder), for the keyframes")
    path_of = load_corpus(a.dataset, a.root).video_path if a.dataset else None
    out = write_report(a.evaluation, a.out or Path(a.evaluation).with_suffix(".html"), path_of)
    print(f"wrote {out}")
    return 0


def cmd_demo(a) -> int:
    from .demo import run_demo

    res = run_demo(a.workdir, a.preset, a.fresh, a.device, a.seeds)
    return 0 if res else 1


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    from .extract import ExtractConfig
    from .model import ModelConfig
    from .train import TrainConfig

    p = argparse.ArgumentParser(prog="s2vt", formatter_class=F, description=(
        "S2VT video captioning: extract CNN features, train the stacked LSTM, caption videos, benchmark METEOR."),
        epilog=_examples("s2vt demo", "s2vt synth data/synthetic",
                         "s2vt extract data/synthetic/videos --stream rgb --out features/synth_rgb.h5",
                         "s2vt train --dataset synthetic --annotations data/synthetic --features features/synth_rgb.h5 --out runs/rgb",
                         "s2vt caption video.mp4 --checkpoint runs/rgb/best.pt"))
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("synth", help="generate the embedded dataset of moving shapes", formatter_class=F,
                       epilog=_examples("s2vt synth data/synthetic", "s2vt synth /tmp/tiny --train 20 --val 5 --test 5 --ext .mp4"))
    s.add_argument("out_dir")
    from .synth import SynthConfig

    d = SynthConfig()
    for name in ("train", "val", "test", "frames", "width", "height", "captions_per_clip", "seed"):
        s.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name), help=f"(default: {getattr(d, name)})")
    s.add_argument("--fps", type=float, default=d.fps)
    s.add_argument("--ext", choices=[".avi", ".mp4"], default=d.ext)
    s.set_defaults(fn=cmd_synth)

    s = sub.add_parser("dataset-info", help="videos and captions per split, as JSON", formatter_class=F,
                       epilog=_examples("s2vt dataset-info msvd --root ../shared/data/msvd",
                                        "s2vt dataset-info synthetic --root data/synthetic"))
    s.add_argument("name", help="msvd, mvad, generic or synthetic")
    s.add_argument("--root", required=True, help="dataset folder")
    s.set_defaults(fn=cmd_dataset_info)

    e = ExtractConfig()
    s = sub.add_parser("extract", help="cache CNN features of RGB frames or optical-flow images in HDF5",
                       formatter_class=F, description=(
                           "Samples frames (one in every --stride, or --num-frames uniformly), runs a CNN and "
                           "writes (T, D) features per video to --out. Re-running skips finished videos; a killed "
                           "run resumes. Videos that cannot be decoded are reported and recorded in the store. "
                           "A video shorter than the stride gives one step (its first frame); for flow, the last "
                           "sampled frame is paired with its predecessor.\n"
                           "Exit status: 0 all extracted, 1 some videos failed (the rest are in the store), "
                           "2 usage or setup error."),
                       epilog=_examples("s2vt extract data/synthetic/videos --stream rgb --out features/rgb.h5",
                                        "s2vt extract --dataset msvd --root data/msvd --splits test --stream flow --out features/msvd_flow.h5",
                                        "s2vt extract clips/ --cnn vgg16 --weights ~/weights/vgg16-397923af.pth --out features/vgg.h5",
                                        "torchrun --nproc_per_node 4 -m s2vt extract clips/ --out f.h5 --device cuda   # then: s2vt merge-features f.h5 f.shard*of4.h5"))
    s.add_argument("videos", nargs="*", help="video files or folders (searched recursively)")
    s.add_argument("--out", required=True, help="HDF5 feature file")
    s.add_argument("--stream", choices=["rgb", "flow"], default=e.stream)
    s.add_argument("--list", help="text file of video paths (or 'id<TAB>path' lines)")
    s.add_argument("--dataset", help="take videos from a dataset (msvd, mvad, generic, synthetic)")
    s.add_argument("--root", help="dataset root for --dataset")
    s.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    s.add_argument("--cnn", default=e.cnn, help="efficientnet_lite0 (default, offline), vgg16, alexnet, resnet152")
    s.add_argument("--layer", help="feature layer (default per CNN: pool, fc7, fc7, pool)")
    s.add_argument("--weights", help="CNN weights file (vgg16/alexnet/resnet152: torchvision .pth)")
    s.add_argument("--stride", type=int, default=e.stride, help="keep one frame in every N (default: 10, the paper)")
    s.add_argument("--num-frames", type=int, default=0, help="instead of a stride: K frames spread uniformly")
    s.add_argument("--max-frames", type=int, default=0, help="at most this many frames per video (0: all)")
    s.add_argument("--input-size", type=int, default=e.input_size, help="CNN input crop (default: 224)")
    s.add_argument("--crop-ratio", type=float, default=e.crop_ratio, help="crop / resized short side (default: 0.875)")
    s.add_argument("--flow-method", choices=["dis", "farneback"], default=e.flow_method)
    s.add_argument("--batch-size", type=int, default=e.batch_size)
    s.add_argument("--workers", type=int, default=e.workers, help="decoding processes")
    s.add_argument("--device", default=e.device, help="cpu, cuda, cuda:1 ...")
    s.add_argument("--bf16", action="store_true", help="bf16 autocast for the CNN (recorded in the store)")
    s.add_argument("--shard", help="I/N: process every N-th video from the I-th, writing OUT.shardIofN.h5 "
                                   "(set automatically under torchrun)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_extract)

    s = sub.add_parser("merge-features", help="join shard stores into one", formatter_class=F,
                       epilog=_examples("s2vt merge-features features/all.h5 features/all.shard*of4.h5"))
    s.add_argument("out")
    s.add_argument("inputs", nargs="+")
    s.set_defaults(fn=cmd_merge)

    s = sub.add_parser("train", help="train the S2VT stacked LSTM", formatter_class=F,
                       description="Options default to the paper (E=500, H=1000, 80 frames, 20 words). "
                                   "The resolved config is written to OUT/config.json.",
                       epilog=_examples(
                           "s2vt train --dataset synthetic --annotations data/synthetic --features features/rgb.h5 --out runs/rgb",
                           "s2vt train --dataset msvd --annotations data/msvd --features features/msvd_vgg.h5 --out runs/msvd_vgg --device cuda --amp",
                           "s2vt train ... --out runs/rgb --resume            # continue from runs/rgb/last.pt",
                           "torchrun --nproc_per_node 8 -m s2vt train ... --device cuda"))
    s.add_argument("--config", help="JSON config (as written to a run's config.json); flags override it")
    s.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    s.add_argument("--quiet", action="store_true")
    _add_dataclass_args(s, TrainConfig, skip=("model",))  # model fields get their own flags below
    for f in dataclasses.fields(ModelConfig):
        if f.name in ("feat_dim", "vocab_size"):
            continue
        s.add_argument("--" + f.name.replace("_", "-"), dest=f"model_{f.name}", type=type(f.default), default=None,
                       help=f"model (default: {f.default})")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("caption", help="caption raw video files", formatter_class=F,
                       epilog=_examples("s2vt caption video.mp4 --checkpoint runs/rgb/best.pt",
                                        "s2vt caption a.mp4 b.avi --checkpoint runs/rgb/best.pt --checkpoint-flow runs/flow/best.pt --alpha 0.6 --json"))
    s.add_argument("videos", nargs="+")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--checkpoint-flow", help="a flow model to fuse with")
    s.add_argument("--alpha", type=float, default=0.5, help="RGB weight in fusion (tune it with s2vt evaluate)")
    s.add_argument("--beam", type=int, default=5)
    s.add_argument("--weights", help="CNN weights for the RGB model's backbone, if not the offline default")
    s.add_argument("--weights-flow", help="CNN weights for the flow model's backbone")
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", action="store_true", help="one JSON object per video")
    s.set_defaults(fn=cmd_caption)

    s = sub.add_parser("evaluate", help="caption a split and score it (METEOR, BLEU, CIDEr, ROUGE-L)",
                       formatter_class=F, epilog=_examples(
                           "s2vt evaluate --dataset synthetic --annotations data/synthetic --checkpoint runs/rgb/best.pt --features features/rgb.h5",
                           "s2vt evaluate ... --checkpoint-flow runs/flow/best.pt --features-flow features/flow.h5   # fusion, alpha tuned on val"))
    s.add_argument("--dataset", required=True)
    s.add_argument("--annotations", required=True)
    s.add_argument("--split", default="test")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--features", required=True)
    s.add_argument("--checkpoint-flow")
    s.add_argument("--features-flow")
    s.add_argument("--alpha", type=float, help="fusion RGB weight (default: tuned on val)")
    s.add_argument("--beam", type=int, default=5)
    s.add_argument("--device", default="cpu")
    s.add_argument("--out", help="JSON output (default: next to the checkpoint)")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("score", help="score any captions against references", formatter_class=F,
                       epilog=_examples("s2vt score --references refs.tsv --candidates cands.tsv"))
    s.add_argument("--references", required=True, help="video_id<TAB>caption, many lines per video")
    s.add_argument("--candidates", required=True, help="video_id<TAB>caption, one line per video")
    s.add_argument("--per-video", action="store_true")
    s.add_argument("--no-meteor", action="store_true", help="skip METEOR (no Java needed)")
    s.set_defaults(fn=cmd_score)

    s = sub.add_parser("benchmark", help="the paper's table over datasets and splits", formatter_class=F,
                       epilog=_examples(
                           "s2vt benchmark --dataset msvd --annotations data/msvd --rgb-checkpoint runs/vgg/best.pt "
                           "--rgb-features features/msvd_vgg.h5 --flow-checkpoint runs/flow/best.pt --flow-features features/msvd_flow.h5 --out bench/",
                           "s2vt benchmark --spec bench.json --out bench/"))
    s.add_argument("--spec", help="JSON list of {name, dataset, annotations, splits, rgb, flow, random}")
    s.add_argument("--dataset")
    s.add_argument("--annotations")
    s.add_argument("--splits", nargs="+", default=["test"])
    for k in ("rgb", "flow", "random"):
        s.add_argument(f"--{k}-checkpoint")
        s.add_argument(f"--{k}-features")
    s.add_argument("--beam", type=int, default=5)
    s.add_argument("--device", default="cpu")
    s.add_argument("--out", default="benchmark")
    s.set_defaults(fn=cmd_benchmark)

    s = sub.add_parser("report", help="HTML page of an evaluation (keyframes, captions, scores)", formatter_class=F,
                       epilog=_examples("s2vt report runs/rgb/eval_test_beam5.json --dataset synthetic --root data/synthetic"))
    s.add_argument("evaluation", help="JSON written by s2vt evaluate")
    s.add_argument("--dataset")
    s.add_argument("--root")
    s.add_argument("--out")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("demo", help="the whole pipeline on the embedded dataset", formatter_class=F,
                       epilog=_examples("s2vt demo", "s2vt demo --preset tiny --workdir /tmp/demo",
                                        "s2vt demo --preset gpu --device cuda"))
    s.add_argument("--workdir", default="demo_out")
    s.add_argument("--preset", choices=["cpu", "tiny", "gpu"], default="cpu")
    s.add_argument("--fresh", action="store_true", help="start over instead of reusing finished stages")
    s.add_argument("--device", default="")
    s.add_argument("--seeds", type=int, nargs="+")
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except S2VTError as e:
        print(f"s2vt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"s2vt {args.command}: interrupted (finished work is kept; re-run to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
