"""Commands that measure: evaluate (one split), score (any captions), compare (paired significance),
benchmark (the paper's table) and report (an HTML page)."""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from s2vt.captioning.captioner import Captioner, Member
from s2vt.cli.common import DATASETS, RAW, check_output, decode_flags, examples, is_evaluation, is_report, needs_flow
from s2vt.data.corpora import load_corpus
from s2vt.evaluation.benchmark import benchmark, check_spec
from s2vt.evaluation.compare import compare, groups_of, load_systems, table
from s2vt.evaluation.evaluate import evaluate_captioner
from s2vt.evaluation.metrics import read_tsv, score, shared_meteor
from s2vt.evaluation.report import write_report
from s2vt.runtime.devices import configure
from s2vt.runtime.devices import resolve as resolve_device
from s2vt.runtime.errors import S2VTError
from s2vt.runtime.fileio import check_not_other_kind, file_lock, probe_writable, write_json
from s2vt.runtime.inputs import check_input_file, read_json
from s2vt.runtime.console import say, shown


def cmd_evaluate(args) -> int:
    with contextlib.ExitStack() as held:  # one writer per output: --out at once, the default once it is known
        if args.out:
            held.enter_context(file_lock(args.out))
        return _evaluate(args, lambda out: None if args.out else held.enter_context(file_lock(out)))


def _evaluate(args, lock) -> int:
    flags = decode_flags(args)
    configure(resolve_device(args.device))  # IEEE fp32 on a GPU, whatever ran before in this process
    needs_flow(args, "--alpha", "--features-flow")
    members = [Member(args.checkpoint, args.features)]
    if args.checkpoint_flow:
        if not args.features_flow:
            raise S2VTError("--checkpoint-flow needs --features-flow")
        members.append(Member(args.checkpoint_flow, args.features_flow))
    fused = len(members) == 2
    cap = Captioner.from_members(members, args.device, streams=["rgb", "flow"] if fused else None)
    dec = cap.decoding.given(**flags)  # the checkpoint's decoding, with the flags given on top
    out = Path(args.out) if args.out else (Path(args.checkpoint).parent
                                     / f"eval_{args.split}_beam{dec.beam}{'_fused' if fused else ''}.json")
    lock(out)
    check_output(out, [x for m in members for x in (m.checkpoint, m.features)] + [args.annotations], args.overwrite, is_evaluation)
    probe_writable(out)  # fail before the work, not after
    r = evaluate_captioner(cap, args.dataset, args.annotations, args.split, dec, shared_meteor(),
                           log=say, progress=not args.quiet)
    _write_evaluation(args, r, out, members, dec)
    return 0


def _write_evaluation(args, r: dict, out: Path, members, dec) -> None:
    r.update(checkpoints=[m.checkpoint for m in members], features=[m.features for m in members])
    refs = r["videos"].keys() | set(r["missing"])
    if r["missing"]:
        say(f"s2vt evaluate: {len(r['missing'])} of {len(refs)} {args.split} videos have no features in every store "
            f"(e.g. {r['missing'][:3]}); scored the other {len(r['videos'])}")
    write_json(r, out)
    print(json.dumps({"metrics_x100": {k: round(100 * v, 2) for k, v in r["metrics"].items()},
                      "beam": dec.beam, "alpha": r["alpha"], "videos": len(r["videos"]), "missing": len(r["missing"]),
                      "written": str(out)}, indent=1))


def cmd_score(args) -> int:
    # regular UTF-8 files of at most 64 MiB, captions of at most 1,000 words (s2vt.runtime.inputs, s2vt.evaluation.metrics)
    refs = read_tsv(args.references, many=True, what="--references")
    cands = {k: v[0] for k, v in read_tsv(args.candidates, many=False, what="--candidates").items()}
    only_r, only_c = sorted(set(refs) - set(cands)), sorted(set(cands) - set(refs))
    common = sorted(set(refs) & set(cands))
    if not common:
        raise S2VTError(f"no video id is in both --references {args.references} and --candidates {args.candidates}")
    java_tok = not args.no_meteor or shutil.which("java") is not None  # --no-meteor without Java: pure Python
    corpus, per = score({k: refs[k] for k in common}, {k: cands[k] for k in common}, use_meteor=not args.no_meteor,
                        java_tokenizer=java_tok)
    out = {"metrics": corpus, "metrics_scale": "fractions in [0, 1] (the paper's tables show x100)",
           "tokenizer": "ptb" if java_tok else "python", "videos": len(common), "missing_candidates": only_r,
           "missing_references": only_c}
    if args.per_video:
        out["per_video"] = per
    if only_r or only_c:
        say(f"s2vt score: {len(only_r)} ids without a candidate, {len(only_c)} without references (listed in the JSON)")
    print(json.dumps(out, indent=1))
    return 0


def cmd_compare(args) -> int:
    if not 1 <= args.resamples <= 1_000_000:
        raise S2VTError(f"--resamples {args.resamples}: give 1 to 1000000")
    if args.seed < 0:
        raise S2VTError(f"--seed {args.seed}: give a seed of 0 or more")
    systems = load_systems(groups_of(args.evaluations, args.system))
    result = compare(systems, args.method, args.resamples, args.seed)
    print(table(result, systems))
    if args.json:
        print(json.dumps(result))
    return 0


def _check_benchmark_out(out: Path, overwrite: bool) -> None:
    """The results folder: a folder, writable, and not holding another program's benchmark files."""
    check_not_other_kind(out)
    try:
        ours = json.loads((out / "benchmark.json").read_text()).keys() >= {"table", "spec", "results"}
    except (OSError, ValueError, AttributeError):
        ours = False
    foreign = [n for n in ("benchmark.json", "benchmark.md") if (out / n).exists()]
    if foreign and not ours and not overwrite:
        raise S2VTError(f"--out {out} holds {', '.join(foreign)} not written by s2vt benchmark; "
                        "pass --overwrite or choose another folder")
    probe_writable(out / "benchmark.json")


def cmd_benchmark(args) -> int:
    flags = decode_flags(args)
    resolve_device(args.device)
    if args.spec:
        spec = read_json(args.spec, "--spec")
    else:
        if not (args.dataset and args.annotations):
            raise S2VTError("give --spec FILE.json, or --dataset and --annotations with model options")
        entry = {"name": args.dataset, "dataset": args.dataset, "annotations": args.annotations, "splits": args.splits}
        for k in ("rgb", "flow", "random"):
            ck, ft = getattr(args, f"{k}_checkpoint"), getattr(args, f"{k}_features")
            if bool(ck) != bool(ft):
                raise S2VTError(f"--{k}-checkpoint and --{k}-features go together")
            if ck:
                entry[k] = {"checkpoint": ck, "features": ft}
        if not any(k in entry for k in ("rgb", "flow", "random")):
            raise S2VTError("no model given: pass --rgb-checkpoint/--rgb-features (and/or --flow-..., --random-...)")
        spec = [entry]
    check_spec(spec)
    _check_benchmark_out(Path(args.out), args.overwrite)
    table, payload = benchmark(spec, args.out, flags, device=args.device, progress=not args.quiet)
    print(table)
    print("(x100; mean ± standard deviation where a row has several seeds)")
    for name, line in payload["verdicts"].items():
        print(f"  {name}: {line}")
    print(f"\nwritten: {shown(str(Path(args.out) / 'benchmark.md'))}, {shown(str(Path(args.out) / 'benchmark.json'))}")
    return 0


def cmd_report(args) -> int:
    check_input_file(args.evaluation, "evaluation")  # a regular file of at most 64 MiB, before any work
    if args.against:
        check_input_file(args.against, "--against")
    if args.dataset and not args.root:
        raise S2VTError("--dataset needs --root (the dataset folder), for the keyframes")
    path_of = load_corpus(args.dataset, args.root).video_path if args.dataset else None
    out = check_output(Path(args.out or Path(args.evaluation).with_suffix(".html")), [args.evaluation, args.against],
                       args.overwrite, is_report)
    if out.suffix.lower() not in (".html", ".htm"):
        raise S2VTError(f"--out {out}: the report is an HTML page; give a .html path")
    print(f"wrote {shown(str(write_report(args.evaluation, out, path_of, against_json=args.against)))}")
    return 0


def add_evaluate(sub, shared):
    s = sub.add_parser("evaluate", help="caption a split and score it (METEOR, BLEU, CIDEr, ROUGE-L)",
                       formatter_class=RAW, parents=[shared["device"], shared["decode"], shared["overwrite"]], epilog=examples(
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

    s = sub.add_parser("score", help="score any captions against references", formatter_class=RAW, description=(
                           "METEOR and the PTB tokenizer run on Java: a JVM must give its first answer within "
                           "S2VT_JAVA_TIMEOUT seconds of starting (default 60)."),
                       epilog=examples("s2vt score --references refs.tsv --candidates cands.tsv"))
    s.add_argument("--references", required=True, help="video_id<TAB>caption, many lines per video (a caption: at "
                                                        "most 1,000 words; the file: at most 64 MiB)")
    s.add_argument("--candidates", required=True, help="video_id<TAB>caption, one line per video")
    s.add_argument("--per-video", action="store_true", help="also print every video's scores")
    s.add_argument("--no-meteor", action="store_true",
                   help="skip METEOR; then no Java is needed: without a Java runtime captions are tokenised by a "
                        "pure-Python stand-in for the PTB tokenizer (equal on ordinary captions; unusual symbols or "
                        "abbreviations may tokenise differently; the JSON's 'tokenizer' says which ran)")
    s.set_defaults(fn=cmd_score)


def add_compare(sub, shared):
    s = sub.add_parser("compare", help="is a difference real? paired bootstrap or randomisation over test videos",
                       formatter_class=RAW, description=(
                           "Each system against the first (the baseline), per metric (METEOR, BLEU-4, CIDEr-D, "
                           "ROUGE-L): the difference, its 95% confidence interval and a p-value, from the per-video "
                           "statistics s2vt evaluate keeps. Every resample scores each metric in its corpus form. "
                           "A system of several runs (one per seed) also resamples its seeds and averages over them "
                           "inside each resample; systems with as many runs pair them by seed."),
                       epilog=examples(
                           "s2vt compare runs/base/eval_test_beam5.json runs/new/eval_test_beam5.json",
                           "s2vt compare --system xe runs/xe0/eval.json runs/xe1/eval.json runs/xe2/eval.json "
                           "--system scst runs/scst0/eval.json runs/scst1/eval.json runs/scst2/eval.json",
                           "s2vt compare base.json new.json --method ar --resamples 20000 --seed 1 --json"))
    s.add_argument("evaluations", nargs="*", help="evaluation JSONs (s2vt evaluate), one per system; the first is "
                                                  "the baseline")
    s.add_argument("--system", nargs="+", action="append", metavar=("NAME", "FILE"),
                   help="a system of several runs: its name, then one evaluation JSON per seed (repeat the flag "
                        "for each system; the first is the baseline)")
    s.add_argument("--method", choices=["bootstrap", "ar"], default="bootstrap",
                   help="bootstrap: paired bootstrap (default); ar: approximate randomisation (p), the CI from "
                        "the paired bootstrap")
    s.add_argument("--resamples", type=int, default=10_000, help="resamples or randomisation trials (default 10000)")
    s.add_argument("--seed", type=int, default=0, help="random seed: the same seed prints the same numbers (default 0)")
    s.add_argument("--json", action="store_true", help="end with one JSON line: baseline, systems (diff, ci, p per "
                                                       "metric, as fractions), resamples, method")
    s.set_defaults(fn=cmd_compare)


def add_benchmark(sub, shared):
    s = sub.add_parser("benchmark", help="the paper's table over datasets and splits", formatter_class=RAW,
                       parents=[shared["device"], shared["decode"], shared["overwrite"]], epilog=examples(
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


def add_report(sub, shared):
    s = sub.add_parser("report", help="HTML page of an evaluation (keyframes, captions, scores)", formatter_class=RAW,
                       parents=[shared["overwrite"]],
                       epilog=examples("s2vt report runs/rgb/eval_test_beam5.json --dataset synthetic --root data/synthetic",
                                       "s2vt report runs/new/eval_test_beam5.json --against runs/base/eval_test_beam5.json"
                                       "   # the videos that drive the difference first"))
    s.add_argument("evaluation", help="JSON written by s2vt evaluate")
    s.add_argument("--dataset", help=f"the evaluation's dataset ({DATASETS}), for keyframes (default: the video "
                                     "files the feature store recorded at extraction)")
    s.add_argument("--root", help="dataset root, for keyframes")
    s.add_argument("--out", help="HTML file (default: the evaluation's path with .html)")
    s.add_argument("--against", help="a baseline's evaluation JSON of the same videos (as s2vt compare takes): "
                                     "both captions per video and the differences, the largest first")
    s.set_defaults(fn=cmd_report)
