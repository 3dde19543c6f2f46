"""The ``s2vt`` command line. Each subcommand parses its arguments and calls one function
of the package; ``s2vt COMMAND --help`` shows examples.

Training and decoding flags are made from the config dataclasses (their help is the
field's text); flags several commands share (``--device``, the decoding flags, ``--overwrite``)
are defined once. Errors print one line: exit 2 when the command or its input must
change, 1 for a failure while running, 130 when interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

from .config import check_device
from .errors import S2VTError
from .hostmem import keep_freed_memory

F = argparse.RawDescriptionHelpFormatter
DATASETS = "msvd, mvad, msrvtt, vatex, generic or synthetic"


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _read_json(path: str, what: str):
    """A JSON input named by flag ``what``: a regular UTF-8 file, size and nesting bounded (s2vt.inputs)."""
    from .inputs import read_json

    return read_json(path, what)


def check_output(out: Path, inputs=(), overwrite: bool = False, ours=lambda p: False) -> Path:
    """Refuse an output path that is one of the inputs, or an existing file this command did not write."""
    out = Path(out)
    for i in inputs:
        if i and Path(i).exists() and out.exists() and out.resolve() == Path(i).resolve():
            raise S2VTError(f"--out {out} is one of this command's inputs; choose another output path")
    if out.is_dir():
        raise S2VTError(f"--out {out} is a folder; give a file path")
    if out.exists() and not out.is_file():  # a FIFO, socket or device: telling whether it is ours would block
        raise S2VTError(f"--out {out} is not a regular file (a FIFO, socket or device); give a file path")
    if out.exists() and not overwrite and not ours(out):
        raise S2VTError(f"--out {out} exists and was not written by this command; pass --overwrite to replace it")
    return out


def _is_evaluation(p: Path) -> bool:
    from .inputs import read_json

    try:  # a FIFO, a huge or a deeply nested file is not one of ours (and is not read)
        d = read_json(p)
        return isinstance(d, dict) and "metrics" in d and "videos" in d
    except (OSError, ValueError, S2VTError):
        return False


def _is_report(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return b"s2vt-report" in f.read(4096)
    except OSError:
        return False


# ----------------------------------------------------------------------------- synth / dataset-info

def cmd_synth(a) -> int:
    from .config import overrides
    from .synth import SynthConfig, generate

    cfg = SynthConfig(**overrides(a, SynthConfig))
    out = generate(a.out_dir, cfg, workers=a.workers, overwrite=a.overwrite)
    print(f"wrote {cfg.train + cfg.val + cfg.test} clips to {out}")
    return 0


def cmd_dataset_info(a) -> int:
    from .datasets import load_corpus

    print(json.dumps(load_corpus(a.name, a.root).stats(), indent=2))
    return 0


# ----------------------------------------------------------------------------- extract

def _list_items(path: str):
    from .ids import check_video_id

    from .inputs import read_lines

    items = []
    # a regular UTF-8 file (a byte-order mark is not a path); a line with a control character is refused
    for n, line in read_lines(path, "--list"):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) > 2:
            raise S2VTError(f"{path}:{n}: expected 'path' or 'id<TAB>path', found {len(cols)} columns")
        p = Path(cols[-1].strip())
        items.append((check_video_id(cols[0].strip() if len(cols) == 2 else p.stem, f"{path}:{n}"), p))
    return items


def _extract_items(a):
    from .datasets import load_corpus
    from .extract import unique_items, video_items

    items = []
    if a.dataset and not a.root:
        raise S2VTError("--dataset needs --root (the dataset folder)")
    if a.dataset:
        corpus = load_corpus(a.dataset, a.root)
        for s in a.splits:
            items += [(v, corpus.video_path(v)) for v, _ in corpus.split_items(s)]
    if a.list:
        items += _list_items(a.list)
    return unique_items(items + video_items(a.videos))


def _shard(text: str):
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise S2VTError(f"--shard {text!r}: expected I/N with integers, e.g. 0/4")
    if n < 1 or not 0 <= i < n:
        raise S2VTError(f"--shard {text}: need N >= 1 and 0 <= I < N")
    return i, n


def extract_config(a):
    """The ExtractConfig of parsed ``s2vt extract`` arguments."""
    from .config import overrides
    from .extract import ExtractConfig

    return ExtractConfig(**{**overrides(a, ExtractConfig), "device": a.device})


def cmd_extract(a) -> int:
    from .extract import env_shard, extract, shard_items, shard_path

    items = _extract_items(a)
    if not items:
        raise S2VTError("no videos given: pass folders/files, --list FILE or --dataset NAME --root DIR")
    shard = _shard(a.shard) if a.shard else env_shard()
    out = Path(a.out)
    if shard and shard[1] > 1:
        items = shard_items(items, *shard)
        out = shard_path(a.out, *shard)
    cfg = extract_config(a)
    if any(Path(p).exists() and out.exists() and Path(p).resolve() == out.resolve() for _, p in items):
        raise S2VTError(f"--out {out} is one of the videos to extract")
    summary = extract(items, out, cfg, progress=not a.quiet, shard=shard)
    print("\n".join(summary.lines()))
    return 1 if summary.failed else 0


def cmd_merge(a) -> int:
    from .store import merge_stores

    if any(Path(i).exists() and Path(a.out).exists() and Path(i).resolve() == Path(a.out).resolve() for i in a.inputs):
        raise S2VTError(f"{a.out} is also an input; merge into a new file")
    if Path(a.out).exists() and not a.overwrite:
        raise S2VTError(f"{a.out} exists; pass --overwrite to replace it, or choose another output")
    out = merge_stores(a.out, a.inputs)
    print(f"merged {len(a.inputs)} stores into {out}")
    return 0


# ----------------------------------------------------------------------------- train

def train_config(a):
    """TrainConfig from --config (if any) with the flags given on top; validated by the dataclasses."""
    from .config import overrides
    from .decoding import DecodeConfig
    from .model import ModelConfig
    from .train import TrainConfig

    base = _read_json(a.config, "--config") if a.config else {}
    if not isinstance(base, dict):
        raise S2VTError(f"--config {a.config} must hold a JSON object (as a run's config.json)")
    merged = {**base, **overrides(a, TrainConfig)}
    for key, cls in (("model", ModelConfig), ("decoding", DecodeConfig)):  # nested: flags over --config's values
        if not isinstance(base.get(key, {}), dict):
            raise S2VTError(f"--config {a.config}: '{key}' must be a JSON object of {key} options")
        merged[key] = {**base.get(key, {}), **overrides(a, cls, key + "_")}
    cfg = TrainConfig.from_dict(merged)
    for req in ("dataset", "annotations", "features"):
        if not getattr(cfg, req):
            raise S2VTError(f"--{req} is required (or set it in --config)"
                            + (f": the format of --annotations, one of {DATASETS}" if req == "dataset" else ""))
    return cfg


def cmd_train(a) -> int:
    from .train import train

    res = train(train_config(a), resume=a.resume, progress=not a.quiet, overwrite=a.overwrite)
    print(json.dumps(res, indent=1))
    return 0


# ----------------------------------------------------------------------------- caption / evaluate / score

def decode_flags(a) -> dict:
    """The decoding flags given (beam, max_len, len_penalty, alpha): they override each checkpoint's
    own decoding; checked here, before any work."""
    from .config import overrides
    from .decoding import DecodeConfig

    flags = overrides(a, DecodeConfig)
    DecodeConfig().given(**flags)
    return flags


def _needs_flow(a, *flags) -> None:
    """Refuse fusion flags given without a flow model (they would be ignored)."""
    for f in flags:
        if getattr(a, f[2:].replace("-", "_"), None) is not None and not a.checkpoint_flow:
            raise S2VTError(f"{f} is for fusion: it needs --checkpoint-flow")


def cmd_caption(a) -> int:
    from .caption import video_captioner
    from .video import VideoError

    flags = decode_flags(a)
    check_device(a.device)
    _needs_flow(a, "--alpha", "--weights-flow")
    if a.attention and not a.json:
        raise S2VTError("--attention adds per-word attention weights to the JSON output: add --json")
    cks = [a.checkpoint] + ([a.checkpoint_flow] if a.checkpoint_flow else [])
    cnn_weights = [a.weights] + ([a.weights_flow] if a.checkpoint_flow else [])
    cap = video_captioner(cks, cnn_weights, device=a.device, streams=["rgb", "flow"] if a.checkpoint_flow else None,
                          download=a.download, flow_weights=a.flow_weights, cnn=a.cnn, layer=a.layer)
    dec = cap.decoding.given(**flags)
    alpha = 0.5 if dec.alpha is None else dec.alpha
    weights = [alpha, 1 - alpha] if a.checkpoint_flow else None
    rc = 0
    for v in a.videos:
        try:
            text = cap.caption([v], weights, dec)[v]
            rec = {"video": v, "caption": text}
            if a.attention:
                att = cap.attention(v, text)
                if all(x is None for x in att):
                    raise S2VTError(f"--attention: {a.checkpoint} has no attention (trained with --decoder s2vt)")
                rec["attention"] = att[0] if len(att) == 1 else dict(zip(("rgb", "flow"), att))
            print(json.dumps(rec) if a.json else f"{v}\t{text}", flush=True)
        except (VideoError, S2VTError) as e:
            rc = 1
            print(json.dumps({"video": v, "error": str(e)}) if a.json else f"{v}\terror: {e}", flush=True)
            print(f"s2vt caption: {v}: {e}", file=sys.stderr)
    return rc


def cmd_evaluate(a) -> int:
    import contextlib

    from .fileio import file_lock

    with contextlib.ExitStack() as held:  # one writer per output: --out at once, the default once it is known
        if a.out:
            held.enter_context(file_lock(a.out))
        return _evaluate(a, lambda out: None if a.out else held.enter_context(file_lock(out)))


def _evaluate(a, lock) -> int:
    from .captioner import Captioner, Member
    from .evaluate import evaluate_captioner
    from .fileio import probe_writable
    from .metrics import Meteor

    from .devices import configure

    flags = decode_flags(a)
    configure(check_device(a.device))  # IEEE fp32 on a GPU, whatever ran before in this process
    _needs_flow(a, "--alpha", "--features-flow")
    members = [Member(a.checkpoint, a.features)]
    if a.checkpoint_flow:
        if not a.features_flow:
            raise S2VTError("--checkpoint-flow needs --features-flow")
        members.append(Member(a.checkpoint_flow, a.features_flow))
    fused = len(members) == 2
    cap = Captioner.from_members(members, a.device, streams=["rgb", "flow"] if fused else None)
    dec = cap.decoding.given(**flags)  # the checkpoint's decoding, with the flags given on top
    out = Path(a.out) if a.out else (Path(a.checkpoint).parent
                                     / f"eval_{a.split}_beam{dec.beam}{'_fused' if fused else ''}.json")
    lock(out)
    check_output(out, [x for m in members for x in (m.checkpoint, m.features)] + [a.annotations], a.overwrite, _is_evaluation)
    probe_writable(out)  # fail before the work, not after
    with Meteor() as meteor:  # one JVM for every scoring below
        r = evaluate_captioner(cap, a.dataset, a.annotations, a.split, dec, meteor,
                               log=lambda m: print(m, file=sys.stderr), progress=not a.quiet)
    _write_evaluation(a, r, out, members, dec)
    return 0


def _write_evaluation(a, r: dict, out: Path, members, dec) -> None:
    from .fileio import write_json

    r.update(checkpoints=[m.checkpoint for m in members], features=[m.features for m in members])
    refs = r["videos"].keys() | set(r["missing"])
    if r["missing"]:
        print(f"s2vt evaluate: {len(r['missing'])} of {len(refs)} {a.split} videos have no features in every store "
              f"(e.g. {r['missing'][:3]}); scored the other {len(r['videos'])}", file=sys.stderr)
    write_json(r, out)
    print(json.dumps({"metrics_x100": {k: round(100 * v, 2) for k, v in r["metrics"].items()},
                      "beam": dec.beam, "alpha": r["alpha"], "videos": len(r["videos"]), "missing": len(r["missing"]),
                      "written": str(out)}, indent=1))


def cmd_score(a) -> int:
    import shutil

    from .metrics import read_tsv, score

    # regular UTF-8 files of at most 64 MiB, captions of at most 1,000 words (s2vt.inputs, s2vt.metrics)
    refs = read_tsv(a.references, many=True, what="--references")
    cands = {k: v[0] for k, v in read_tsv(a.candidates, many=False, what="--candidates").items()}
    only_r, only_c = sorted(set(refs) - set(cands)), sorted(set(cands) - set(refs))
    common = sorted(set(refs) & set(cands))
    if not common:
        raise S2VTError(f"no video id is in both --references {a.references} and --candidates {a.candidates}")
    java_tok = not a.no_meteor or shutil.which("java") is not None  # --no-meteor without Java: pure Python
    corpus, per = score({k: refs[k] for k in common}, {k: cands[k] for k in common}, use_meteor=not a.no_meteor,
                        java_tokenizer=java_tok)
    out = {"metrics": corpus, "metrics_scale": "fractions in [0, 1] (the paper's tables show x100)",
           "tokenizer": "ptb" if java_tok else "python", "videos": len(common), "missing_candidates": only_r,
           "missing_references": only_c}
    if a.per_video:
        out["per_video"] = per
    if only_r or only_c:
        print(f"s2vt score: {len(only_r)} ids without a candidate, {len(only_c)} without references (listed in the JSON)",
              file=sys.stderr)
    print(json.dumps(out, indent=1))
    return 0


def _check_benchmark_out(out: Path, overwrite: bool) -> None:
    """The results folder: a folder, writable, and not holding another program's benchmark files."""
    from .fileio import probe_writable

    if out.exists() and not out.is_dir():
        raise S2VTError(f"--out {out} is a file; benchmark writes a folder of results")
    try:
        ours = json.loads((out / "benchmark.json").read_text()).keys() >= {"table", "spec", "results"}
    except (OSError, ValueError, AttributeError):
        ours = False
    foreign = [n for n in ("benchmark.json", "benchmark.md") if (out / n).exists()]
    if foreign and not ours and not overwrite:
        raise S2VTError(f"--out {out} holds {', '.join(foreign)} not written by s2vt benchmark; "
                        "pass --overwrite or choose another folder")
    probe_writable(out / "benchmark.json")


def cmd_benchmark(a) -> int:
    from .benchmark import benchmark, check_spec

    flags = decode_flags(a)
    check_device(a.device)
    if a.spec:
        spec = _read_json(a.spec, "--spec")
    else:
        if not (a.dataset and a.annotations):
            raise S2VTError("give --spec FILE.json, or --dataset and --annotations with model options")
        entry = {"name": a.dataset, "dataset": a.dataset, "annotations": a.annotations, "splits": a.splits}
        for k in ("rgb", "flow", "random"):
            ck, ft = getattr(a, f"{k}_checkpoint"), getattr(a, f"{k}_features")
            if bool(ck) != bool(ft):
                raise S2VTError(f"--{k}-checkpoint and --{k}-features go together")
            if ck:
                entry[k] = {"checkpoint": ck, "features": ft}
        if not any(k in entry for k in ("rgb", "flow", "random")):
            raise S2VTError("no model given: pass --rgb-checkpoint/--rgb-features (and/or --flow-..., --random-...)")
        spec = [entry]
    check_spec(spec)
    _check_benchmark_out(Path(a.out), a.overwrite)
    table, payload = benchmark(spec, a.out, flags, device=a.device, progress=not a.quiet)
    print(table)
    print("(x100; mean ± standard deviation where a row has several seeds)")
    for name, line in payload["verdicts"].items():
        print(f"  {name}: {line}")
    print(f"\nwritten: {Path(a.out) / 'benchmark.md'}, {Path(a.out) / 'benchmark.json'}")
    return 0


def cmd_report(a) -> int:
    from .datasets import load_corpus
    from .inputs import check_input_file
    from .report import write_report

    check_input_file(a.evaluation, "evaluation")  # a regular file of at most 64 MiB, before any work
    if a.dataset and not a.root:
        raise S2VTError("--dataset needs --root (the dataset folder), for the keyframes")
    path_of = load_corpus(a.dataset, a.root).video_path if a.dataset else None
    out = check_output(Path(a.out or Path(a.evaluation).with_suffix(".html")), [a.evaluation], a.overwrite, _is_report)
    if out.suffix.lower() not in (".html", ".htm"):
        raise S2VTError(f"--out {out}: the report is an HTML page; give a .html path")
    print(f"wrote {write_report(a.evaluation, out, path_of)}")
    return 0


def cmd_demo(a) -> int:
    from .demo import run_demo

    if a.device:
        check_device(a.device)
    if a.seeds is not None and any(s < 0 for s in a.seeds):
        raise S2VTError(f"--seeds {' '.join(map(str, a.seeds))}: seeds must be >= 0")
    if a.study:
        from .study import run_study

        return 0 if run_study(a.workdir, a.study, a.preset, a.fresh, a.device, a.seeds, workers=a.workers) else 1
    res = run_demo(a.workdir, a.preset, a.fresh, a.device, a.seeds, workers=a.workers)
    return 0 if res else 1


# ----------------------------------------------------------------------------- parser

def _shared_flags():
    """Parent parsers for flags several commands take, defined once."""
    from .config import add_arguments
    from .decoding import DecodeConfig

    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: cpu)")
    decode = argparse.ArgumentParser(add_help=False)
    add_arguments(decode.add_argument_group("decoding (default: each checkpoint's own, set when it was trained)"),
                  DecodeConfig)
    overwrite = argparse.ArgumentParser(add_help=False)
    overwrite.add_argument("--overwrite", action="store_true", help="replace an existing output this command did not write")
    return {"device": device, "decode": decode, "overwrite": overwrite}


def _add_synth(sub, shared):
    from .config import add_arguments
    from .synth import SynthConfig

    s = sub.add_parser("synth", help="generate the embedded dataset of moving shapes", formatter_class=F,
                       parents=[shared["overwrite"]],
                       epilog=_examples("s2vt synth data/synthetic", "s2vt synth /tmp/tiny --train 20 --val 5 --test 5 --ext .mp4"))
    s.add_argument("out_dir", help="folder to write (must be empty, or a dataset written by s2vt synth with --overwrite)")
    add_arguments(s, SynthConfig)
    s.add_argument("--workers", type=int, default=None, help="processes writing clips (default: all cores)")
    s.set_defaults(fn=cmd_synth)


def _add_dataset_info(sub, shared):
    s = sub.add_parser("dataset-info", help="videos and captions per split, as JSON", formatter_class=F,
                       epilog=_examples("s2vt dataset-info msvd --root ../shared/data/msvd",
                                        "s2vt dataset-info synthetic --root data/synthetic"))
    s.add_argument("name", help=DATASETS)
    s.add_argument("--root", required=True, help="dataset folder")
    s.set_defaults(fn=cmd_dataset_info)


def _add_extract(sub, shared):
    from .config import add_arguments
    from .extract import ExtractConfig

    s = sub.add_parser("extract", help="cache CNN features of RGB frames or optical-flow images in HDF5",
                       formatter_class=F, parents=[shared["device"]], description=(
                           "Samples frames (one in every --stride, or --num-frames uniformly), runs a CNN and "
                           "writes (T, D) features per video to --out. Re-running skips finished videos; a killed "
                           "run resumes. Videos that cannot be decoded are reported and recorded in the store. "
                           "A video shorter than the stride gives one step (its first frame); for flow, the last "
                           "sampled frame is paired with its predecessor.\n"
                           "Exit status: 0 all extracted, 1 some videos failed (the rest are in the store) or an "
                           "output could not be written, 2 usage or setup error."),
                       epilog=_examples("s2vt extract data/synthetic/videos --stream rgb --out features/rgb.h5",
                                        "s2vt extract --dataset msvd --root data/msvd --splits test --stream flow --out features/msvd_flow.h5",
                                        "s2vt extract clips/ --cnn vgg16 --weights ~/weights/vgg16-397923af.pth --out features/vgg.h5",
                                        "s2vt extract clips/ --cnn timm:vit_base_patch32_clip_224.openai --weights clip_b32.safetensors --out features/clip.h5",
                                        "s2vt extract clips/ --stream flow --flow-method raft_small --flow-weights raft_small.pth --device cuda --out features/raft.h5",
                                        "torchrun --nproc_per_node 4 -m s2vt extract clips/ --out f.h5 --device cuda   # then: s2vt merge-features f.h5 f.shard*of4.h5"))
    s.add_argument("videos", nargs="*", help="video files or folders (searched recursively)")
    s.add_argument("--out", required=True, help="HDF5 feature file (created, or resumed when it exists)")
    s.add_argument("--list", help="text file of video paths (or 'id<TAB>path' lines; blank lines and # comments skipped)")
    s.add_argument("--dataset", help=f"take videos from a dataset ({DATASETS})")
    s.add_argument("--root", help="dataset root for --dataset")
    s.add_argument("--splits", nargs="+", default=["train", "val", "test"], help="splits of --dataset to extract")
    add_arguments(s, ExtractConfig)
    s.add_argument("--shard", help="I/N: process every N-th video from the I-th, writing OUT.shardIofN.h5 "
                                   "(set automatically under torchrun)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_extract)

    s = sub.add_parser("merge-features", help="join shard stores into one", formatter_class=F, parents=[shared["overwrite"]],
                       epilog=_examples("s2vt merge-features features/all.h5 features/all.shard*of4.h5"))
    s.add_argument("out", help="the merged HDF5 file to write")
    s.add_argument("inputs", nargs="+", help="shard stores written by `s2vt extract --shard`")
    s.set_defaults(fn=cmd_merge)


def _add_interop(sub, shared):
    """import-features / export-features: per-video arrays made elsewhere, in and out (s2vt/interop.py)."""
    from . import interop

    def cmd_import(a) -> int:
        summary = interop.import_features(a.src, a.out, a.name, a.stream, a.id_map, a.overwrite)
        print("\n".join(summary.lines()))
        return 1 if summary.failed else 0

    def cmd_export(a) -> int:
        print(f"exported {interop.export_features(a.store, a.out)} videos -> {a.out}")
        return 0

    s = sub.add_parser("import-features", help="make a feature store of per-video .npy/.npz arrays or an HDF5 file",
                       formatter_class=F, parents=[shared["overwrite"]], description=(
                           "Ids from file names: vid1.npy -> vid1, -4wsuPCjDBc_5_15.avi.npy -> -4wsuPCjDBc_5_15 "
                           "(see features/README.md). Each array must be 2-D (frames, D), non-empty, finite, float, "
                           "with one D for all; a bad one is named and skipped (exit 1). Re-running resumes."),
                       epilog=_examples("s2vt import-features msvd_resnet_npy/ --out features/msvd_imported.h5 --name resnet152-npy "
                                        "--id-map data/msvd/youtube_mapping.txt"))
    s.add_argument("src", help="folder of ID.npy / ID.npz files, or an HDF5 file of one (T, D) dataset per video")
    s.add_argument("--out", required=True, help="HDF5 feature store to write (resumed when it exists)")
    s.add_argument("--name", required=True, help="what the features are (recorded as backbone 'imported:NAME')")
    s.add_argument("--stream", choices=["rgb", "flow"], default="rgb", help="the stream they stand for")
    s.add_argument("--id-map", help="text file of 'FILE_ID VIDEO_ID' lines renaming file ids (e.g. MSVD's youtube_mapping.txt)")
    s.set_defaults(fn=cmd_import)
    s = sub.add_parser("export-features", help="write a feature store as one .npy per video", formatter_class=F,
                       epilog=_examples("s2vt export-features features/rgb.h5 --out rgb_npy/"))
    s.add_argument("store", help="an s2vt feature store")
    s.add_argument("--out", required=True, help="folder to write ID.npy files into (new, empty, or an earlier export)")
    s.set_defaults(fn=cmd_export)


def _add_train(sub, shared):
    from .config import add_arguments
    from .decoding import DecodeConfig
    from .model import ModelConfig
    from .train import TrainConfig

    s = sub.add_parser("train", help="train the S2VT stacked LSTM", formatter_class=F, parents=[shared["overwrite"]],
                       description="Options default to the paper (E=500, H=1000, 80 frames, 20 words). "
                                   "The resolved config is written to OUT/config.json.",
                       epilog=_examples(
                           "s2vt train --dataset synthetic --annotations data/synthetic --features features/rgb.h5 --out runs/rgb",
                           "s2vt train --dataset msvd --annotations data/msvd --features features/msvd_vgg.h5 --out runs/msvd_vgg --device cuda --amp",
                           "s2vt train ... --out runs/rgb --resume            # continue from runs/rgb/last.pt",
                           "s2vt train --config runs/rgb/config.json --out runs/rgb2 --seed 1",
                           "torchrun --nproc_per_node 8 -m s2vt train ... --device cuda"))
    s.add_argument("--config", help="JSON config (as written to a run's config.json); flags override it")
    s.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    add_arguments(s, TrainConfig, skip=("model",))
    add_arguments(s.add_argument_group("model"), ModelConfig, dest_prefix="model_")
    add_arguments(s.add_argument_group("decoding: recorded in the checkpoint as the default of caption, evaluate and "
                                       "benchmark"), DecodeConfig, dest_prefix="decoding_", skip=("alpha",))
    s.set_defaults(fn=cmd_train)


def _add_caption(sub, shared):
    s = sub.add_parser("caption", help="caption raw video files", formatter_class=F, parents=[shared["device"], shared["decode"]],
                       epilog=_examples("s2vt caption video.mp4 --checkpoint runs/rgb/best.pt",
                                        "s2vt caption a.mp4 b.avi --checkpoint runs/rgb/best.pt --checkpoint-flow runs/flow/best.pt --alpha 0.6 --json"))
    s.add_argument("videos", nargs="+", help="video files")
    s.add_argument("--checkpoint", required=True, help="a trained model (best.pt)")
    s.add_argument("--checkpoint-flow", help="a flow model to fuse with")
    s.add_argument("--weights", help="CNN weights for the RGB model's backbone, if not the offline default")
    s.add_argument("--weights-flow", help="CNN weights for the flow model's backbone")
    s.add_argument("--cnn", help="for a model trained on imported features (s2vt import-features): a backbone "
                                 "that computes the same features (its width must be the recorded one), e.g. "
                                 "resnet152 or timm:MODEL")
    s.add_argument("--layer", help="with --cnn: the feature layer")
    s.add_argument("--flow-weights", help="RAFT weights of a model trained on --flow-method raft_* features, if not "
                                          "torchvision's file in torch's cache")
    s.add_argument("--download", action="store_true",
                   help="let torchvision / timm fetch published weights missing from this machine (needs internet)")
    s.add_argument("--attention", action="store_true",
                   help="with --json: each word's attention weights over the encoded frames (--decoder attention)")
    s.add_argument("--json", action="store_true", help="one JSON object per video")
    s.set_defaults(fn=cmd_caption)


def _add_evaluate(sub, shared):
    s = sub.add_parser("evaluate", help="caption a split and score it (METEOR, BLEU, CIDEr, ROUGE-L)",
                       formatter_class=F, parents=[shared["device"], shared["decode"], shared["overwrite"]], epilog=_examples(
                           "s2vt evaluate --dataset synthetic --annotations data/synthetic --checkpoint runs/rgb/best.pt --features features/rgb.h5",
                           "s2vt evaluate ... --checkpoint-flow runs/flow/best.pt --features-flow features/flow.h5   # fusion, alpha tuned on val"))
    s.add_argument("--dataset", required=True, help=DATASETS)
    s.add_argument("--annotations", required=True, help="dataset root")
    s.add_argument("--split", default="test", help="split to caption and score (default: test)")
    s.add_argument("--checkpoint", required=True, help="a trained model (best.pt)")
    s.add_argument("--features", required=True, help="the feature store the model reads")
    s.add_argument("--checkpoint-flow", help="a flow model to fuse with")
    s.add_argument("--features-flow", help="the flow model's feature store")
    s.add_argument("--out", help="JSON output (default: next to the checkpoint)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("score", help="score any captions against references", formatter_class=F, description=(
                           "METEOR and the PTB tokenizer run on Java: a JVM must give its first answer within "
                           "S2VT_JAVA_TIMEOUT seconds of starting (default 60)."),
                       epilog=_examples("s2vt score --references refs.tsv --candidates cands.tsv"))
    s.add_argument("--references", required=True, help="video_id<TAB>caption, many lines per video (a caption: at "
                                                        "most 1,000 words; the file: at most 64 MiB)")
    s.add_argument("--candidates", required=True, help="video_id<TAB>caption, one line per video")
    s.add_argument("--per-video", action="store_true", help="also print every video's scores")
    s.add_argument("--no-meteor", action="store_true",
                   help="skip METEOR; then no Java is needed: without a Java runtime captions are tokenised by a "
                        "pure-Python stand-in for the PTB tokenizer (equal on ordinary captions; unusual symbols or "
                        "abbreviations may tokenise differently; the JSON's 'tokenizer' says which ran)")
    s.set_defaults(fn=cmd_score)


def _add_benchmark(sub, shared):
    s = sub.add_parser("benchmark", help="the paper's table over datasets and splits", formatter_class=F,
                       parents=[shared["device"], shared["decode"], shared["overwrite"]], epilog=_examples(
                           "s2vt benchmark --dataset msvd --annotations data/msvd --rgb-checkpoint runs/vgg/best.pt "
                           "--rgb-features features/msvd_vgg.h5 --flow-checkpoint runs/flow/best.pt --flow-features features/msvd_flow.h5 --out bench/",
                           "s2vt benchmark --dataset msvd --annotations data/msvd --rgb-checkpoint runs/s0/best.pt runs/s1/best.pt "
                           "runs/s2/best.pt --rgb-features features/msvd_vgg.h5 --out bench/   # mean ± SD over 3 seeds",
                           "s2vt benchmark --spec bench.json --out bench/ --beam 3"))
    s.add_argument("--spec", help="JSON list of {name, dataset, annotations, splits, alpha, rgb, flow, random}; "
                                  "a model is {checkpoint: PATH or [PATH per seed], features: PATH}")
    s.add_argument("--dataset", help=DATASETS)
    s.add_argument("--annotations", help="dataset root")
    s.add_argument("--splits", nargs="+", default=["test"], help="splits to evaluate (default: test)")
    for k, what in (("rgb", "RGB"), ("flow", "flow"), ("random", "RGB random-frame-order")):
        s.add_argument(f"--{k}-checkpoint", nargs="+", help=f"the {what} model: one checkpoint, or one per seed")
        s.add_argument(f"--{k}-features", help=f"the {what} model's feature store")
    s.add_argument("--out", default="benchmark", help="results folder (default: benchmark)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_benchmark)


def _add_report(sub, shared):
    s = sub.add_parser("report", help="HTML page of an evaluation (keyframes, captions, scores)", formatter_class=F,
                       parents=[shared["overwrite"]],
                       epilog=_examples("s2vt report runs/rgb/eval_test_beam5.json --dataset synthetic --root data/synthetic"))
    s.add_argument("evaluation", help="JSON written by s2vt evaluate")
    s.add_argument("--dataset", help=f"the evaluation's dataset ({DATASETS}), for keyframes (default: the video "
                                     "files the feature store recorded at extraction)")
    s.add_argument("--root", help="dataset root, for keyframes")
    s.add_argument("--out", help="HTML file (default: the evaluation's path with .html)")
    s.set_defaults(fn=cmd_report)


def _add_demo(sub, shared):
    s = sub.add_parser("demo", help="the whole pipeline on the embedded dataset", formatter_class=F,
                       epilog=_examples("s2vt demo", "s2vt demo --preset tiny --workdir /tmp/demo",
                                        "s2vt demo --preset gpu --device cuda",
                                        "s2vt demo --study decoders --workdir /tmp/study"))
    s.add_argument("--workdir", default="demo_out", help="folder for everything the demo writes (default: demo_out)")
    s.add_argument("--preset", choices=["cpu", "tiny", "gpu"], default="cpu", help="sizes (default: cpu)")
    s.add_argument("--fresh", action="store_true", help="start over (removes only what an earlier demo wrote)")
    s.add_argument("--device", default="", help="default: the preset's device")
    s.add_argument("--seeds", type=int, nargs="+", help="seeds to train (default: the preset's)")
    s.add_argument("--workers", type=int, default=None, help="processes generating the dataset (default: all cores)")
    s.add_argument("--study", choices=["decoders"], default=None,
                   help="instead of the paper's table, a measured comparison: decoders = S2VT vs temporal "
                        "attention, each with and without SCST (3 seeds)")
    s.set_defaults(fn=cmd_demo)


class Parser(argparse.ArgumentParser):
    """A usage error is one line, as every other error: what is wrong, and where the help is."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="s2vt", formatter_class=F, description=(
        "S2VT video captioning: extract CNN features, train the stacked LSTM, caption videos, benchmark METEOR."),
        epilog=_examples("s2vt demo", "s2vt synth data/synthetic",
                         "s2vt extract data/synthetic/videos --stream rgb --out features/synth_rgb.h5",
                         "s2vt train --dataset synthetic --annotations data/synthetic --features features/synth_rgb.h5 --out runs/rgb",
                         "s2vt caption video.mp4 --checkpoint runs/rgb/best.pt"))
    from . import __version__

    p.add_argument("--version", action="version", version=f"s2vt {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    shared = _shared_flags()
    for add in (_add_synth, _add_dataset_info, _add_extract, _add_interop, _add_train, _add_caption, _add_evaluate,
                _add_benchmark, _add_report, _add_demo):
        add(sub, shared)
    return p


INTERRUPTED = {"train": "last.pt holds the last finished epoch; add --resume to continue",
               "extract": "finished videos are kept; re-run the same command to resume",
               "demo": "finished stages are kept; re-run the same command to resume",
               "synth": "the dataset is incomplete; add --overwrite to the same command to write it again"}


def _after_interrupt(args) -> str:
    """What an interrupted command kept, and how to go on."""
    if args.command == "train" and not (Path(args.out) / "last.pt").is_file():
        return "no epoch was saved; re-run the same command with --overwrite to start again"
    return INTERRUPTED.get(args.command, "nothing was left half-written")


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the main thread is, so a stopped command ends as an interrupted one."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


def _catch_stop_signals() -> None:
    import signal

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _stop)


# the output each command owns while it runs: (argument, kind, its name in messages); train, extract,
# import-features and evaluate (whose default path depends on the checkpoint) lock theirs themselves
OUTPUTS = {"report": ("out", "file", "--out"), "merge-features": ("out", "file", "output"),
           "benchmark": ("out", "folder", "--out"), "export-features": ("out", "folder", "--out"),
           "synth": ("out_dir", "folder", "output folder"), "demo": ("workdir", "folder", "--workdir")}


def output_lock(args):
    """The lock of the command's output (fileio.file_lock / folder_lock), or a no-op."""
    import contextlib

    from .fileio import file_lock, folder_lock

    arg, kind, flag = OUTPUTS.get(args.command, (None, None, None))
    out = getattr(args, arg, None) if arg else None
    if not out:
        return contextlib.nullcontext()
    return (file_lock if kind == "file" else folder_lock)(out, flag)


def _interrupted(args, e: KeyboardInterrupt) -> int:
    import signal

    if isinstance(e, Stopped):
        name = signal.Signals(e.signum).name
        print(f"s2vt {args.command}: stopped by {name} ({_after_interrupt(args)})", file=sys.stderr)
        return 128 + e.signum
    print(f"s2vt {args.command}: interrupted ({_after_interrupt(args)})", file=sys.stderr)
    return 130


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"s2vt: warning: {message}\n"


def main(argv=None) -> int:
    import warnings

    for name in ("stdout", "stderr"):  # started with that stream closed (2>&-): Python set it to None
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))
    warnings.formatwarning = _one_line_warning  # a warning is one line, without a source excerpt
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # a broken video is reported once, by s2vt,
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # not also by OpenCV's and FFmpeg's loggers
    if os.environ.get("WORLD_SIZE", "1") != "1":  # c10d prints C++ stack traces for failed connections
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")  # before torch is imported; errors still raise
    try:
        args = build_parser().parse_args(argv)
        if argv is None and threading.current_thread() is threading.main_thread():  # the command is the process
            _catch_stop_signals()
        keep_freed_memory()  # a command is one process: reuse freed tensors rather than map fresh pages
        try:
            with output_lock(args):
                return args.fn(args)
        except S2VTError as e:
            print(f"s2vt {args.command}: error: {e}", file=sys.stderr)
            return getattr(e, "exit_code", 2)
        except OSError as e:
            where = f" {e.filename}:" if e.filename else ""  # h5py's errors name no file
            reason = e.strerror or e
            if isinstance(e, (FileExistsError, NotADirectoryError)) and e.filename:
                reason = "a file stands where a folder is needed"  # an output path through a file
            print(f"s2vt {args.command}: error:{where} {reason} (check the path, its permissions and free space)",
                  file=sys.stderr)
            return 1
        except KeyboardInterrupt as e:
            return _interrupted(args, e)
        except Exception as e:  # a bug: one line, the traceback on request
            if os.environ.get("S2VT_DEBUG"):
                raise
            print(f"s2vt {args.command}: internal error: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''} "
                  "(set S2VT_DEBUG=1 for the traceback)", file=sys.stderr)
            return 1
    except Stopped as e:
        return 128 + e.signum
    except KeyboardInterrupt:
        print("s2vt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
