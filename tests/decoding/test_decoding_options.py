"""What is tuned is what is reported: the checkpoint's decoding is the default of every command,
flags override it, the fusion weight is tuned with the reported decoding, selection's decoding is
recorded, several seeds per benchmark row, and the Python API."""
import json
import re
import statistics

import pytest

import s2vt
from s2vt.runtime.errors import S2VTError
from s2vt.models.checkpoint import Checkpoint
from s2vt.cli.app import main
from commands import s2vt_in_process


def cli(*args) -> int:
    return main([str(a) for a in args])


def train_cli(tiny_features, out, stream="rgb", *extra) -> None:
    root, stores = tiny_features
    assert cli("train", "--dataset", "synthetic", "--annotations", root, "--features", stores[stream], "--out", out,
               "--max-steps", "3", "--batch-size", "8", "--no-val-meteor", "--embed", "8", "--hidden", "8",
               "--quiet", *extra) == 0


@pytest.fixture(scope="module")
def runs(tiny_features, tmp_path_factory):
    """RGB models of seeds 0 and 1 and a flow model; RGB seed 0 records beam 3 and length penalty 0.7."""
    d = tmp_path_factory.mktemp("dec")
    out = {}
    for stream, seed in (("rgb", 0), ("rgb", 1), ("flow", 0)):
        extra = ["--seed", str(seed)] + (["--beam", "3", "--len-penalty", "0.7"] if (stream, seed) == ("rgb", 0) else [])
        train_cli(tiny_features, d / f"{stream}{seed}", stream, *extra)
        out[stream, seed] = d / f"{stream}{seed}" / "best.pt"
    return out


def test_the_checkpoints_decoding_is_the_default_and_flags_override_it(tiny_features, runs, capsys):
    from s2vt.captioning.captioner import Captioner, Member
    from s2vt.cli.app import build_parser
    from s2vt.cli.common import decode_flags

    root, stores = tiny_features
    ck = runs["rgb", 0]
    dec = Checkpoint.load(ck).decoding
    assert (dec.beam, dec.len_penalty, dec.max_len) == (3, 0.7, 30)
    base = ["evaluate", "--dataset", "synthetic", "--annotations", root, "--checkpoint", ck, "--features", stores["rgb"]]
    assert cli(*base) == 0
    ev = json.loads((ck.parent / "eval_test_beam3.json").read_text())  # named after the beam it used
    assert ev["decoding"] == {"beam": 3, "max_len": 30, "len_penalty": 0.7, "alpha": None}
    flags = decode_flags(build_parser().parse_args([str(a) for a in base] + ["--beam", "1", "--max-len", "2"]))
    assert flags == {"beam": 1, "max_len": 2}  # only what was given
    cap = Captioner.from_members([Member(str(ck), str(stores["rgb"]))])
    assert cap.decoding.given(**flags) == type(dec)(beam=1, max_len=2, len_penalty=0.7)
    caps = cap.caption(list(ev["videos"]), decoding=cap.decoding.given(**flags))
    assert all(len(c.split()) <= 2 for c in caps.values()) and any(len(c.split()) > 2 for c in
                                                                  (v["caption"] for v in ev["videos"].values()))
    capsys.readouterr()
    assert cli(*base, "--beam", "0", "--out", "b0.json") == 2
    assert "--beam (DecodeConfig.beam) must be >= 1" in capsys.readouterr().err


def test_fusion_is_tuned_with_the_reported_decoding_and_never_loses_to_either_model(tiny_features, runs, tmp_path):
    root, stores = tiny_features
    common = ["evaluate", "--dataset", "synthetic", "--annotations", root, "--split", "val", "--beam", "5"]
    assert cli(*common, "--checkpoint", runs["rgb", 1], "--features", stores["rgb"], "--checkpoint-flow",
               runs["flow", 0], "--features-flow", stores["flow"], "--out", tmp_path / "fused.json") == 0
    fused = json.loads((tmp_path / "fused.json").read_text())
    tuning = fused["alpha_tuning"]
    assert tuning["decoding"]["beam"] == 5 == fused["decoding"]["beam"]
    assert fused["weights"] == [fused["alpha"], pytest.approx(1 - fused["alpha"])]
    curve = {float(a): v for a, v in tuning["curve"].items()}
    # tuning and reporting agree: on the split it was tuned on, the reported score is the curve's best
    assert fused["metrics"]["METEOR"] == pytest.approx(curve[fused["alpha"]]) == pytest.approx(max(curve.values()))
    # the grid's ends are the single models: a member of weight 0 is not run at all
    from s2vt.captioning.captioner import Captioner, Member

    members = [Member(str(runs["rgb", 1]), str(stores["rgb"])), Member(str(runs["flow", 0]), str(stores["flow"]))]
    both = Captioner.from_members(members, streams=["rgb", "flow"])
    vids = list(fused["videos"])
    for i, w in enumerate(([1.0, 0.0], [0.0, 1.0])):
        alone = Captioner.from_members(members[i:i + 1])
        assert both.caption(vids, w, beam=5) == alone.caption(vids, beam=5)
    assert fused["metrics"]["METEOR"] >= max(curve[0.0], curve[1.0])


def test_train_needs_dataset_and_records_the_selection_beam(tiny_features, tmp_path, capsys):
    root, stores = tiny_features
    rc = cli("train", "--annotations", root, "--features", stores["rgb"], "--out", tmp_path / "r", "--quiet")
    err = capsys.readouterr().err
    assert rc == 2 and "--dataset is required" in err and not (tmp_path / "r").exists()
    train_cli(tiny_features, tmp_path / "s", "rgb", "--val-meteor", "--select-beam", "2", "--max-steps", "0",
              "--epochs", "1")
    vals = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in vals if "val_meteor" in r]
    assert vals and all(r["val_beam"] == 2 for r in vals)
    assert json.loads((tmp_path / "s" / "config.json").read_text())["select_beam"] == 2


def test_benchmark_takes_a_checkpoint_per_seed(tiny_features, runs, tmp_path, capsys):
    root, stores = tiny_features
    capsys.readouterr()
    seeds = [runs["rgb", s] for s in (0, 1)]
    assert cli("benchmark", "--dataset", "synthetic", "--annotations", root, "--beam", "1",
               "--rgb-checkpoint", *seeds, "--rgb-features", stores["rgb"],
               "--random-checkpoint", *seeds, "--random-features", stores["rgb"], "--out", tmp_path / "b", "--quiet") == 0
    out = capsys.readouterr().out
    per_seed = [json.loads((tmp_path / "b" / f"synthetic_test_RGB_seed{s}.json").read_text()) for s in (0, 1)]
    meteors = [r["metrics"]["METEOR"] for r in per_seed]
    assert [r["decoding"]["beam"] for r in per_seed] == [1, 1]  # the flag over seed 0's recorded beam 3
    assert [r["checkpoints"] for r in per_seed] == [[str(c)] for c in seeds]
    row = next(line for line in out.splitlines() if line.startswith("| RGB |"))
    assert row.split(" | ")[1] == f"{100 * statistics.mean(meteors):.1f} ± {100 * statistics.stdev(meteors):.1f}"
    payload = json.loads((tmp_path / "b" / "benchmark.json").read_text())
    assert [m["METEOR"] for m in payload["results"]["RGB"]["synthetic test"]] == meteors
    assert re.search(r"RGB above RGB random order \(synthetic test\): (holds beyond seed noise|holds on the means only|"
                     r"does NOT hold)", out)
    spec = [{"name": "x", "dataset": "synthetic", "annotations": str(root),
             "rgb": {"checkpoint": [str(c) for c in seeds], "features": str(stores["rgb"])},
             "random": {"checkpoint": [str(c) for c in seeds * 2][:3], "features": str(stores["rgb"])}}]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert cli("benchmark", "--spec", tmp_path / "spec.json", "--out", tmp_path / "c") == 2
    assert "different numbers of checkpoints (rgb 2, random 3)" in capsys.readouterr().err


def test_python_api_captions_a_raw_file_like_the_command(tiny_features, runs, capsys):
    root, _ = tiny_features
    video = sorted((root / "videos").iterdir())[0]
    assert set(s2vt.__all__) >= {"caption_videos", "load_checkpoint", "extract_features", "evaluate_split"}
    caps = s2vt.caption_videos([video], checkpoint=runs["rgb", 0], beam=2)
    r = s2vt_in_process("caption", video, "--checkpoint", runs["rgb", 0], "--beam", "2")
    assert r.returncode == 0 and r.stdout.strip() == f"{video}\t{caps[str(video)]}"
    assert s2vt.load_checkpoint(runs["rgb", 0]).decoding.beam == 3
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"s2vt {s2vt.__version__}"


def test_python_api_keeps_every_good_caption_and_says_why_the_others_failed(tiny_features, runs, tmp_path):
    root, _ = tiny_features
    good = sorted((root / "videos").iterdir())[:2]
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    caps = s2vt.caption_videos([good[0], tmp_path / "missing.mp4", text, good[1]], checkpoint=runs["rgb", 0], beam=2)
    assert sorted(caps) == sorted(str(v) for v in good) and all(caps[str(v)] for v in good)
    assert sorted(caps.failed) == sorted([str(tmp_path / "missing.mp4"), str(text)])
    assert "missing.mp4" in caps.failed[str(tmp_path / "missing.mp4")] and caps.captions == dict(caps)
    one = s2vt.caption_videos(str(good[0]), checkpoint=runs["rgb", 0], beam=2)  # one path, not its characters
    assert one == {str(good[0]): caps[str(good[0])]} and one.failed == {}
    for bad, message in [(dict(videos=3), "videos must be a path"), (dict(checkpoint=7), "checkpoint must be a path"),
                         (dict(alpha=0.3), "give checkpoint_flow"), (dict(device="banana"), "banana")]:
        kwargs = {"videos": good[0], "checkpoint": runs["rgb", 0], **bad}
        with pytest.raises(S2VTError, match=message):
            s2vt.caption_videos(**kwargs)


def test_python_api_refuses_arguments_of_the_wrong_type_with_one_line(tmp_path):
    ck, store, notes = tmp_path / "best.pt", tmp_path / "f.h5", tmp_path / "ann"
    calls = [(lambda: s2vt.load_checkpoint(5), "path must be a path (str or pathlib.Path), not int"),
             (lambda: s2vt.load_checkpoint(None), "path must be a path (str or pathlib.Path), not None"),
             (lambda: s2vt.extract_features(None, out=store), "videos must be a path (str or pathlib.Path) or a "
                                                             "list of paths, not NoneType"),
             (lambda: s2vt.extract_features(5, out=store), "videos must be a path (str or pathlib.Path) or a list "
                                                          "of paths, not int"),
             (lambda: s2vt.extract_features(tmp_path, out=None), "out must be a path (str or pathlib.Path), not None"),
             (lambda: s2vt.extract_features(tmp_path, out=5), "out must be a path (str or pathlib.Path), not int"),
             (lambda: s2vt.extract_features(tmp_path, out=store, device=None), "device must be a device name"),
             (lambda: s2vt.caption_videos("a.mp4", ck, device=5), "device must be a device name (a str such as "
                                                                  "'cpu', 'cuda' or 'cuda:1', or a torch.device), "
                                                                  "not int"),
             (lambda: s2vt.caption_videos("a.mp4", ck, device=None), "device must be a device name"),
             (lambda: s2vt.evaluate_split(ck, store, "synthetic", None),
              "annotations must be a path (str or pathlib.Path), not None"),
             (lambda: s2vt.evaluate_split(ck, None, "synthetic", notes), "features must be a path"),
             (lambda: s2vt.evaluate_split(ck, store, ["synthetic"], notes), "dataset must be a str"),
             (lambda: s2vt.evaluate_split(ck, store, "synthetic", notes, device=5), "device must be a device name"),
             (lambda: s2vt.evaluate_split(ck, store, "synthetic", notes, alpha=0.5),
              "alpha is for fusion with a flow model: give checkpoint_flow and features_flow, or leave it out")]
    for call, message in calls:
        with pytest.raises(S2VTError) as e:
            call()
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not store.exists()


def test_evaluate_split_refuses_alpha_without_a_flow_model_and_leaves_no_file_open(tiny_features, runs):
    import gc
    import warnings

    root, stores = tiny_features
    with pytest.raises(S2VTError, match="alpha is for fusion with a flow model"):
        s2vt.evaluate_split(runs["rgb", 0], stores["rgb"], "synthetic", root, alpha=0.5)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        r = s2vt.evaluate_split(runs["rgb", 0], stores["rgb"], "synthetic", root, beam=1)
        gc.collect()
    assert len(r["videos"]) == 4 and r["decoding"]["beam"] == 1
    assert [str(w.message) for w in said if issubclass(w.category, ResourceWarning)] == []


def test_report_header_and_keyframes_from_the_stores_sources(tiny_features, runs, tmp_path):
    root, stores = tiny_features
    ck = runs["rgb", 0]
    ev = ck.parent / "eval_test_beam3.json"
    if not ev.exists():
        assert cli("evaluate", "--dataset", "synthetic", "--annotations", root, "--checkpoint", ck,
                   "--features", stores["rgb"], "--quiet") == 0
    saved = json.loads(ev.read_text())
    assert saved["features"] == [str(stores["rgb"])] and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", saved["date"])
    assert cli("report", ev, "--out", tmp_path / "r.html") == 0  # no --dataset/--root: the store's source paths
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 4 * len(saved["videos"])
    header = re.search(r"<p class='setup'>(.*?)</p>", page).group(1)
    assert header == (f"checkpoint {ck}; synthetic test; beam 3; length penalty 0.7; at most 30 words; "
                      f"evaluated {saved['date']}")


def test_metrics_in_epochs_and_tensorboard_events(tiny_features, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_cli(tiny_features, tmp_path / "t", "rgb", "--max-steps", "0", "--epochs", "2", "--log-every", "2",
              "--tensorboard")
    recs = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in recs if "train_loss" in r]
    first_val = next(r for r in recs if "val_loss" in r)  # written at the end of epoch 1
    per_epoch = first_val["step"] / first_val["epoch"]
    assert all(r["epochs"] == pytest.approx(r["step"] / per_epoch, abs=1e-3) for r in train_lines)
    acc = EventAccumulator(str(tmp_path / "t" / "tensorboard"))
    acc.Reload()
    logged = acc.Scalars("train/train_loss")
    assert [(e.step, e.value) for e in logged] == [(r["step"], pytest.approx(r["train_loss"])) for r in train_lines]
    assert "val/val_loss" in acc.Tags()["scalars"]
    assert (tmp_path / "t" / "curves.png").stat().st_size > 0


def test_caption_attention_without_an_attention_model_is_refused_before_any_video(tiny_features, runs, capsys):
    root, _ = tiny_features
    videos = [str(v) for v in sorted((root / "videos").iterdir())[:2]]
    capsys.readouterr()
    assert main(["caption", *videos, "--checkpoint", str(runs["rgb", 0]), "--json", "--attention"]) == 2
    said = capsys.readouterr()
    assert said.out == ""  # no video was decoded
    assert len(said.err.strip().splitlines()) == 1 and "no attention" in said.err and "--decoder s2vt" in said.err
