"""Hostile command lines: one line per refusal, no traceback, nothing the command did not create is damaged."""
import hashlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from s2vt.cli.app import main


@pytest.fixture(scope="module")
def run(tiny_features, tmp_path_factory):
    from s2vt.models.s2vt import ModelConfig
    from s2vt.training.config import TrainConfig
    from s2vt.training.loop import train

    root, stores = tiny_features
    out = tmp_path_factory.mktemp("cli") / "run"
    train(TrainConfig.from_dict(dict(dataset="synthetic", annotations=str(root), features=str(stores["rgb"]), out=str(out),
                                     max_steps=2, batch_size=8, val_meteor=False, model=ModelConfig(embed=8, hidden=8))),
          progress=False)
    return root, stores, out / "best.pt"


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def refused(capsys, argv, code=2, *needles):
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_evaluate_refuses_to_overwrite_its_inputs(run, capsys):
    root, stores, ck = run
    base = ["evaluate", "--dataset", "synthetic", "--annotations", root, "--checkpoint", ck, "--features", stores["rgb"]]
    before = digest(ck), digest(stores["rgb"])
    refused(capsys, base + ["--out", ck], 2, "is one of this command's inputs")
    refused(capsys, base + ["--out", stores["rgb"]], 2, "is one of this command's inputs")
    assert (digest(ck), digest(stores["rgb"])) == before


def test_report_refuses_to_replace_its_input_or_a_foreign_file(run, tmp_path, capsys):
    ev = tmp_path / "ev.json"
    ev.write_text(json.dumps({"metrics": {}, "videos": {}}))
    before = digest(ev)
    refused(capsys, ["report", ev, "--out", ev], 2, "is one of this command's inputs")
    mine = tmp_path / "notes.html"
    mine.write_text("<p>my notes</p>")
    refused(capsys, ["report", ev, "--out", mine], 2, "was not written by this command", "--overwrite")
    assert digest(ev) == before and mine.read_text() == "<p>my notes</p>"
    assert main(["report", str(ev), "--out", str(tmp_path / "r.html")]) == 0
    assert main(["report", str(ev), "--out", str(tmp_path / "r.html")]) == 0  # its own output may be replaced


@pytest.mark.parametrize("flags, needle", [
    (["--beam", "0"], "--beam"), (["--alpha", "nan"], "--alpha"), (["--alpha", "2"], "--alpha"),
    (["--device", "cuda:7"], "--device"), (["--device", "banana"], "--device"),
])
def test_caption_refuses_values_that_make_no_sense(run, capsys, flags, needle):
    root, stores, ck = run
    video = next((root / "videos").iterdir())
    refused(capsys, ["caption", video, "--checkpoint", ck, "--checkpoint-flow", ck, *flags], 2, needle)


@pytest.mark.parametrize("flags, needle", [
    (["--grad-clip", "-5"], "--grad-clip"), (["--max-words", "-2"], "--max-words"), (["--epochs", "0"], "--epochs"),
    (["--lr", "inf"], "--lr"), (["--device", "cuda"], "no CUDA GPU"), (["--amp"], "--amp"),
])
def test_train_refuses_values_that_make_no_sense(run, tmp_path, capsys, flags, needle):
    root, stores, _ = run
    refused(capsys, ["train", "--dataset", "synthetic", "--annotations", root, "--features", stores["rgb"],
                     "--out", tmp_path / "r", *flags], 2, needle)
    assert not (tmp_path / "r" / "best.pt").exists()


def test_train_config_file_errors_are_one_line(run, tmp_path, capsys):
    (tmp_path / "c.json").write_text("{not json")
    refused(capsys, ["train", "--config", tmp_path / "c.json"], 2, "is not valid JSON")
    (tmp_path / "c.json").write_text("[1, 2]")
    refused(capsys, ["train", "--config", tmp_path / "c.json"], 2, "JSON object")


def test_zero_byte_and_foreign_checkpoints_are_refused(run, tmp_path, capsys):
    root, stores, _ = run
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "junk.pt").write_bytes(b"\x00junk" * 50)
    for bad, needle in ((tmp_path / "empty.pt", "empty"), (tmp_path / "junk.pt", "refusing to load")):
        refused(capsys, ["evaluate", "--dataset", "synthetic", "--annotations", root, "--checkpoint", bad,
                         "--features", stores["rgb"], "--out", tmp_path / "e.json"], 2, needle)


@pytest.mark.parametrize("spec, needle", [
    ([{"name": "../../x", "dataset": "synthetic", "annotations": "A", "rgb": {"checkpoint": "c", "features": "f"}}],
     "path separator"),
    ([{"name": "x", "dataset": "synthetic", "annotations": "A"}], "names no model"),
    ({"name": "x"}, "non-empty JSON list"),
])
def test_benchmark_spec_is_checked(tmp_path, capsys, spec, needle):
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    refused(capsys, ["benchmark", "--spec", tmp_path / "spec.json", "--out", tmp_path / "b"], 2, needle)
    assert not (tmp_path / "b").exists() and not (tmp_path.parent / "x_test_RGB.json").exists()


@pytest.mark.parametrize("line, needle", [("a/b\tx.mp4", "path separator"), ("..\tx.mp4", "starts with a dot"),
                                          ("\tx.mp4", "empty"), ("a\tb\tc", "columns")])
def test_extract_list_ids_follow_the_id_rule(tmp_path, capsys, line, needle):
    (tmp_path / "list.txt").write_text(line + "\n")
    err = refused(capsys, ["extract", "--list", tmp_path / "list.txt", "--out", tmp_path / "f.h5"], 2, needle)
    assert "list.txt:1" in err and not (tmp_path / "f.h5").exists()


@pytest.mark.parametrize("shard", ["0/0", "3/2", "x", "1/-1"])
def test_extract_shard_is_checked(tmp_path, capsys, shard, tiny_synth):
    root, _ = tiny_synth
    refused(capsys, ["extract", root / "videos", "--out", tmp_path / "f.h5", "--shard", shard], 2, "--shard")


def test_runtime_oserror_is_one_line_naming_the_file(tmp_path, capsys):
    ev = tmp_path / "ev.json"
    ev.write_text(json.dumps({"metrics": {}, "videos": {}}))
    (tmp_path / "afile").write_text("a file where a folder is expected")
    for out in (tmp_path / "afile" / "r.html", tmp_path / "afile" / "sub" / "r.html"):  # through a file
        refused(capsys, ["report", ev, "--out", out], 1, "afile", "a file stands where a folder is needed")
    assert (tmp_path / "afile").read_text() == "a file where a folder is expected"


def test_an_oserror_naming_no_file_reads_cleanly(capsys, monkeypatch):
    import s2vt.cli.evaluation as cli

    def locked(args):  # how h5py reports a file another process holds: no filename
        raise OSError("Unable to synchronously open file (unable to lock file, errno = 11)")

    monkeypatch.setattr(cli, "cmd_report", locked)  # build_parser binds it when main runs
    err = refused(capsys, ["report", "ev.json"], 1, "s2vt report: error: Unable to synchronously open file")
    assert "error::" not in err


def test_file_names_with_control_characters_print_on_one_line(run, tmp_path, capsys):
    from s2vt.cli.app import _one_line_warning

    root, _, ck = run
    video = sorted((root / "videos").iterdir())[0]
    good, bad = tmp_path / "a\nb.avi", tmp_path / "c\td\x1b.avi"
    good.write_bytes(video.read_bytes())
    bad.write_text("not a video")
    assert main(["caption", str(good), str(bad), "--checkpoint", str(ck)]) == 1
    said = capsys.readouterr()
    rows = [line.split("\t") for line in said.out.splitlines()]
    assert [r[0] for r in rows] == [f"{tmp_path}/a\\nb.avi", f"{tmp_path}/c\\td\\x1b.avi"] and len(rows[0]) == 2
    assert rows[1][1:] == [f"error: cannot open: not a video, or a codec OpenCV lacks: {tmp_path}/c\\td\\x1b.avi"]
    assert said.err.splitlines() == [f"s2vt caption: {tmp_path}/c\\td\\x1b.avi: cannot open: not a video, or a "
                                     f"codec OpenCV lacks: {tmp_path}/c\\td\\x1b.avi"]
    err = refused(capsys, ["caption", good, "--checkpoint", tmp_path / "no\nne\u2028.pt"], 2)
    assert err == f"s2vt caption: error: checkpoint not found: {tmp_path}/no\\nne\\u2028.pt\n"
    line = _one_line_warning(UserWarning("two\nlines"), UserWarning, "f.py", 1)
    assert line == "s2vt: warning: two\\nlines\n"


def test_runs_with_its_error_stream_closed(tmp_path, tiny_synth):
    """Python sets sys.stderr to None when descriptor 2 is closed; the progress bars wrote to it."""
    root, _ = tiny_synth
    out = tmp_path / "f.h5"
    r = subprocess.run(f"{shlex.quote(sys.executable)} -m s2vt extract {shlex.quote(str(root / 'videos'))} "
                       f"--out {shlex.quote(str(out))} --input-size 64 --workers 0 2>&-", shell=True,
                       capture_output=False, stdout=subprocess.PIPE, text=True, timeout=300)
    assert r.returncode == 0, r.stdout
    assert "extracted" in r.stdout and out.exists()


def test_distributed_run_without_peers_fails_in_bounded_time(run, tmp_path, capsys, monkeypatch):
    root, stores, _ = run
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29517")
    refused(capsys, ["train", "--dataset", "synthetic", "--annotations", root, "--features", stores["rgb"],
                     "--out", tmp_path / "r", "--dist-timeout", "3", "--quiet"], 2, "could not join the 2-process")


def test_train_keeps_a_folder_of_foreign_run_files(run, tmp_path, capsys):
    root, stores, _ = run
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text('{"my": "notes"}')
    refused(capsys, ["train", "--dataset", "synthetic", "--annotations", root, "--features", stores["rgb"],
                     "--out", tmp_path / "mine", "--max-steps", "1"], 2, "config.json", "--overwrite")
    assert (tmp_path / "mine" / "config.json").read_text() == '{"my": "notes"}'


def test_benchmark_keeps_foreign_result_files_and_checks_the_spec(run, tmp_path, capsys):
    root, stores, ck = run
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "benchmark.md").write_text("my table")
    refused(capsys, ["benchmark", "--dataset", "synthetic", "--annotations", root, "--rgb-checkpoint", ck,
                     "--rgb-features", stores["rgb"], "--out", tmp_path / "b"], 2, "benchmark.md", "--overwrite")
    assert (tmp_path / "b" / "benchmark.md").read_text() == "my table"
    refused(capsys, ["benchmark", "--dataset", "synthetic", "--annotations", root, "--out", tmp_path / "c"], 2,
            "--rgb-checkpoint")
    model = {"checkpoint": str(ck), "features": str(stores["rgb"])}
    for spec, needle in (([{"name": "a", "dataset": "synthetic", "annotations": str(root), "flwo": model, "rgb": model}],
                          "unknown keys ['flwo']"),
                         ([{"name": "a", "dataset": "synthetic", "annotations": str(root), "rgb": model}] * 2,
                          "second entry named 'a'")):
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        refused(capsys, ["benchmark", "--spec", tmp_path / "spec.json", "--out", tmp_path / "d"], 2, needle)


def test_fusion_checks_which_model_is_which(run, tiny_features, tmp_path, capsys):
    root, stores, ck = run
    video = next((root / "videos").iterdir())
    refused(capsys, ["caption", video, "--checkpoint", ck, "--checkpoint-flow", ck], 2,
            "trained on rgb features, but is given as the flow model")
    refused(capsys, ["caption", video, "--checkpoint", ck, "--alpha", "0.3"], 2, "--alpha is for fusion")
    refused(capsys, ["evaluate", "--dataset", "synthetic", "--annotations", root, "--checkpoint", ck,
                     "--features", stores["rgb"], "--features-flow", stores["flow"]], 2, "--features-flow is for fusion")


@pytest.mark.parametrize("evaluation, needle", [
    ({"metrics": {}, "videos": {"v": 7}}, "videos['v']"), ({"metrics": "x", "videos": {}}, "'metrics'"),
    ([1, 2], "no 'videos' object"),
])
def test_report_refuses_malformed_evaluations(tmp_path, capsys, evaluation, needle):
    (tmp_path / "e.json").write_text(json.dumps(evaluation))
    refused(capsys, ["report", tmp_path / "e.json", "--out", tmp_path / "r.html"], 2, needle)
    (tmp_path / "bin.json").write_bytes(b"\x80\x81binary")
    refused(capsys, ["report", tmp_path / "bin.json", "--out", tmp_path / "r.html"], 2, "is not an evaluation JSON")


def test_resume_with_nothing_left_to_train_changes_nothing(run, tmp_path, capsys):
    root, stores, ck = run
    before = {p.name: p.read_bytes() for p in ck.parent.iterdir() if p.is_file()}
    rc = main(["train", "--dataset", "synthetic", "--annotations", str(root), "--features", str(stores["rgb"]),
               "--out", str(ck.parent), "--max-steps", "2", "--batch-size", "8", "--no-val-meteor", "--embed", "8",
               "--hidden", "8", "--resume", "--quiet"])
    out = capsys.readouterr()
    assert rc == 0 and "nothing to train" in out.out
    assert json.loads(out.out[out.out.index("{"):])["steps"] == 2
    assert {p.name: p.read_bytes() for p in ck.parent.iterdir() if p.is_file()} == before


def test_extract_and_merge_refusals_leave_no_files(run, tmp_path, capsys):
    root, stores, _ = run
    (tmp_path / "empty").mkdir()
    refused(capsys, ["extract", tmp_path / "empty", "--out", tmp_path / "f.h5"], 2, "no video files in this folder")
    (tmp_path / "w.pth").write_text("not weights")
    err = refused(capsys, ["extract", root / "videos", "--cnn", "alexnet", "--weights", tmp_path / "w.pth",
                           "--out", tmp_path / "f.h5", "--input-size", "64", "--workers", "0"], 2, "w.pth")
    assert "weights_only" not in err and not (tmp_path / "f.h5").exists()
    (tmp_path / "outdir").mkdir()
    refused(capsys, ["merge-features", tmp_path / "outdir", stores["rgb"], "--overwrite"], 2, "is a folder")
    refused(capsys, ["merge-features", tmp_path / "m.h5", stores["rgb"], stores["rgb"]], 2, "more than one shard")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "outdir", "w.pth"]


@pytest.mark.parametrize("flags, needle", [
    (["--width", "0"], "--width"), (["--fps", "nan"], "--fps"), (["--frames", "0"], "--frames"),
    (["--train", "-3"], "--train"), (["--captions-per-clip", "0"], "--captions-per-clip"),
    (["--workers", "-1"], "--workers"), (["--frames", "1000000000"], "--frames"),
])
def test_synth_refuses_values_that_make_no_sense_and_writes_nothing(tmp_path, capsys, flags, needle):
    refused(capsys, ["synth", tmp_path / "d", *flags], 2, needle)
    assert not (tmp_path / "d").exists()


def test_an_interrupted_train_says_how_to_go_on(run, tmp_path, capsys, monkeypatch):
    import s2vt.training.loop as tr

    root, stores, _ = run
    argv = ["train", "--dataset", "synthetic", "--annotations", str(root), "--features", str(stores["rgb"]),
            "--out", str(tmp_path / "r"), "--epochs", "2", "--batch-size", "8", "--no-val-meteor", "--embed", "8",
            "--hidden", "8", "--quiet"]
    real, calls = tr.train_one_epoch, []

    def interrupted_in_epoch(n):
        def one_epoch(*a, **k):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*a, **k)
        return one_epoch

    monkeypatch.setattr(tr, "train_one_epoch", interrupted_in_epoch(1))
    assert main(argv) == 130
    assert "no epoch was saved; re-run the same command with --overwrite" in capsys.readouterr().err
    calls.clear()
    monkeypatch.setattr(tr, "train_one_epoch", interrupted_in_epoch(2))
    assert main(argv + ["--overwrite"]) == 130  # as the message says; interrupted again, in epoch 2
    assert "last.pt holds the last finished epoch; add --resume" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(argv + ["--resume"]) == 0


def test_list_file_skips_comments_and_a_byte_order_mark(tmp_path):
    from s2vt.cli.features import list_items

    lst = tmp_path / "videos.txt"
    lst.write_bytes("\ufeffa/clip1.avi\n# my note\n\n  # indented note\nv2\tb/clip2.mp4\n".encode("utf-8"))
    assert list_items(str(lst)) == [("clip1", Path("a/clip1.avi")), ("v2", Path("b/clip2.mp4"))]
