"""``s2vt demo``: its work folder rules, its findings arithmetic, and the tiny preset end to end."""
import json
import re

import pytest

from s2vt.apps.demo import MARKER, findings, prepare_workdir, run_demo
from s2vt.evaluation.stats import compare
from s2vt.runtime.errors import S2VTError


def test_refuses_a_users_folder_and_deletes_nothing(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    (tmp_path / "data").mkdir()
    for fresh in (True, False):
        with pytest.raises(S2VTError, match=re.escape(str(tmp_path)) + ".*not written by `s2vt demo`"):
            run_demo(tmp_path, "tiny", fresh=fresh)
    assert (tmp_path / "thesis.tex").read_text() == "years of work"
    assert (tmp_path / "data").is_dir() and not (tmp_path / MARKER).exists()


def test_fresh_removes_only_the_demos_own_outputs(tmp_path):
    wd = tmp_path / "w"
    prepare_workdir(wd, fresh=False)
    assert (wd / MARKER).exists()
    for f in ("data/videos/clip00000.avi", "runs/rgb_seed0/best.pt", "results.json", "report.html",
              "notes.txt", "mine/keep.txt"):
        (wd / f).parent.mkdir(parents=True, exist_ok=True)
        (wd / f).write_text("x")
    prepare_workdir(wd, fresh=False)  # a re-run without --fresh deletes nothing
    assert (wd / "results.json").exists() and (wd / "runs/rgb_seed0/best.pt").exists()
    prepare_workdir(wd, fresh=True)
    assert sorted(p.name for p in wd.iterdir()) == sorted([MARKER, "notes.txt", "mine"])
    assert (wd / "mine/keep.txt").read_text() == "x"


def _seeds(*meteors):
    return [{"METEOR": m} for m in meteors]


def test_findings_compare_means_against_the_sum_of_standard_deviations():
    per_seed = {"constant caption": _seeds(0.2), "Flow": _seeds(0.40, 0.42, 0.44),
                "RGB": _seeds(0.50, 0.60, 0.70), "RGB random order": _seeds(0.45, 0.50, 0.55),
                "RGB+Flow": _seeds(0.90, 0.91, 0.92)}
    f = compare(per_seed, "RGB", "RGB random order")
    assert f["means"] == pytest.approx([0.60, 0.50]) and f["stds"] == pytest.approx([0.10, 0.05])
    assert f["holds"] and not f["beyond_noise"]  # 0.10 apart, 0.15 of noise
    found = findings(per_seed)
    assert found["RGB+Flow above RGB"]["beyond_noise"]  # 0.31 apart, 0.11 of noise
    assert found["RGB+Flow above Flow"]["beyond_noise"]
    weakest = found["every model above the constant caption"]
    assert weakest["rows"] == ["Flow", "constant caption"] and weakest["stds"][1] == 0.0
    assert weakest["beyond_noise"]


def test_tiny_preset_writes_every_artefact_and_reuses_finished_stages(tmp_path, capsys):
    wd = tmp_path / "d"
    res = run_demo(wd, "tiny")
    for f in ("data/captions.tsv", "features/rgb.h5", "features/flow.h5", "runs/rgb_seed0/best.pt",
              "runs/flow_seed0/best.pt", "runs/rgb_random_order_seed0/best.pt", "bench/benchmark.json",
              "report.html", "results.md", MARKER):
        assert (wd / f).exists(), f
    saved = json.loads((wd / "results.json").read_text())
    rows = ("constant caption", "Flow", "RGB", "RGB random order", "RGB+Flow")
    assert set(saved["per_seed"]) == set(rows)
    for row in rows:
        assert len(saved["per_seed"][row]) == 1  # one seed in the tiny preset
        m = saved["per_seed"][row][0]
        for k in ("METEOR", "Bleu_4", "CIDEr", "acc_colour", "acc_shape", "acc_motion", "acc_all"):
            assert 0.0 <= m[k] <= (10.0 if k == "CIDEr" else 1.0), (row, k)
        assert m["acc_all"] <= min(m["acc_colour"], m["acc_shape"], m["acc_motion"])
        assert f"| {row} |" in saved["table"]
    assert "| model | METEOR | BLEU-4 | CIDEr | colour | shape | motion | all three |" in saved["table"]
    assert len(saved["findings"]) == 4
    for f in saved["findings"].values():
        assert len(f["means"]) == 2 and f["stds"] == [0.0, 0.0] and isinstance(f["beyond_noise"], bool)
        assert abs(f["diff"] - (f["means"][0] - f["means"][1])) <= 1e-9 and f["ci"][0] <= f["diff"] <= f["ci"][1]
        assert 0 < f["p"] <= 1 and f["significant"] == (f["p"] < 0.05)
    assert "| paired diff | 95% CI | p |" in (wd / "results.md").read_text()
    assert {"dataset", "features", "training", "evaluation", "total"} <= set(saved["timings_s"])
    assert saved["timings_s"]["total"] >= saved["timings_s"]["training"] > 0
    assert saved["per_seed"] == json.loads(json.dumps(res["per_seed"]))
    out = capsys.readouterr().out
    assert "generated:" in out and "reference:" in out

    run_demo(wd, "tiny")  # a re-run reuses the dataset and the trained models
    out = capsys.readouterr().out
    assert "reusing the generated dataset" in out and out.count("reusing ") >= 4


def test_presets_are_configs_that_round_trip_through_json():
    from dataclasses import asdict

    from s2vt.apps.demo import PRESETS, DemoPreset
    from s2vt.runtime.errors import S2VTError

    for name, p in PRESETS.items():
        assert DemoPreset.from_dict(json.loads(json.dumps(asdict(p)))) == p, name
    assert PRESETS["cpu"].beam == 5 and PRESETS["cpu"].run_config("o", 1, "cpu").amp is False
    assert PRESETS["gpu"].run_config("o", 1, "cuda:0").amp is True
    bad = {**asdict(PRESETS["tiny"]), "train": {**asdict(PRESETS["tiny"].train), "epochs": 0}}
    with pytest.raises(S2VTError, match="--epochs"):
        DemoPreset.from_dict(bad)
