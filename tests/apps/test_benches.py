"""The benchmark scripts run, and end with the JSON line their figures are compared by."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _json_tail(*args) -> dict:
    r = subprocess.run([sys.executable, *args, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_bench_video_checks_both_readers_agree_and_reports_its_keys():
    d = _json_tail("scripts/bench_video.py", "--clips", "2", "--frames", "25", "--width", "64", "--height", "48",
                   "--stride", "10", "--repeats", "1")
    assert d["frames_decoded"] == 50 and d["frames_kept"] == 6  # frames 0, 10, 20 of each clip
    assert d["grab_skip_s"] > 0 and d["read_all_s"] > 0
    assert d["speedup"] == pytest.approx(d["read_all_s"] / d["grab_skip_s"], rel=0.1)  # times are rounded


def test_bench_extract_reports_the_issue_keys():
    d = _json_tail("scripts/bench_extract.py", "--clips", "3", "--frames", "20", "--width", "64", "--height", "48",
                   "--input-size", "64", "--stream", "flow")
    for key in ("device", "stream", "decode_only_s", "cnn_only_s", "extraction_s", "images"):
        assert key in d
    assert d["stream"] == "flow" and d["images"] == 6 and d["device"].startswith("cpu")
    assert d["ratio"] == pytest.approx(d["extraction_s"] / max(d["decode_only_s"], d["cnn_only_s"]), rel=0.1)


def test_bench_shares_times_both_ways_on_the_same_images():
    d = _json_tail("scripts/bench_shares.py", "--short", "3", "--long", "1", "--short-frames", "10",
                   "--long-frames", "30", "--repeats", "1")
    for order in ("skewed", "shuffled"):
        r = d[order]
        assert r["images"] == 3 * 1 + 3  # one frame in 10
        assert r["speedup"] == pytest.approx(r["fixed_s"] / r["shared_s"], rel=0.1)


def test_bench_backbones_times_each_against_lite0_in_the_same_process():
    d = _json_tail("scripts/bench_backbones.py", "--models", "timm:resnet18", "raft_small", "--images", "2",
                   "--batch-size", "2", "--repeats", "1")
    assert list(d["images_per_s"]) == ["efficientnet_lite0", "timm:resnet18", "raft_small"]
    assert d["ratio_to_lite0"]["efficientnet_lite0"] == 1.0
    r18 = d["images_per_s"]["timm:resnet18"] / d["images_per_s"]["efficientnet_lite0"]
    assert d["ratio_to_lite0"]["timm:resnet18"] == pytest.approx(r18, rel=1e-3)
    assert d["dim"] == {"efficientnet_lite0": 1280, "timm:resnet18": 512, "raft_small": 1280}


def test_bench_compare_times_the_study_sized_case():
    d = _json_tail("scripts/bench_compare.py", "--ar")
    assert (d["videos"], d["seeds"], d["metrics"], d["resamples"]) == (670, 3, 4, 10_000)
    assert 0 < d["bootstrap_s"] <= 10 and d["ar_s"] > 0
    assert set(d["bootstrap_p"]) == {"METEOR", "Bleu_4", "CIDEr", "ROUGE_L"}
    assert all(1 / 10_001 <= p <= 1 for p in [*d["bootstrap_p"].values(), *d["ar_p"].values()])


def test_bench_preprocess_times_both_resize_paths_on_the_same_clips():
    d = _json_tail("scripts/bench_preprocess.py", "--clips", "2", "--frames", "20", "--width", "320", "--height", "288",
                   "--input-size", "64", "--repeats", "1")
    assert d["images"] == 4 and d["opencv"]["images"] == d["pil"]["images"] == 4  # frames 0 and 10 of each clip
    assert d["ratio"] == pytest.approx(d["pil"]["extraction_s"] / d["opencv"]["extraction_s"], rel=0.01)
    assert d["decode_ratio"] == pytest.approx(d["pil"]["decode_only_s"] / d["opencv"]["decode_only_s"], rel=0.01)
