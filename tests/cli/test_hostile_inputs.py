"""Hostile files and numbers a user's command loads: each gives ONE line naming the file or flag and a
non-zero exit; never an internal error, a traceback, a hang or an out-of-memory kill (s2vt.runtime.inputs)."""
import json
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch

from s2vt.cli.app import main
from s2vt.runtime.errors import S2VTError


def one_line(capsys, argv, *needles, code=2):
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == code, err
    assert len(err.strip().splitlines()) == 1, err
    assert "internal error" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def cli(*args, env=None, timeout=60):
    """``python -m s2vt ARGS`` in a subprocess: a hang fails the test instead of blocking it."""
    return subprocess.run([sys.executable, "-m", "s2vt", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


# ----------------------------------------------------------------------------- 1. regular files, bounded size

@pytest.mark.parametrize("argv, flag", [
    (["train", "--config", "{f}"], "--config"),
    (["benchmark", "--spec", "{f}", "--out", "{d}/bench"], "--spec"),
    (["extract", "--list", "{f}", "--out", "{d}/o.h5"], "--list"),
    (["score", "--references", "{f}", "--candidates", "{f}"], "--references"),
    (["report", "{f}", "--out", "{d}/r.html"], "evaluation"),
])
def test_a_fifo_or_folder_is_refused_by_name_at_once(tmp_path, fifo, capsys, argv, flag):
    for f, kind in ((fifo, "FIFO"), (tmp_path, "folder")):
        args = [a.format(f=f, d=tmp_path) for a in argv]
        one_line(capsys, args, f"{flag} {f}", kind)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]  # nothing written


def test_import_id_map_fifo_is_refused(tmp_path, fifo, capsys):
    import numpy as np

    (tmp_path / "src").mkdir()
    np.save(tmp_path / "src" / "v1.npy", np.ones((2, 3), np.float32))
    one_line(capsys, ["import-features", tmp_path / "src", "--out", tmp_path / "o.h5", "--name", "x",
                      "--id-map", fifo], "--id-map", "FIFO")
    assert not (tmp_path / "o.h5").exists()


def test_fifo_config_does_not_hang_a_real_process(tmp_path, fifo):
    r = cli("train", "--config", fifo, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--config" in r.stderr and "FIFO" in r.stderr


def test_oversized_inputs_are_refused(tmp_path, capsys):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(65 * 2 ** 20)  # sparse: no disk used
    one_line(capsys, ["train", "--config", big], "--config", "65 MiB", "64 MiB")
    one_line(capsys, ["score", "--references", big, "--candidates", big], "--references", "64 MiB")


# ----------------------------------------------------------------------------- 2. JSON: nesting and encoding

def test_deep_or_non_utf8_json_is_refused(tmp_path, capsys):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    one_line(capsys, ["train", "--config", tmp_path / "deep.json"], "--config", "nested deeper than 64")
    (tmp_path / "deep2.json").write_text('{"a": ' * 70 + "1" + "}" * 70)
    one_line(capsys, ["benchmark", "--spec", tmp_path / "deep2.json"], "--spec", "nested deeper than 64")
    (tmp_path / "latin1.json").write_bytes(b'{"dataset": "caf\xe9"}')
    one_line(capsys, ["train", "--config", tmp_path / "latin1.json"], "--config", "not UTF-8")
    (tmp_path / "digits.json").write_text('{"seed": ' + "9" * 5000 + "}")
    one_line(capsys, ["train", "--config", tmp_path / "digits.json"], "--config", "digits")
    (tmp_path / "ok.json").write_text('{"a": "[[[[" }')  # brackets inside strings do not count
    from s2vt.runtime.inputs import read_json
    assert read_json(tmp_path / "ok.json") == {"a": "[[[["}


# ----------------------------------------------------------------------------- 3. integers bounded

@pytest.mark.parametrize("argv, needles", [
    (["train", "--seed", "99999999999999999999999", "--dataset", "x"], ["--seed", "2**63-1"]),
    (["train", "--batch-size", "1000000000", "--dataset", "x"], ["--batch-size", "<= 16384"]),
    (["train", "--hidden", "100000000", "--dataset", "x"], ["--hidden", "<= 8192"]),
    (["synth", "{d}/s", "--seed", "99999999999999999999999"], ["--seed", "2**63-1"]),
    (["extract", "{v}", "--out", "{d}/o.h5", "--batch-size", "1000000000"], ["--batch-size", "<= 65536"]),
    (["extract", "{v}", "--out", "{d}/o.h5", "--input-size", "20000"], ["--input-size", "<= 1024"]),
    (["extract", "{v}", "--out", "{d}/o.h5", "--max-frames", "10000000000"], ["--max-frames", "<="]),
    (["caption", "v.mp4", "--checkpoint", "x.pt", "--beam", "1000000"], ["--beam", "<= 100"]),
    (["demo", "--workdir", "{d}/demo", "--seeds", "0", "99999999999999999999999"], ["--seeds", "2**63-1"]),
])
def test_integers_that_reach_numpy_or_torch_are_bounded(tmp_path, tmp_path_factory, capsys, argv, needles):
    video = tmp_path_factory.mktemp("videos") / "a.mp4"
    video.write_bytes(b"")
    one_line(capsys, [a.format(d=tmp_path, v=video) for a in argv], *needles)
    assert list(tmp_path.iterdir()) == []


def test_seed_through_config_json_is_bounded(tmp_path, capsys):
    (tmp_path / "c.json").write_text(json.dumps({"seed": 10 ** 22, "dataset": "x"}))
    one_line(capsys, ["train", "--config", tmp_path / "c.json"], "--seed", "2**63-1")
    (tmp_path / "c.json").write_text(json.dumps({"model": {"embed": 10 ** 30}}))
    one_line(capsys, ["train", "--config", tmp_path / "c.json"], "--embed", "<= 8192")


# ----------------------------------------------------------------------------- 4. --list lines

@pytest.mark.parametrize("bad", ["a\x00b.mp4", "clip\x1b[31m.mp4", "x\x0bclip.mp4"])
def test_list_lines_with_control_characters_are_refused(tmp_path, capsys, bad):
    lst = tmp_path / "list.txt"
    lst.write_text(f"# videos\nfine.mp4\n{bad}\n")
    one_line(capsys, ["extract", "--list", lst, "--out", tmp_path / "o.h5"], f"{lst}:3", "control character"
             if "\x00" not in bad else "NUL")
    assert not (tmp_path / "o.h5").exists()


# ----------------------------------------------------------------------------- 5. score

def test_score_bounds_caption_length(tmp_path, capsys):
    (tmp_path / "r.tsv").write_text("v1\ta cat\nv1\t" + "word " * 200_000 + "\n")
    (tmp_path / "c.tsv").write_text("v1\ta cat\n")
    one_line(capsys, ["score", "--references", tmp_path / "r.tsv", "--candidates", tmp_path / "c.tsv", "--no-meteor"],
             f"--references {tmp_path / 'r.tsv'}:2", "200000 words", "1000 words")
    (tmp_path / "c2.tsv").write_text("v1\t" + "x" * 30_000 + "\n")
    one_line(capsys, ["score", "--references", tmp_path / "c.tsv", "--candidates", tmp_path / "c2.tsv"],
             f"--candidates {tmp_path / 'c2.tsv'}:1", "characters")


def test_score_without_meteor_needs_no_java(tmp_path):
    (tmp_path / "r.tsv").write_text("v1\tA man's riding a horse.\nv1\ta man rides\nv2\tthe dog doesn't bark!\n")
    (tmp_path / "c.tsv").write_text("v1\ta man is riding a horse\nv2\ta dog barks\n")
    bin_ = tmp_path / "bin"
    bin_.mkdir()  # PATH with no java on it
    r = cli("score", "--references", tmp_path / "r.tsv", "--candidates", tmp_path / "c.tsv", "--no-meteor",
            env={"PATH": str(bin_)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tokenizer"] == "python" and "METEOR" not in out["metrics"] and out["metrics"]["Bleu_1"] > 0


def test_python_tokenizer_equals_ptb_on_ordinary_captions():
    import shutil

    from s2vt.evaluation.metrics import ptb_tokenize, py_tokenize

    if not shutil.which("java"):
        pytest.skip("no Java runtime")
    caps = ["A man's riding a horse.", "The dog doesn't bark!", "Two people, a boy and a girl, are dancing.",
            "someone is slicing a t-shirt (badly)", "It's 3.5 km away; they can't go...", "a woman \"sings\" loudly"]
    assert py_tokenize(caps) == ptb_tokenize(caps)


# ----------------------------------------------------------------------------- 6. checkpoints edited by hand

@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    from s2vt.models.checkpoint import Checkpoint
    from s2vt.models.registry import build_model
    from s2vt.models.s2vt import ModelConfig
    from s2vt.data.vocab import Vocab

    vocab = Vocab(["a", "b"])
    model = build_model(ModelConfig(feat_dim=4, vocab_size=len(vocab), embed=4, hidden=4))
    sig = {"format_version": 1, "stream": "rgb", "backbone": "imported:test", "dim": 4}
    path = tmp_path_factory.mktemp("ck") / "good.pt"
    Checkpoint(model.cfg, model.state_dict(), vocab, sig, state={"step": 3, "epoch": 1},
               rng={"torch": torch.get_rng_state(), "cuda": None}).save(path)
    return path


def _edit(d):
    d["vocab"] = d["vocab"] + ["a"]


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["feature_signature"].pop("dim"), "feature_signature"),
    (lambda d: d["feature_signature"].update(dim=7), "feature_signature"),
    (_edit, "vocab"),
    (lambda d: d["vocab"].__setitem__(5, 12), "vocab"),
    (lambda d: d["model"].update({"proj.weight": d["model"]["proj.weight"].long()}), "model"),
    (lambda d: d["model"].update({"proj.weight": torch.zeros(9, 9)}), "model"),
    (lambda d: d.update(state=[1, 2]), "state"),
    (lambda d: d.update(state={"step": "many"}), "state"),
    (lambda d: d.update(state={"step": -1}), "field 'state': ['step'] must be >= 0, got -1"),
    (lambda d: d.update(state={"best": float("nan")}), "['best'] must be a finite number"),
    (lambda d: d.update(state={"laps": 2}), "field 'state': loop state: unknown options ['laps']"),
    (lambda d: d.update(vocab="a b"), "field 'vocab' is a str, not a list"),
    (lambda d: d.update(config="x"), "config"),
    (lambda d: d.update(decoding=[1]), "decoding"),
    (lambda d: d.update(config={"a": torch.zeros(2)}), "config"),
    (lambda d: d.update(rng={"torch": torch.zeros(3)}), "rng"),
    (lambda d: d.update(optimizer={"state": {}, "param_groups": [{"params": [0]}]}), "optimizer"),
])
def test_hand_edited_checkpoint_fields_are_refused_at_load(good_checkpoint, tmp_path, capsys, edit, field):
    from s2vt.models.checkpoint import Checkpoint, CheckpointError

    assert Checkpoint.load(good_checkpoint).build_model() is not None
    d = torch.load(good_checkpoint, weights_only=True)
    edit(d)
    bad = tmp_path / "bad.pt"
    torch.save(d, bad)
    with pytest.raises(CheckpointError, match=re.escape(field)) as e:
        Checkpoint.load(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    one_line(capsys, ["caption", tmp_path / "v.mp4", "--checkpoint", bad], str(bad), field)


def test_fifo_checkpoint_is_refused(fifo, capsys):
    one_line(capsys, ["caption", "v.mp4", "--checkpoint", fifo], "FIFO")


# ----------------------------------------------------------------------------- 7. report's evaluation JSON

@pytest.mark.parametrize("evaluation, needle", [
    ({"metrics": {"METEOR": 0.3}, "videos": {"v": {"caption": "x", "references": [1, 2]}}}, "references"),
    ({"metrics": {"METEOR": 10 ** 400}, "videos": {}}, "metrics['METEOR']"),
    ({"metrics": {"METEOR": True}, "videos": {}}, "metrics['METEOR']"),
    ({"metrics": {}, "videos": {"v": {"caption": 5}}}, "videos['v']"),
    ({"metrics": {}, "videos": {"v": {"METEOR": "high"}}}, "videos['v']"),
    ({"metrics": {}, "videos": []}, "'videos'"),
])
def test_report_refuses_malformed_evaluations(tmp_path, capsys, evaluation, needle):
    ev = tmp_path / "e.json"
    ev.write_text(json.dumps(evaluation))
    one_line(capsys, ["report", ev, "--out", tmp_path / "r.html"], str(ev), needle)
    assert not (tmp_path / "r.html").exists()


def test_report_refuses_a_fifo_out(tmp_path, fifo, capsys):
    ev = tmp_path / "e.json"
    ev.write_text(json.dumps({"metrics": {}, "videos": {}}))
    one_line(capsys, ["report", ev, "--out", fifo], "--out", "FIFO")


# ----------------------------------------------------------------------------- 8. a hanging JVM

@pytest.fixture
def hanging_java(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "java").write_text("#!/bin/sh\nexec sleep 30\n")
    (bin_ / "java").chmod(0o755)
    return {"PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}", "S2VT_JAVA_TIMEOUT": "1.5"}


@pytest.mark.parametrize("meteor", [False, True])
def test_a_hanging_jvm_is_named_with_the_variable_to_raise(tmp_path, hanging_java, meteor):
    from s2vt.evaluation.metrics import _PTB_CACHE

    _PTB_CACHE.clear()
    (tmp_path / "r.tsv").write_text("v1\tan unseen caption for the cache\n")
    r = cli("score", "--references", tmp_path / "r.tsv", "--candidates", tmp_path / "r.tsv",
            *([] if meteor else ["--no-meteor"]), env=hanging_java, timeout=40)
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "PTB tokenizer" in r.stderr and "1.5s" in r.stderr and "S2VT_JAVA_TIMEOUT" in r.stderr


def test_meteor_start_is_bounded(hanging_java, monkeypatch):
    from s2vt.evaluation.metrics import Meteor, MetricError

    for k, v in hanging_java.items():
        monkeypatch.setenv(k, v)
    with Meteor() as m:
        with pytest.raises(MetricError, match=r"METEOR .* no answer within 1.5s .* S2VT_JAVA_TIMEOUT"):
            m.compute_score({"a": ["x"]}, {"a": ["x"]})


def test_a_bad_java_timeout_is_named(tmp_path, monkeypatch):
    from s2vt.evaluation.metrics import MetricError, java_timeout

    monkeypatch.setenv("S2VT_JAVA_TIMEOUT", "soon")
    with pytest.raises(MetricError, match="S2VT_JAVA_TIMEOUT"):
        java_timeout()


@pytest.mark.parametrize("key, value, needle", [
    (("sampling", "stride"), "4", "its signature's sampling.stride must be int"),
    (("sampling", "stride"), -4, "its signature's sampling.stride must be >= 1"),
    (("preprocess", "size"), 10 ** 12, "its signature's preprocess.size must be <= 1024"),
    (("backbone",), "vgg17", "'vgg17' is unknown"),
])
def test_recorded_extraction_settings_are_checked_at_load_in_the_signatures_words(tmp_path, capsys, key, value,
                                                                                  needle):
    from s2vt.models.checkpoint import Checkpoint, CheckpointError
    from s2vt.models.registry import build_model
    from s2vt.features.config import ExtractConfig, make_signature
    from s2vt.models.s2vt import ModelConfig
    from s2vt.data.vocab import Vocab

    class Lite0Stub:  # what make_signature reads of a backbone, without loading one
        def signature(self):
            return {"backbone": "efficientnet_lite0", "layer": "pool", "dim": 1280, "weights_digest": "0" * 16,
                    "preprocess": {"size": 224, "crop_ratio": 0.875, "mean": [0.5] * 3, "std": [0.5] * 3}}

    sig = make_signature(ExtractConfig(), Lite0Stub())
    vocab = Vocab(["a", "b"])
    model = build_model(ModelConfig(feat_dim=1280, vocab_size=len(vocab), embed=4, hidden=4))
    good = Checkpoint(model.cfg, model.state_dict(), vocab, sig).save(tmp_path / "good.pt")
    assert Checkpoint.load(good).feature_signature == sig
    d = torch.load(good, weights_only=True)
    target = d["feature_signature"]
    for k in key[:-1]:
        target = target[k]
    target[key[-1]] = value
    bad = tmp_path / "bad.pt"
    torch.save(d, bad)
    with pytest.raises(CheckpointError) as e:
        Checkpoint.load(bad)
    msg = str(e.value)
    assert str(bad) in msg and "feature_signature" in msg and needle in msg and "\n" not in msg
    assert "ExtractConfig" not in msg and "--stride" not in msg
    one_line(capsys, ["caption", tmp_path / "v.mp4", "--checkpoint", bad], str(bad), needle)


@pytest.mark.parametrize("argv, needle", [
    (["train", "--dataset", "synthetic", "--batch-size", "abc"], "s2vt train: error: argument --batch-size: invalid int"),
    (["extract", "x", "--stream", "rgbx"], "s2vt extract: error: argument --stream: invalid choice"),
    (["extract", "x", "--out", "x.h5", "--overwrite"], "s2vt: error: unrecognized arguments: --overwrite"),
    (["nosuch"], "s2vt: error: argument COMMAND: invalid choice"),
])
def test_usage_errors_are_one_line_naming_the_help(argv, needle, capsys):
    from s2vt.cli.app import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(needle)
    assert "--help`)" in err


def test_fifo_stores_and_weight_files_are_named_as_fifos(fifo, good_checkpoint, capsys):
    from s2vt.features.store import FeatureStore

    with pytest.raises(S2VTError, match="feature file .*fifo is a FIFO"):
        FeatureStore(fifo)
    from s2vt.features.backbones.registry import resolve_weights
    from s2vt.features.raft import resolve_flow_weights

    for fn, flag in ((lambda: resolve_weights("alexnet", str(fifo)), "--weights"),
                     (lambda: resolve_flow_weights("raft_small", str(fifo)), "--flow-weights")):
        with pytest.raises(S2VTError, match=f"{flag} .* is a FIFO"):
            fn()


def test_demo_seeds_must_be_distinct(capsys, tmp_path):
    one_line(capsys, ["demo", "--workdir", tmp_path / "d", "--seeds", "1", "1"], "--seeds: seed 1 is given twice")
    assert not (tmp_path / "d").exists()


def test_a_bad_java_timeout_is_a_setup_error_exit_2(tmp_path, monkeypatch, capsys):
    from s2vt.cli.app import main

    (tmp_path / "r.tsv").write_text("v1\ta cat\n")
    monkeypatch.setenv("S2VT_JAVA_TIMEOUT", "abc")
    assert main(["score", "--references", str(tmp_path / "r.tsv"), "--candidates", str(tmp_path / "r.tsv")]) == 2
    assert "S2VT_JAVA_TIMEOUT='abc'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["--num-frames", "4", "--stride", "3"], "--stride does not apply with --num-frames"),
    (["--splits", "test"], "--splits applies only with --dataset NAME"),
    (["--root", "."], "--root applies only with --dataset NAME"),
])
def test_extract_refuses_sampling_and_dataset_flags_that_do_not_apply(tmp_path, capsys, argv, needle):
    one_line(capsys, ["extract", tmp_path, "--out", tmp_path / "o.h5", *argv], needle)
    assert not (tmp_path / "o.h5").exists()


def test_merge_into_a_folder_says_so_first(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    for extra in ([], ["--overwrite"]):
        one_line(capsys, ["merge-features", tmp_path / "d", tmp_path / "a.h5", *extra], "d is a folder; give the merged")
    assert not any((tmp_path / "d").iterdir())


@pytest.mark.parametrize("argv, needle", [
    (["--momentum", "0.5"], "--momentum (OptimConfig.momentum) applies only with --optimizer sgd, got 0.5"),
    (["--step-epochs", "3"], "--step-epochs (OptimConfig.step_epochs) applies only with --schedule step, got 3"),
    (["--schedule", "cosine", "--gamma", "0.1"], "--gamma (OptimConfig.gamma) applies only with --schedule step"),
    (["--no-val-meteor", "--select-beam", "3"], "--select-beam (ValidationConfig.select_beam) applies only with "
                                                "--val-meteor True"),
    (["--val-split", "", "--patience", "3"], "--patience applies only with a --val-split"),
    (["--resume", "--overwrite"], "--resume continues the run in --out and --overwrite replaces it"),
])
def test_train_refuses_options_that_do_not_apply(tmp_path, capsys, argv, needle):
    one_line(capsys, ["train", "--dataset", "synthetic", "--annotations", tmp_path, "--features", tmp_path / "f.h5",
                      "--out", tmp_path / "run", *argv], needle)
    assert not (tmp_path / "run").exists()


def test_a_pickle_that_would_run_code_is_refused_in_one_line_as_weights_or_checkpoint(tmp_path, capsys):
    from videos import numbered, write

    video = write(tmp_path / "v.avi", numbered(4))
    evil = tmp_path / "evil.pth"
    evil.write_bytes(b'\x80\x04cos\nsystem\n(S"touch ' + str(tmp_path / "ran").encode() + b'"\ntR.')
    with warnings.catch_warnings(record=True) as warned:  # a warning is a line of its own on stderr
        warnings.simplefilter("always")
        one_line(capsys, ["extract", video, "--cnn", "timm:resnet18", "--weights", evil, "--out", tmp_path / "o.h5"],
                 "evil.pth is not a plain-tensor timm:resnet18 weights file")
        one_line(capsys, ["caption", video, "--checkpoint", evil], "refusing to load", code=2)
    assert not [str(w.message) for w in warned]
    assert not (tmp_path / "ran").exists() and not (tmp_path / "o.h5").exists()
