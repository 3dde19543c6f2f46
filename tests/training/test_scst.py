"""Self-critical training: CIDEr-D equal to coco-caption's, SCST runs that train and resume, bad input."""
import json
import random

import pytest
import torch

from s2vt.models import checkpoint
from s2vt.models.s2vt import ModelConfig
from s2vt.training.scst import CiderD
from s2vt.training.config import TrainConfig
from s2vt.training.loop import train

WORDS = "a the red blue green circle square ball moves left right up down is moving to quickly".split()


def _sentence(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9)))


def test_cider_d_equals_pycocoevalcap_cider():
    # pycocoevalcap's Cider is CIDEr-D (clipped tf-idf matches, Gaussian length penalty, x10)
    from pycocoevalcap.cider.cider import Cider

    rng = random.Random(0)
    gts = {f"v{i}": [_sentence(rng) for _ in range(rng.randint(1, 6))] for i in range(40)}
    res = {k: [_sentence(rng) if i % 7 else gts[k][0]] for i, k in enumerate(gts)}
    res["v3"] = ["zebra"]                                    # no n-gram known to any reference
    want_mean, want = Cider().compute_score(gts, res)
    ids = {w: i + 1 for i, w in enumerate(WORDS + ["zebra"])}
    enc = lambda s: [ids[w] for w in s.split()]
    cider = CiderD([[enc(r) for r in gts[k]] for k in gts])  # document frequencies from the same corpus
    L = max(len(res[k][0].split()) for k in gts)
    seqs = torch.tensor([enc(res[k][0]) + [0] * (L - len(res[k][0].split())) for k in gts])
    got = cider(seqs, torch.arange(len(gts)))
    assert got.shape == (40,) and float(got.max()) > 1.0
    assert torch.allclose(got, torch.as_tensor(want, dtype=torch.float64), atol=1e-6, rtol=0)
    assert abs(float(got.mean()) - want_mean) < 1e-6


def test_cider_d_of_references_without_4_grams_equals_pycocoevalcap_cider():
    from pycocoevalcap.cider.cider import Cider

    gts = {"v0": ["red ball moves"], "v1": ["a blue square"]}  # no reference has 4 words
    res = {"v0": ["red ball moves red"], "v1": ["a blue square a blue"]}  # 4-grams no reference has
    want_mean, want = Cider().compute_score(gts, res)
    ids = {w: i + 1 for i, w in enumerate(WORDS)}
    enc = lambda s: [ids[w] for w in s.split()]
    got = CiderD([[enc(r) for r in gts[k]] for k in gts])(
        torch.tensor([enc(res["v0"][0]) + [0], enc(res["v1"][0])]), torch.arange(2))
    assert torch.allclose(got, torch.as_tensor(want, dtype=torch.float64), atol=1e-6, rtol=0)


def test_words_are_drawn_as_multinomial_draws_them():
    from s2vt.training.scst import draw

    lp = torch.log_softmax(torch.randn(50, 30, generator=torch.Generator().manual_seed(0)), -1)
    torch.manual_seed(3)
    want = torch.multinomial(lp.exp(), 1)[:, 0]
    torch.manual_seed(3)
    assert torch.equal(draw(lp), want)  # the same words from the same seed, on the CPU


def _xe(tiny_features, out, decoder="s2vt", **kw):
    root, stores = tiny_features
    base = dict(dataset="synthetic", annotations=str(root), features=str(stores["rgb"]), out=str(out), epochs=1,
                batch_size=8, lr=3e-3, val_meteor=False, log_every=1,
                model=ModelConfig(embed=16, hidden=24, dropout=0.0, decoder=decoder))
    base.update(kw)
    return TrainConfig.from_dict(base)


@pytest.mark.parametrize("decoder", ["s2vt", "attention"])
def test_scst_trains_logs_rewards_and_resumes_bitwise(tiny_features, tmp_path, decoder):
    train(_xe(tiny_features, tmp_path / "xe", decoder), progress=False)
    init = str(tmp_path / "xe" / "best.pt")
    scst = lambda out, steps: _xe(tiny_features, out, decoder, objective="scst", init=init, scst_samples=3,
                                  epochs=3, max_steps=steps, lr=1e-3)
    train(scst(tmp_path / "full", 4), progress=False)
    train(scst(tmp_path / "split", 2), progress=False)
    train(scst(tmp_path / "split", 4), resume=True, progress=False)
    a, b = checkpoint.Checkpoint.load(tmp_path / "full" / "last.pt"), checkpoint.Checkpoint.load(tmp_path / "split" / "last.pt")
    x = checkpoint.Checkpoint.load(init)
    assert a.model_config.decoder == decoder and a.state["step"] == b.state["step"] == 4
    assert any(not torch.equal(a.weights[k], x.weights[k]) for k in a.weights)       # it trained
    for k in a.weights:
        assert torch.equal(a.weights[k], b.weights[k]), k
    recs = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward_sample"] for r in recs if "reward_sample" in r]
    assert len(rewards) == 4 and all(r >= 0 for r in rewards)


def test_scst_bad_input_is_one_line_and_writes_nothing(tiny_features, tmp_path, capsys):
    from s2vt.cli.app import main

    root, stores = tiny_features
    train(_xe(tiny_features, tmp_path / "xe"), progress=False)
    common = ["--dataset", "synthetic", "--annotations", str(root), "--features", str(stores["rgb"]),
              "--embed", "16", "--hidden", "24", "--quiet", "--no-val-meteor"]
    init = str(tmp_path / "xe" / "best.pt")
    cases = [([], "--init RUN/best.pt"),
             (["--init", init, "--decoder", "attention"], "--decoder s2vt"),
             (["--init", init, "--min-count", "3"], "vocabulary differs"),
             (["--init", init, "--features", str(stores["flow"])], "features extracted differently"),
             (["--init", init, "--scst-samples", "0"], "--scst-samples"),
             (["--init", init, "--train-split", "test", "--annotations", str(tmp_path / "noref")], "")]
    (tmp_path / "noref").mkdir()
    for extra, msg in cases[:-1]:
        out = tmp_path / "out"
        capsys.readouterr()
        rc = main(["train", *common, "--objective", "scst", "--out", str(out), *extra])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and msg in lines[0], (extra, err)
        assert not out.exists(), extra


def test_scst_takes_data_and_model_from_its_init_checkpoint(tiny_features, tmp_path):
    from s2vt.cli.app import main

    root, stores = tiny_features
    train(_xe(tiny_features, tmp_path / "xe", seed=4), progress=False)
    init = tmp_path / "xe" / "best.pt"
    # no --dataset, --annotations, --features or model flags: all from init's recorded config
    assert main(["train", "--objective", "scst", "--init", str(init), "--out", str(tmp_path / "sc"),
                 "--max-steps", "2", "--quiet", "--no-val-meteor"]) == 0
    was, now = checkpoint.Checkpoint.load(init), checkpoint.Checkpoint.load(tmp_path / "sc" / "last.pt")
    assert now.model_config == was.model_config and now.state["step"] == 2
    for k in ("dataset", "annotations", "features", "seed"):
        assert now.train_config[k] == was.train_config[k], k
    assert now.train_config["features"] == str(stores["rgb"]) and now.train_config["objective"] == "scst"
    before = init.read_bytes()  # never written over, whatever --overwrite says
    assert main(["train", "--objective", "scst", "--init", str(init), "--out", str(tmp_path / "xe"), "--overwrite",
                 "--max-steps", "1", "--quiet", "--no-val-meteor"]) == 2
    assert init.read_bytes() == before


def test_every_epoch_logs_a_train_point_and_validation_names_the_metric_that_selects(tiny_features, tmp_path, capsys):
    out = tmp_path / "r"
    train(_xe(tiny_features, out, epochs=2, log_every=1000, val_meteor=True), progress=False)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epochs"] for r in recs if "train_loss" in r] == [1.0, 2.0]  # log_every is far: one point per epoch
    said = capsys.readouterr()
    lines = [l for l in (said.out + said.err).splitlines() if l.startswith("epoch ")]
    assert len(lines) == 2 and all("val METEOR" in l and "val CIDEr-D" in l for l in lines)
    assert any(l.endswith("(best by METEOR)") for l in lines)
