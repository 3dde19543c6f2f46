"""``s2vt demo --study decoders`` on the tiny preset: its rows, per-seed metrics, reward curves, report
(the stage reuse is the demo's, tested in test_demo)."""
import json

import pytest

from s2vt.runtime.errors import S2VTError
from s2vt.apps.study import ROWS, run_study


def test_tiny_study_writes_every_row(tmp_path):
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    with pytest.raises(S2VTError, match="not written by `s2vt demo`"):
        run_study(tmp_path / "user", preset="tiny")
    wd = tmp_path / "study"
    res = run_study(wd, preset="tiny")
    saved = json.loads((wd / "results.json").read_text())
    assert list(saved["per_seed"]) == list(ROWS) == ["RGB S2VT", "RGB attention", "RGB S2VT + SCST",
                                                     "RGB attention + SCST"]
    for row in ROWS:
        assert len(saved["per_seed"][row]) == 1 and 0 <= saved["per_seed"][row][0]["CIDEr"]
        assert f"| {row} |" in saved["table"]
    curve = saved["reward_curves"]["RGB attention + SCST"]["0"]
    assert curve and all(len(p) == 3 for p in curve)          # (step, sampled reward, greedy reward)
    assert (wd / "report.html").stat().st_size > 0
    assert set(res["findings"]) >= {"attention above S2VT (METEOR)", "SCST above cross-entropy, S2VT (CIDEr)"}
    paired = res["findings"]["SCST gain over its initialisation, S2VT (CIDEr, paired by seed)"]
    per = saved["per_seed"]
    assert paired["gains"] == pytest.approx([per["RGB S2VT + SCST"][0]["CIDEr"] - per["RGB S2VT"][0]["CIDEr"]])
    assert abs(saved["findings"]["SCST gain over its initialisation, S2VT (CIDEr, paired by seed)"]["diff"]
               - paired["gains"][0]) <= 1e-9
    assert all(0 < f["p"] <= 1 and len(f["ci"]) == 2 for f in saved["findings"].values())
    assert "| paired diff | 95% CI | p |" in (wd / "results.md").read_text()


def test_paired_gain_needs_every_seed_to_gain_by_more_than_the_gains_sd():
    from s2vt.apps.study import paired_gain

    xe = [{"CIDEr": v} for v in (3.81, 3.235, 3.751)]
    up = [{"CIDEr": v} for v in (3.994, 3.883, 3.979)]  # gains 0.184, 0.648, 0.228: mean 0.353, SD 0.256
    f = paired_gain({"a": up, "b": xe}, "a", "b")
    assert f["gains"] == pytest.approx([0.184, 0.648, 0.228]) and f["beyond_noise"]
    assert f["mean_gain"] == pytest.approx(0.35333, abs=1e-4) and f["sd_gain"] == pytest.approx(0.2561, abs=1e-3)
    mixed = [{"CIDEr": v} for v in (3.994, 3.2, 3.979)]  # one seed loses: not beyond noise, though the mean gains
    g = paired_gain({"a": mixed, "b": xe}, "a", "b")
    assert g["holds"] and not g["beyond_noise"]
