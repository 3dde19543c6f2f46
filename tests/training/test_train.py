import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from s2vt.models import checkpoint
from s2vt.runtime.errors import S2VTError
from s2vt.models.s2vt import ModelConfig, S2VT
from s2vt.training.config import TrainConfig
from s2vt.training.loop import TrainingDiverged, train


def cfg_for(tiny_features, out, **kw):
    root, stores = tiny_features
    model = kw.pop("model", ModelConfig(embed=16, hidden=24, dropout=0.3))
    base = dict(dataset="synthetic", annotations=str(root), features=str(stores["rgb"]), out=str(out), epochs=3,
                batch_size=8, lr=3e-3, val_meteor=False, log_every=1, model=model)
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_training_writes_run_directory(tiny_features, tmp_path):
    res = train(cfg_for(tiny_features, tmp_path / "run", epochs=2), progress=False)
    run = tmp_path / "run"
    for f in ("config.json", "vocab.json", "metrics.jsonl", "curves.png", "last.pt", "best.pt"):
        assert (run / f).exists(), f
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in recs if "val_loss" in r]
    assert len(vals) == 2 and res["steps"] == 12
    ck = checkpoint.Checkpoint.load(run / "best.pt")
    assert ck.feature_signature["stream"] == "rgb" and ck.vocab.to_list()[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    model = ck.build_model()
    assert model.cfg.feat_dim == 1280 and model.cfg.vocab_size == len(ck.vocab)
    assert ck.decoding.max_len == 30 and ck.train_config["lr"] == 3e-3


def test_resume_is_bitwise_equal_to_uninterrupted(tiny_features, tmp_path):
    # 6 batches per epoch: 8 steps cross an epoch boundary (with validation) and stop mid-epoch
    train(cfg_for(tiny_features, tmp_path / "full", max_steps=16), progress=False)
    train(cfg_for(tiny_features, tmp_path / "split", max_steps=8), progress=False)
    assert checkpoint.Checkpoint.load(tmp_path / "split" / "last.pt").state["step"] == 8
    train(cfg_for(tiny_features, tmp_path / "split", max_steps=16), resume=True, progress=False)
    a = checkpoint.Checkpoint.load(tmp_path / "full" / "last.pt")
    b = checkpoint.Checkpoint.load(tmp_path / "split" / "last.pt")
    assert a.state["step"] == b.state["step"] == 16
    for k in a.weights:
        assert torch.equal(a.weights[k], b.weights[k]), k


def test_resume_refuses_other_architecture(tiny_features, tmp_path):
    train(cfg_for(tiny_features, tmp_path / "r", max_steps=2), progress=False)
    with pytest.raises(S2VTError, match=r"model differs \(hidden: 24 -> 32\)"):
        train(cfg_for(tiny_features, tmp_path / "r", model=ModelConfig(embed=16, hidden=32, dropout=0.3)), resume=True, progress=False)
    with pytest.raises(S2VTError, match="vocabulary differs"):
        train(cfg_for(tiny_features, tmp_path / "r", min_count=3), resume=True, progress=False)
    with pytest.raises(S2VTError, match=r"different recipe \(--lr: 0.003 -> 0.5\)"):
        train(cfg_for(tiny_features, tmp_path / "r", lr=0.5), resume=True, progress=False)


def test_resume_refuses_other_features(tiny_features, tmp_path):
    root, stores = tiny_features
    train(cfg_for(tiny_features, tmp_path / "r", max_steps=2), progress=False)
    with pytest.raises(S2VTError, match="extracted differently.*stream: 'flow' != 'rgb'"):
        train(cfg_for(tiny_features, tmp_path / "r", features=str(stores["flow"])), resume=True, progress=False)


def test_evaluating_on_other_features_names_the_extract_command_that_matches(tiny_features, tmp_path):
    from s2vt.features.backbones.registry import Backbone
    from s2vt.captioning.captioner import Captioner, Member
    from s2vt.cli.app import build_parser
    from s2vt.cli.features import extract_config
    from s2vt.runtime.errors import SignatureMismatch
    from s2vt.features.config import make_signature

    root, stores = tiny_features
    train(cfg_for(tiny_features, tmp_path / "r", max_steps=2), progress=False)
    ck = str(tmp_path / "r" / "best.pt")
    with pytest.raises(SignatureMismatch, match=r"stream: 'flow' != 'rgb'.*trained on features from `s2vt extract "
                                                r"--stream rgb .*--stride 4 --input-size 64 --crop-ratio 1.0`"
                                                r" \(CNN weights digest [0-9a-f]+\)") as e:
        Captioner.from_members([Member(ck, str(stores["flow"]))])
    flags = str(e.value).split("`s2vt extract ")[1].split("`")[0].split()
    cfg = extract_config(build_parser().parse_args(["extract", "x.avi", "--out", "o.h5", *flags]))
    cfg_sig = make_signature(cfg, Backbone(cfg.cnn, cfg.layer, cfg.weights, cfg.preprocess()))
    assert cfg_sig == checkpoint.Checkpoint.load(ck).feature_signature  # the named command gives matching features


class Boom:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ['BOOM_MARK'])}",))


def test_crafted_checkpoint_is_refused(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("BOOM_MARK", str(mark))
    torch.save({"model": Boom(), "model_config": {}}, tmp_path / "evil.pt")
    with pytest.raises(S2VTError, match="refusing to load"):
        checkpoint.Checkpoint.load(tmp_path / "evil.pt")
    assert not mark.exists()


def _ck(value: float) -> checkpoint.Checkpoint:
    from s2vt.data.vocab import Vocab

    vocab = Vocab(["a", "b"])
    model = S2VT(ModelConfig(feat_dim=4, vocab_size=len(vocab), embed=4, hidden=4))
    weights = {k: torch.full_like(v, value) for k, v in model.state_dict().items()}
    return checkpoint.Checkpoint(model.cfg, weights, vocab, {"format_version": 1, "stream": "rgb", "backbone": "imported:test", "dim": 4})


def test_crash_during_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    _ck(1.0).save(path)

    def dying_save(obj, f):
        f.write(b"partial garbage")
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _ck(2.0).save(path)
    monkeypatch.undo()
    assert float(checkpoint.Checkpoint.load(path).weights["proj.weight"][0, 0]) == 1.0
    assert not (tmp_path / "last.pt.tmp").exists()


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"), (b"not a zip", "refusing to load"),
])
def test_malformed_checkpoint_files_are_refused(tmp_path, content, message):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.Checkpoint.load(tmp_path / "x.pt")


def test_partial_checkpoint_dicts_are_refused(tmp_path):
    torch.save({"model": {}}, tmp_path / "a.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not an s2vt checkpoint"):
        checkpoint.Checkpoint.load(tmp_path / "a.pt")
    ck = _ck(0.5)
    ck.save(tmp_path / "b.pt")
    d = torch.load(tmp_path / "b.pt", weights_only=True)
    d["model_config"]["hidden"] = 8  # weights no longer fit the config
    torch.save(d, tmp_path / "b.pt")
    with pytest.raises(checkpoint.CheckpointError, match="weights do not fit"):
        checkpoint.Checkpoint.load(tmp_path / "b.pt").build_model()
    d["model_config"]["hidden"] = "big"
    torch.save(d, tmp_path / "b.pt")
    with pytest.raises(checkpoint.CheckpointError, match=r"hidden\) must be int"):
        checkpoint.Checkpoint.load(tmp_path / "b.pt")


def test_checkpoint_with_non_finite_weights_is_refused(tmp_path):
    _ck(0.5).save(tmp_path / "a.pt")
    d = torch.load(tmp_path / "a.pt", weights_only=True)
    d["model"]["proj.weight"][3, :5] = float("nan")
    torch.save(d, tmp_path / "a.pt")
    with pytest.raises(checkpoint.CheckpointError, match=r"a.pt: malformed checkpoint: field 'model' is damaged: non-finite .* in proj.weight$"):
        checkpoint.Checkpoint.load(tmp_path / "a.pt")
    d["model"]["proj.weight"] = "w"
    torch.save(d, tmp_path / "a.pt")
    with pytest.raises(checkpoint.CheckpointError, match="field 'model' is not a dict of tensors"):
        checkpoint.Checkpoint.load(tmp_path / "a.pt")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_features, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = S2VT.forward

    def poisoned(self, *a, **k):
        logits, loss = real(self, *a, **k)
        if self.training:
            calls["n"] += 1
            if calls["n"] >= 8 and loss is not None:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(S2VT, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match="NaN/inf before step 8"):
        train(cfg_for(tiny_features, tmp_path / "r"), progress=False)
    ck = checkpoint.Checkpoint.load(tmp_path / "r" / "last.pt")
    assert ck.state["step"] == 6  # end of epoch 1
    assert all(torch.isfinite(v).all() for v in ck.weights.values() if v.is_floating_point())


def test_missing_features_are_skipped_with_a_count(tiny_features, tmp_path, capsys):
    from s2vt.features.store import merge_stores
    import h5py

    root, stores = tiny_features
    partial = tmp_path / "partial.h5"
    merge_stores(partial, [stores["rgb"]])
    with h5py.File(partial, "a") as f:
        del f["videos"]["clip00000"]
        del f["videos"]["clip00001"]
    train(cfg_for(tiny_features, tmp_path / "r", features=str(partial), max_steps=1), progress=False)
    assert "skipping 2 train / 0 val videos without features" in capsys.readouterr().err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLOW_VALIDATION = """
import os, sys, time
import s2vt.training.loop as t
validate = t.validate
def slow(*a, **k):  # rank 0 validates alone for longer than --dist-timeout
    time.sleep(8)
    return validate(*a, **k)
t.validate = slow
from s2vt.cli.app import main
sys.exit(main(sys.argv[1:]))
"""


def test_two_process_ddp_matches_single_process_and_waits_out_a_long_validation(tiny_features, tmp_path):
    """The other rank waits for rank 0's validation (8 s) beyond --dist-timeout (5 s): on the control group."""
    root, stores = tiny_features
    args = ["train", "--quiet", "--dataset", "synthetic", "--annotations", str(root),
            "--features", str(stores["rgb"]), "--epochs", "1", "--batch-size", "8", "--lr", "3e-3",
            "--no-val-meteor", "--embed", "16", "--hidden", "24", "--dropout", "0.0"]
    port = str(_free_port())
    procs = []
    ddp = [sys.executable, "-c", SLOW_VALIDATION, *args, "--dist-timeout", "5", "--out", str(tmp_path / "ddp")]
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(ddp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()[-2000:]
    ck = checkpoint.Checkpoint.load(tmp_path / "ddp" / "last.pt")
    steps = ck.state["step"]  # the whole epoch's global batches (the last partial one dropped)
    assert ck.state["epoch"] == 1 and steps >= 3
    assert any("val_loss" in line for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines())
    subprocess.run([sys.executable, "-m", "s2vt", *args, "--max-steps", str(steps), "--out", str(tmp_path / "single")],
                   check=True, capture_output=True)
    a = checkpoint.Checkpoint.load(tmp_path / "single" / "last.pt").weights
    for k in a:
        torch.testing.assert_close(a[k], ck.weights[k], atol=2e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- recipe and config

def test_sgd_and_adam_presets_are_resolved_in_the_library():
    from s2vt.training.config import TrainConfig

    assert TrainConfig.from_dict(dict(optimizer="sgd")).resolved().optim.lr == 0.01
    assert TrainConfig().resolved().optim.lr == 2e-4
    assert TrainConfig.from_dict(dict(optimizer="sgd", lr=0.3)).resolved().optim.lr == 0.3
    cfg = TrainConfig.from_dict(dict(optimizer="sgd"))
    cfg.resolved().model.hidden = 7
    assert cfg.optim.lr is None and cfg.model.hidden == 1000  # the caller's config is never mutated


@pytest.mark.parametrize("schedule, want", [
    ("none", [1, 1, 1, 1, 1]), ("step", [1, 1, 0.5, 0.5, 0.25]), ("cosine", [1, 0.904508, 0.654508, 0.345492, 0.095492]),
])
def test_lr_schedules_per_epoch(schedule, want):
    from s2vt.training.config import TrainConfig
    from s2vt.training.loop import make_optimizer, make_scheduler

    step = dict(step_epochs=2, gamma=0.5) if schedule == "step" else {}
    cfg = TrainConfig.from_dict(dict(lr=1.0, schedule=schedule, epochs=5, **step)).resolved()
    model = S2VT(ModelConfig(feat_dim=4, vocab_size=6, embed=4, hidden=4))
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg)
    got = []
    for _ in range(5):
        got.append(opt.param_groups[0]["lr"])
        opt.step()  # (no gradients: a no-op) keeps the optimiser-then-scheduler order
        sched.step()
    assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("field, value, message", [
    ("grad_clip", -5.0, r"--grad-clip .* must be > 0"), ("epochs", 0, r"--epochs .* must be >= 1"),
    ("lr", float("nan"), r"--lr .* finite"), ("batch_size", 0, r"--batch-size .* >= 1"),
    ("schedule", "linear", r"--schedule .* one of none, step, cosine"), ("epochs", "3", r"--epochs .* must be int"),
    ("val_every", 0, r"--val-every"), ("gamma", 2.0, r"--gamma .* <= 1"),
])
def test_training_config_checks_its_own_values(field, value, message):
    from s2vt.runtime.errors import ConfigError
    from s2vt.training.config import TrainConfig

    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({field: value})


@pytest.mark.parametrize("field, value", [("max_words", -2), ("hidden", 0), ("dropout", 1.5), ("max_frames", 0)])
def test_model_config_checks_its_own_values(field, value):
    from s2vt.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="--" + field.replace("_", "-")):
        ModelConfig(**{field: value})


def test_config_file_merges_under_flags(tmp_path):
    from s2vt.cli.app import build_parser
    from s2vt.cli.train import train_config

    (tmp_path / "c.json").write_text(json.dumps({"epochs": 7, "lr": 0.1, "dataset": "synthetic", "annotations": "A", "features": "F",
                                                 "model": {"hidden": 24, "embed": 9}, "workers": 2}))
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "c.json"), "--epochs", "3", "--embed", "16"])
    cfg = train_config(args)
    assert (cfg.epochs, cfg.optim.lr, cfg.annotations, cfg.model.hidden, cfg.model.embed) == (3, 0.1, "A", 24, 16)
    (tmp_path / "bad.json").write_text(json.dumps({"epochs": 3, "colour": "red"}))
    with pytest.raises(S2VTError, match=r"unknown options \['colour'\]"):
        train_config(build_parser().parse_args(["train", "--config", str(tmp_path / "bad.json")]))
    (tmp_path / "typed.json").write_text(json.dumps({"epochs": "ten"}))
    with pytest.raises(S2VTError, match=r"--epochs .* must be int, got 'ten'"):
        train_config(build_parser().parse_args(["train", "--config", str(tmp_path / "typed.json")]))


def test_patience_stops_after_stale_validations(tiny_features, tmp_path, monkeypatch):
    from s2vt.training import loop as train_mod

    scores = iter([3.0, 2.0, 2.5, 2.6, 1.0, 1.0])  # val loss: improves once (epoch 2), then never again
    monkeypatch.setattr(train_mod, "validate", lambda *a, **k: {"val_loss": next(scores)})
    res = train(cfg_for(tiny_features, tmp_path / "r", epochs=6, patience=2), progress=False)
    assert res["best_epoch"] == 2 and res["steps"] == 4 * 6  # stopped after epoch 4 (2 stale validations)
    assert checkpoint.Checkpoint.load(tmp_path / "r" / "best.pt").state["epoch"] == 2


def test_selection_on_val_meteor_keeps_the_best_epoch(tiny_features, tmp_path):
    res = train(cfg_for(tiny_features, tmp_path / "r", epochs=3, val_meteor=True, lr=1e-2), progress=False)
    recs = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    meteor = {r["epoch"]: r["val_meteor"] for r in recs if "val_meteor" in r}
    assert sorted(meteor) == [1, 2, 3]
    best_epoch = max(meteor, key=lambda e: (meteor[e], -e))  # first epoch reaching the maximum
    assert res["best_epoch"] == best_epoch and res["best"] == pytest.approx(meteor[best_epoch])
    assert checkpoint.Checkpoint.load(tmp_path / "r" / "best.pt").state["epoch"] == best_epoch


def test_val_every_validates_every_n_epochs_and_after_the_last(tiny_features, tmp_path):
    train(cfg_for(tiny_features, tmp_path / "r", epochs=5, val_every=2), progress=False)
    recs = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs if "val_loss" in r] == [2, 4, 5]


def test_existing_run_is_not_replaced_without_resume_or_overwrite(tiny_features, tmp_path):
    train(cfg_for(tiny_features, tmp_path / "r", max_steps=2), progress=False)
    before = (tmp_path / "r" / "best.pt").read_bytes()
    with pytest.raises(S2VTError, match="already holds a run.*--resume.*--overwrite"):
        train(cfg_for(tiny_features, tmp_path / "r", max_steps=1), progress=False)
    assert (tmp_path / "r" / "best.pt").read_bytes() == before
    train(cfg_for(tiny_features, tmp_path / "r", max_steps=1), progress=False, overwrite=True)
    assert checkpoint.Checkpoint.load(tmp_path / "r" / "last.pt").state["step"] == 1


def test_vocabulary_comes_from_the_training_split_only(tiny_features, tmp_path):
    from s2vt.data.corpora import load_corpus
    from s2vt.data.vocab import tokenize

    root, _ = tiny_features
    corpus = load_corpus("synthetic", root)
    train(cfg_for(tiny_features, tmp_path / "r", max_steps=1), progress=False)
    vocab = set(checkpoint.Checkpoint.load(tmp_path / "r" / "last.pt").vocab.to_list()[4:])
    words = lambda split: {w for _, caps in corpus.split_items(split) for c in caps for w in tokenize(c)}
    assert vocab == words("train")
    # the trainer's choice of split decides: training on val gives val's words
    train(cfg_for(tiny_features, tmp_path / "v", max_steps=1, train_split="val", val_split="train"), progress=False)
    assert set(checkpoint.Checkpoint.load(tmp_path / "v" / "last.pt").vocab.to_list()[4:]) == words("val")


def test_bank_and_store_paths_train_the_same_checkpoint(tiny_features, tmp_path, monkeypatch):
    """Features in a bank or read from the store per batch: same seed, bitwise the same weights (CPU)."""
    from s2vt.training import loop as train_mod

    train(cfg_for(tiny_features, tmp_path / "bank", max_steps=8, shuffle_frames=True), progress=False)
    monkeypatch.setattr(train_mod, "place_bank", lambda need, device: "store")
    train(cfg_for(tiny_features, tmp_path / "store", max_steps=8, shuffle_frames=True), progress=False)
    a = checkpoint.Checkpoint.load(tmp_path / "bank" / "last.pt").weights
    b = checkpoint.Checkpoint.load(tmp_path / "store" / "last.pt").weights
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_tune_alpha_picks_the_best_weight_and_breaks_ties_towards_half():
    from s2vt.decoding.search import DecodeConfig
    from s2vt.evaluation.evaluate import tune_alpha
    from s2vt.evaluation.metrics import shared_meteor

    refs = {"v1": ["a red ball moves left"], "v2": ["a blue box grows"]}
    seen = []

    class Fake:  # captions are right only at alpha 0.3
        decoding = DecodeConfig(beam=4)

        def available(self, vids):
            return list(vids), []

        def caption(self, vids, weights=None, decoding=None, progress=False):
            seen.append(decoding)
            good = abs(weights[0] - 0.3) < 1e-9
            return {v: refs[v][0] if good else "nothing at all" for v in vids}

    meteor = shared_meteor()
    best, tuning = tune_alpha(Fake(), refs, grid=(0.0, 0.3, 0.5, 1.0), meteor=meteor)
    curve = tuning["curve"]
    assert best == 0.3 and curve[0.3] > max(v for a, v in curve.items() if a != 0.3)
    assert {d.beam for d in seen} == {4} and tuning["decoding"]["beam"] == 4  # the checkpoint's decoding
    best, _ = tune_alpha(Fake(), refs, grid=[0.0, 0.4, 0.7, 1.0], meteor=meteor)
    assert best == 0.4  # all tie: nearest 0.5
    best, _ = tune_alpha(Fake(), refs, grid=[0.0, 0.4, 0.6, 1.0], meteor=meteor)
    assert best == 0.6  # equally near 0.5: the larger
    seen.clear()
    _, tuning = tune_alpha(Fake(), refs, DecodeConfig(beam=2, len_penalty=0.5), grid=[0.5], meteor=meteor)
    assert [(d.beam, d.len_penalty) for d in seen] == [(2, 0.5)] and tuning["decoding"]["len_penalty"] == 0.5


def test_compile_flag_is_gone_but_old_configs_still_load(capsys):
    from s2vt.cli.app import main
    from s2vt.training.config import TrainConfig

    with pytest.raises(SystemExit) as e:
        main(["train", "--dataset", "synthetic", "--compile"])
    assert e.value.code == 2 and "--compile" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="compile is an option of an earlier s2vt that no longer exists; ignored"):
        cfg = TrainConfig.from_dict({"compile": True, "epochs": 3})  # a run's config.json from before
    assert cfg.epochs == 3 and not hasattr(cfg, "compile")


def test_a_flat_options_dict_and_its_nested_form_are_one_config():
    # the flat layout: config.json and checkpoints of earlier versions, and options named as the flags are
    flat = {"epochs": 4, "lr": 0.1, "schedule": "step", "val_every": 2, "patience": 3, "log_every": 7,
            "save_every": 5, "dist_timeout": 9, "objective": "scst", "init": "x.pt", "scst_samples": 2,
            "model": {"hidden": 8}, "decoding": {"beam": 3}}
    nested = {"epochs": 4, "optim": {"lr": 0.1, "schedule": "step"}, "validation": {"val_every": 2, "patience": 3},
              "logging": {"log_every": 7, "save_every": 5}, "distributed": {"dist_timeout": 9}, "objective": "scst",
              "scst": {"init": "x.pt", "scst_samples": 2}, "model": {"hidden": 8}, "decoding": {"beam": 3}}
    cfg = TrainConfig.from_dict(flat)
    assert cfg == TrainConfig.from_dict(nested)
    assert (cfg.optim.lr, cfg.validation.patience, cfg.logging.log_every, cfg.scst.init) == (0.1, 3, 7, "x.pt")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # config.json round trip
    assert cfg.to_dict() == {**TrainConfig().to_dict(), **flat, "model": cfg.to_dict()["model"],
                             "decoding": cfg.to_dict()["decoding"]}  # written flat, as it always was
    assert cfg.with_options(lr=0.2, init="y.pt").optim.lr == 0.2 and cfg.optim.lr == 0.1
    for given in ({"scst_samples": 3}, {"scst": {"scst_samples": 3}}):  # SCST options only with --objective scst
        with pytest.raises(S2VTError, match=r"^--scst-samples \(TrainConfig.scst_samples\) applies only with "
                                            r"--objective scst, got 3$"):
            TrainConfig.from_dict(given)
    with pytest.raises(S2VTError, match=r"unknown options \['lrr'\]"):
        TrainConfig.from_dict({"optim": {"lrr": 1}})


def test_config_json_keeps_the_flat_layout_and_a_run_resumes_and_starts_scst_from_it(tiny_features, tmp_path, capsys):
    from s2vt.cli.app import main

    run = tmp_path / "old"
    train(cfg_for(tiny_features, run, max_steps=4), progress=False)
    written = json.loads((run / "config.json").read_text())
    groups = ("optim", "validation", "logging", "distributed", "scst")
    assert written["lr"] == 3e-3 and not set(groups) & set(written)  # the layout earlier versions wrote
    assert checkpoint.Checkpoint.load(run / "last.pt").train_config == written
    again = ["train", "--config", str(run / "config.json"), "--resume", "--quiet"]
    assert main([*again, "--max-steps", "6", "--lr", "0.5"]) == 2  # a changed recipe is still refused
    assert "different recipe (--lr: 0.003 -> 0.5)" in capsys.readouterr().err
    assert main([*again, "--max-steps", "6", "--log-every", "2"]) == 0
    assert checkpoint.Checkpoint.load(run / "last.pt").state["step"] == 6
    sc = tmp_path / "sc"  # --init: the data and model of its recorded (flat) config
    assert main(["train", "--objective", "scst", "--init", str(run / "best.pt"), "--out", str(sc), "--max-steps", "2",
                 "--quiet", "--no-val-meteor"]) == 0
    was, now = checkpoint.Checkpoint.load(run / "best.pt"), checkpoint.Checkpoint.load(sc / "last.pt")
    assert now.model_config == was.model_config and now.state["step"] == 2
    for k in ("dataset", "annotations", "features", "seed", "min_count"):
        assert now.train_config[k] == was.train_config[k], k
    assert now.train_config["init"] == str(run / "best.pt") and now.train_config["objective"] == "scst"
