import json
import os
import subprocess
import sys

import pytest

from s2vt.evaluation.metrics import Meteor, MetricError, ptb_tokenize, score, shared_meteor


@pytest.fixture(scope="module")
def meteor():
    return shared_meteor()  # the process's METEOR, as every evaluation in a process uses it


@pytest.fixture(scope="module")
def msvd_pairs(msvd_dir):
    """References of 25 real MSVD val videos; candidates: another video's caption or a shortened own one."""
    refs = {}
    for line in (msvd_dir / "sents_val_lc_nopunc.txt").read_text().splitlines():
        vid, cap = line.split("\t")
        refs.setdefault(vid, []).append(cap)
    vids = sorted(refs, key=lambda v: int(v[3:]))[:25]
    cands = {}
    for i, v in enumerate(vids):
        cands[v] = refs[vids[(i + 1) % len(vids)]][0] if i % 3 == 0 else " ".join(refs[v][1].split()[:5]) + "."
    return {v: refs[v] for v in vids}, cands


def test_scores_equal_pycocoevalcap(msvd_pairs, meteor):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor as CocoMeteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    refs, cands = msvd_pairs
    ours, per = score(refs, cands, meteor=meteor)
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in cands.items()})
    b, _ = Bleu(4).compute_score(gts, res, verbose=0)
    m = CocoMeteor()
    meteor, meteor_each = m.compute_score(gts, res)
    expected = {"Bleu_1": b[0], "Bleu_2": b[1], "Bleu_3": b[2], "Bleu_4": b[3], "METEOR": meteor,
                "ROUGE_L": Rouge().compute_score(gts, res)[0], "CIDEr": Cider().compute_score(gts, res)[0]}
    for k, v in expected.items():
        assert ours[k] == pytest.approx(v, abs=1e-6), k
    assert [per[k]["METEOR"] for k in refs] == pytest.approx(meteor_each, abs=1e-6)
    assert 0.05 < ours["METEOR"] < 0.6


def test_known_pair_values(meteor):
    c, per = score({"v": ["a man is playing a guitar"]}, {"v": "a man is playing a guitar"}, meteor=meteor)
    assert c["Bleu_1"] == pytest.approx(1.0, abs=1e-6) and c["ROUGE_L"] == pytest.approx(1.0)
    assert c["METEOR"] > 0.9
    c2, _ = score({"v": ["a man is playing a guitar"]}, {"v": "the cat sleeps"}, meteor=meteor)
    assert c2["METEOR"] < 0.1 and c2["Bleu_1"] < 0.1


def test_hostile_captions_do_not_desynchronise(meteor):
    refs = {"a": ["a man plays a guitar", "someone | plays ||| music"], "b": ["a cat is sleeping"],
            "c": ["un café très chaud", "a hot coffee"], "d": ["a dog runs"], "e": ["a bird flies"]}
    cands = {"a": "a man\nplays ||| a guitar", "b": "", "c": "un café chaud\u2028encore", "d": "a dog\r\nruns\ttoday",
             "e": "a bird flies"}
    c, per = score(refs, cands, meteor=meteor)
    assert set(per) == set(refs)
    assert per["b"]["METEOR"] == 0.0 and per["b"]["Bleu_1"] == 0.0
    assert per["e"]["METEOR"] > 0.9       # an intact line after the hostile ones still scores perfectly
    assert per["a"]["METEOR"] > 0.3 and per["d"]["METEOR"] > 0.3
    assert per["c"]["METEOR"] > 0.3


def test_ptb_tokenizer_keeps_line_count():
    out = ptb_tokenize(["Hello, World!", "", "two\nlines", "   ", "It's A Test."])
    assert out == ["hello world", "", "two lines", "", "it 's a test"]


def test_jvm_failure_is_reported_not_hung(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "java").write_text("#!/bin/sh\necho 'Error: fake JVM cannot start' >&2\nexit 1\n")
    (fake / "java").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    m = Meteor(timeout=20)
    with pytest.raises(MetricError, match="fake JVM cannot start"):
        m.compute_score({"a": ["x"]}, {"a": ["x"]})
    m.close()
    assert m.proc.poll() is not None


def test_java_pipes_are_closed_when_a_tool_ends(tmp_path, monkeypatch):
    import gc
    import warnings

    from s2vt.evaluation.metrics import run_java

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "java").write_text("#!/bin/sh\nexit 0\n")  # a METEOR that ends at once
    (fake / "java").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert run_java(["sh", "-c", "echo out; echo err >&2"], "a tool", 20) == b"out\n"
        with Meteor(timeout=20) as m:
            pass
        gc.collect()
    assert [m.proc.stdin.closed, m.proc.stdout.closed, m.proc.stderr.closed] == [True, True, True]
    assert [str(w.message) for w in said if issubclass(w.category, ResourceWarning)] == []


def test_missing_java_named_with_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MetricError, match="apt-get install default-jre-headless"):
        Meteor()


def test_score_cli(tmp_path, meteor, capsys):
    from s2vt.cli.app import main

    (tmp_path / "r.tsv").write_text("v1\ta red ball moves left\nv1\ta red circle goes left\nv2\ta box spins\nv3\tx y\n")
    (tmp_path / "c.tsv").write_text("v1\ta red ball moves left\nv2\ta green box spins\nv9\torphan\n")
    rc = main(["score", "--references", str(tmp_path / "r.tsv"), "--candidates", str(tmp_path / "c.tsv"), "--per-video"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    out = json.loads(out)
    assert out["videos"] == 2 and out["missing_candidates"] == ["v3"] and out["missing_references"] == ["v9"]
    direct, _ = score({"v1": ["a red ball moves left", "a red circle goes left"], "v2": ["a box spins"]},
                      {"v1": "a red ball moves left", "v2": "a green box spins"}, meteor=meteor)
    for k, v in direct.items():
        assert out["metrics"][k] == pytest.approx(v, abs=1e-9)
    (tmp_path / "c2.tsv").write_text("v1\tone\nv1\ttwo\n")
    rc = main(["score", "--references", str(tmp_path / "r.tsv"), "--candidates", str(tmp_path / "c2.tsv")])
    assert rc == 2 and "c2.tsv:2: second candidate" in capsys.readouterr().err


METEOR_THEN_WAIT = """
import time
from s2vt.evaluation.metrics import Meteor
m = Meteor()
print(m.proc.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_meteor_jvm_dies_with_a_killed_run():
    """Killed while the JVM still loads (it reads no input until loaded), a run leaves no JVM behind;
    without the kernel's help the orphan lived on for 5-9 s, growing to 1 GB."""
    import signal
    import threading
    import time

    from s2vt.runtime.workers import child_dies_with_us

    p = subprocess.Popen([sys.executable, "-c", METEOR_THEN_WAIT], stdout=subprocess.PIPE, text=True)
    jvm = int(p.stdout.readline())
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    t0 = time.time()
    while _alive(jvm) and time.time() - t0 < 10:
        time.sleep(0.01)
    assert time.time() - t0 < 2, "the METEOR JVM outlived its killed run"
    off_main = []
    t = threading.Thread(target=lambda: off_main.append(child_dies_with_us()))
    t.start()
    t.join()
    assert off_main == [None] and callable(child_dies_with_us())  # a thread's exit must not kill the JVM


def test_tokenized_lines_are_cached_and_equal_a_fresh_tokenization(monkeypatch):
    from s2vt.evaluation import metrics

    lines = ["A man's \"slicing\" a cucumber.", "Two dogs, running!", "a man is slicing a cucumber"]
    monkeypatch.setattr(metrics, "_PTB_CACHE", {})
    fresh = metrics.ptb_tokenize(lines)
    assert fresh[1] == "two dogs running"

    def no_jvm(*a, **k):
        raise AssertionError("a cached line started the tokenizer")

    monkeypatch.setattr(metrics.subprocess, "run", no_jvm)
    assert metrics.ptb_tokenize(list(reversed(lines))) == list(reversed(fresh))


def test_one_process_shares_one_meteor_and_replaces_one_that_died_or_was_cut_short():
    from s2vt.evaluation import metrics

    m = metrics.shared_meteor()
    refs, cand = {"v": ["a man is playing a guitar"]}, {"v": "a man is playing a guitar"}
    first = score(refs, cand)[0]["METEOR"]
    assert metrics.shared_meteor() is m and score(refs, cand, meteor=m)[0]["METEOR"] == first
    m.broken = True  # as after an error or an interrupt in the middle of a conversation
    fresh = metrics.shared_meteor()
    assert fresh is not m and m.proc.poll() is not None and fresh.usable()
    fresh.proc.kill()
    fresh.proc.wait()
    again = metrics.shared_meteor()
    assert again is not fresh and score(refs, cand)[0]["METEOR"] == first
