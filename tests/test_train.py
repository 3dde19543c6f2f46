import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from s2vt import checkpoint
from s2vt.errors import S2VTError
from s2vt.model import ModelConfig, S2VT
from s2vt.train import TrainConfig, TrainingDiverged, train


def cfg_for(tiny_features, out, **kw):
    root, stores = tiny_features
    model = kw.pop("model", ModelConfig(embed=16, hidden=24, dropout=0.3))
    base = dict(dataset="synthetic", annotations=str(root), features=str(stores["rgb"]), out=str(out), epochs=3,
                batch_size=8, lr=3e-3, val_meteor=False, log_every=1, model=model)
    base.update(kw)
    return TrainConfig(**base)


def test_training_writes_run_directory(tiny_features, tmp_path):
    res = train(cfg_for(tiny_features, tmp_path / "run", epochs=2), progress=False)
    run = tmp_path / "run"
    for f in ("config.json", "vocab.json", "metrics.jsonl", "curves.png", "last.pt", "best.pt"):
        assert (run / f).exists(), f
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in recs if "val_loss" in r]
    assert len(vals) == 2 and res["steps"] == 12
    ck = checkpoint.load(run / "best.pt")
    assert ck.feature_signature["stream"] == "rgb" and ck.vocab.to_list()[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    model = ck.build_model()
    assert model.cfg.feat_dim == 1280 and model.cfg.vocab_size == len(ck.vocab)
    assert ck.decoding.max_len == 30 and ck.train_config["lr"] == 3e-3


def test_resume_is_bitwise_equal_to_uninterrupted(tiny_features, tmp_path):
    # 6 batches per epoch: 8 steps cross an epoch boundary (with validation) and stop mid-epoch
    train(cfg_for(tiny_features, tmp_path / "full", max_steps=16), progress=False)
    train(cfg_for(tiny_features, tmp_path / "split", max_steps=8), progress=False)
    assert checkpoint.load(tmp_path / "split" / "last.pt").state["step"] == 8
    train(cfg_for(tiny_features, tmp_path / "split", max_steps=16), resume=True, progress=False)
    a = checkpoint.load(tmp_path / "full" / "last.pt")
    b = checkpoint.load(tmp_path / "split" / "last.pt")
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


class Boom:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ['BOOM_MARK'])}",))


def test_crafted_checkpoint_is_refused(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("BOOM_MARK", str(mark))
    torch.save({"model": Boom(), "model_config": {}}, tmp_path / "evil.pt")
    with pytest.raises(S2VTError, match="refusing to load"):
        checkpoint.load(tmp_path / "evil.pt")
    assert not mark.exists()


def _ck(value: float) -> checkpoint.Checkpoint:
    from s2vt.vocab import Vocab

    vocab = Vocab(["a", "b"])
    model = S2VT(ModelConfig(feat_dim=4, vocab_size=len(vocab), embed=4, hidden=4))
    weights = {k: torch.full_like(v, value) for k, v in model.state_dict().items()}
    return checkpoint.Checkpoint(model.cfg, weights, vocab, {"stream": "rgb", "dim": 4})


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
    assert float(checkpoint.load(path).weights["proj.weight"][0, 0]) == 1.0
    assert not (tmp_path / "last.pt.tmp").exists()


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"), (b"not a zip", "refusing to load"),
])
def test_malformed_checkpoint_files_are_refused(tmp_path, content, message):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load(tmp_path / "x.pt")


def test_partial_checkpoint_dicts_are_refused(tmp_path):
    torch.save({"model": {}}, tmp_path / "a.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not an s2vt checkpoint"):
        checkpoint.load(tmp_path / "a.pt")
    ck = _ck(0.5)
    ck.save(tmp_path / "b.pt")
    d = torch.load(tmp_path / "b.pt", weights_only=True)
    d["model_config"]["hidden"] = 8  # weights no longer fit the config
    torch.save(d, tmp_path / "b.pt")
    with pytest.raises(checkpoint.CheckpointError, match="weights do not fit"):
        checkpoint.load(tmp_path / "b.pt").build_model()
    d["model_config"]["hidden"] = "big"
    torch.save(d, tmp_path / "b.pt")
    with pytest.raises(checkpoint.CheckpointError, match=r"hidden\) must be int"):
        checkpoint.load(tmp_path / "b.pt")


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
    ck = checkpoint.load(tmp_path / "r" / "last.pt")
    assert ck.state["step"] == 6  # end of epoch 1
    assert all(torch.isfinite(v).all() for v in ck.weights.values() if v.is_floating_point())


def test_missing_features_are_skipped_with_a_count(tiny_features, tmp_path, capsys):
    from s2vt.store import merge_stores
    import h5py

    root, stores = tiny_features
    partial = tmp_path / "partial.h5"
    merge_stores(partial, [stores["rgb"]])
    with h5py.File(partial, "a") as f:
        del f["videos"]["clip00000"]
        del f["videos"]["clip00001"]
    train(cfg_for(tiny_features, tmp_path / "r", features=str(partial), max_steps=1), progress=False)
    assert "skipping 2 train / 0 val videos without features" in capsys.readouterr().out


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_single_process(tiny_features, tmp_path):
    root, stores = tiny_features
    args = [sys.executable, "-m", "s2vt", "train", "--quiet", "--dataset", "synthetic", "--annotations", str(root),
            "--features", str(stores["rgb"]), "--epochs", "1", "--batch-size", "8", "--lr", "3e-3",
            "--no-val-meteor", "--embed", "16", "--hidden", "24", "--dropout", "0.0", "--max-steps", "4"]
    subprocess.run(args + ["--out", str(tmp_path / "single")], check=True, capture_output=True)
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(args + ["--out", str(tmp_path / "ddp")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()[-2000:]
    a = checkpoint.load(tmp_path / "single" / "last.pt").weights
    b = checkpoint.load(tmp_path / "ddp" / "last.pt").weights
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
    assert checkpoint.load(tmp_path / "ddp" / "last.pt").state["step"] == 4
