import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from s2vt.runtime.errors import S2VTError
from s2vt.data.synth import COLOURS, SynthConfig, generate

from processes import processes_with, wait_until_gone


def _mask(frame, colour):
    d = np.abs(frame.astype(int) - np.array(colour)[None, None, :]).sum(-1)
    return d < 90


def _read(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    return frames


def test_videos_decode_to_promised_frames_and_size(tiny_synth):
    root, cfg = tiny_synth
    vids = sorted((root / "videos").glob("*.avi"))
    assert len(vids) == cfg.train + cfg.val + cfg.test
    frames = _read(vids[0])
    assert len(frames) == cfg.frames
    assert frames[0].shape == (cfg.height, cfg.width, 3)


def test_captions_match_rendered_motion(tmp_path):
    cfg = SynthConfig(train=30, val=0, test=0, frames=16, width=96, height=72, seed=5)
    generate(tmp_path, cfg, progress=False)
    caps = {}
    for line in (tmp_path / "captions.tsv").read_text().splitlines():
        vid, c = line.split("\t")
        caps.setdefault(vid, []).append(c)
    checked = set()
    for line in (tmp_path / "clips.jsonl").read_text().splitlines():
        m = json.loads(line)
        frames = _read(tmp_path / "videos" / f"{m['id']}.avi")
        a, b = _mask(frames[0], COLOURS[m["colour"]]), _mask(frames[-1], COLOURS[m["colour"]])
        assert a.sum() > 20 and b.sum() > 20, "shape not visible in its own colour"
        ya, xa = np.argwhere(a).mean(0)
        yb, xb = np.argwhere(b).mean(0)
        words = " ".join(caps[m["id"]])
        assert m["colour"] in words
        text = caps[m["id"]][0]
        if "left" in text:
            assert xb < xa - 10
        elif "right" in text:
            assert xb > xa + 10
        elif "up" in text or "rising" in text:
            assert yb < ya - 8
        elif "down" in text or "falling" in text:
            assert yb > ya + 8
        elif any(w in text for w in ("grow", "bigger", "expands", "larger")):
            assert b.sum() > 2 * a.sum()
        elif any(w in text for w in ("shrink", "smaller", "contracts")):
            assert a.sum() > 2 * b.sum()
        else:  # spins: stays in place, same size, different outline
            assert any(w in text for w in ("spin", "rotat", "turns"))
            assert abs(xb - xa) < 3 and abs(yb - ya) < 3
            assert (a ^ b).sum() > 0.1 * a.sum()
        checked.add(m["motion"])
    assert len(checked) >= 5


def test_direction_not_readable_from_frame_positions(tmp_path):
    # left and right clips visit the same range of positions: only the order differs
    from s2vt.data.synth import trajectory

    cfg = SynthConfig(frames=20)
    l = trajectory("left", cfg, np.random.default_rng(1))
    r = trajectory("right", cfg, np.random.default_rng(1))
    assert sorted(l["x"]) == sorted(r["x"]) and l["x"] != r["x"]


def test_deterministic_by_seed(tmp_path):
    cfg = SynthConfig(train=3, val=1, test=1, frames=8, width=32, height=32, seed=9)
    generate(tmp_path / "a", cfg, progress=False)
    generate(tmp_path / "b", cfg, progress=False)
    for f in ("captions.tsv", "clips.jsonl", "train.txt"):
        assert (tmp_path / "a" / f).read_text() == (tmp_path / "b" / f).read_text()
    fa, fb = _read(tmp_path / "a/videos/clip00000.avi"), _read(tmp_path / "b/videos/clip00000.avi")
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb))


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_worker_count_does_not_change_a_byte(tmp_path):
    cfg = SynthConfig(train=6, val=2, test=2, frames=8, width=48, height=32, seed=4)
    generate(tmp_path / "one", cfg, progress=False, workers=1)
    generate(tmp_path / "two", cfg, progress=False, workers=2)
    one, two = _tree(tmp_path / "one"), _tree(tmp_path / "two")
    assert len(one) == 10 + 7  # clips + captions.tsv, 3 split files, clips.jsonl, synth_config.json, marker
    assert one.keys() == two.keys()
    for name in one:
        assert one[name] == two[name], name


def test_refuses_a_non_empty_folder_without_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    cfg = SynthConfig(train=2, val=1, test=1, frames=4, width=32, height=32)
    with pytest.raises(S2VTError, match=re.escape(str(tmp_path)) + ".*not written by `s2vt synth`"):
        generate(tmp_path, cfg, progress=False, workers=1)
    assert not (tmp_path / "videos").exists()
    generate(tmp_path / "d", cfg, progress=False, workers=1)
    with pytest.raises(S2VTError, match="written by `s2vt synth`.*--overwrite"):
        generate(tmp_path / "d", cfg, progress=False, workers=1)


def test_overwrite_never_touches_a_folder_synth_did_not_write(tmp_path):
    """Files named like a dataset's (captions.tsv, clip00099.avi) but written by the user stay."""
    (tmp_path / "videos").mkdir()
    mine = {"captions.tsv": "v\tmy caption\n", "train.txt": "v\n", "videos/clip00099.avi": "my video"}
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(S2VTError, match="not written by `s2vt synth`"):
        generate(tmp_path, SynthConfig(train=2, val=1, test=1, frames=4, width=32, height=32), progress=False,
                 workers=1, overwrite=True)
    assert {n: (tmp_path / n).read_text() for n in mine} == mine
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["captions.tsv", "clip00099.avi", "train.txt", "videos"]


def test_overwrite_removes_only_its_own_files(tmp_path):
    generate(tmp_path, SynthConfig(train=6, val=2, test=2, frames=4, width=32, height=32), progress=False, workers=1)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "videos" / "holiday.avi").write_bytes(b"not a clip of ours")
    small = SynthConfig(train=2, val=1, test=1, frames=4, width=32, height=32, seed=1)
    generate(tmp_path, small, progress=False, workers=1, overwrite=True)
    clips = sorted(p.name for p in (tmp_path / "videos").glob("clip*"))
    assert clips == [f"clip{k:05d}.avi" for k in range(4)]  # no clip of the old set left behind
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "videos" / "holiday.avi").read_bytes() == b"not a clip of ours"
    assert json.loads((tmp_path / "synth_config.json").read_text())["seed"] == 1
    assert len((tmp_path / "clips.jsonl").read_text().splitlines()) == 4


def test_every_template_parses_to_its_own_attributes():
    from s2vt.data.attributes import parse
    from s2vt.data.synth import SHAPES, SYNONYMS, TEMPLATES

    for motion, templates in TEMPLATES.items():
        for t in templates:
            for shape in SHAPES:
                for name in SYNONYMS[shape]:
                    cap = t.format(c="green", s=name, t=name)
                    assert parse(cap) == ("green", shape, motion), cap


def test_attribute_accuracy_of_hand_written_captions():
    from s2vt.data.attributes import Attributes, accuracy, parse

    truth = {"a": Attributes("red", "circle", "left"), "b": Attributes("blue", "square", "grow"),
             "c": Attributes("yellow", "triangle", "down"), "d": Attributes("green", "square", "spin")}
    captions = {
        "a": "A red ball is moving left.",             # all right, through synonyms
        "b": "the blue box is getting bigger",          # all right
        "c": "a yellow triangle moves up",              # wrong motion
        "d": "a red and green square spins",            # two colours: colour wrong
    }
    assert parse(captions["b"]) == ("blue", "square", "grow")
    assert parse("a thing goes somewhere") == (None, None, None)
    assert parse("the green circle is falling") == ("green", "circle", "down")
    acc = accuracy(captions, truth)
    assert acc == {"acc_colour": 0.75, "acc_shape": 1.0, "acc_motion": 0.75, "acc_all": 0.5}
    with pytest.raises(S2VTError, match="ground truth"):
        accuracy({"zz": "a red ball"}, truth)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_killed_synth_leaves_no_worker_behind(tmp_path):
    out = tmp_path / "d"
    p = subprocess.Popen([sys.executable, "-m", "s2vt", "synth", str(out), "--workers", "2", "--train", "2000",
                          "--val", "1", "--test", "1", "--frames", "8"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < 60 and len(processes_with(str(out))) < 3:
        time.sleep(0.05)
    assert len(processes_with(str(out))) == 3, "the run and its 2 workers never ran together"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not wait_until_gone(str(out)), "synth workers outlived their killed run"


PARENT = os.getpid()


def _die_in_a_worker(job):
    if os.getpid() != PARENT:
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_synth_worker_is_an_error_that_says_what_to_do(tmp_path, monkeypatch):
    import s2vt.data.synth as synth

    monkeypatch.setattr(synth, "make_clip", _die_in_a_worker)
    with pytest.raises(S2VTError, match="a synth worker died .* re-run the same command with --overwrite"):
        generate(tmp_path / "d", SynthConfig(train=8, val=1, test=1, frames=4, width=32, height=32),
                 progress=False, workers=2)


def test_frame_sizes_must_be_even(tmp_path):
    for ext in (".avi", ".mp4"):  # both encoders would write 32x34 for 33x35
        with pytest.raises(S2VTError, match="--width 33 --height 35: frame sizes must be even"):
            SynthConfig(width=33, height=35, ext=ext)
    with pytest.raises(S2VTError, match="must be even"):
        SynthConfig(width=34, height=35)
    generate(tmp_path, SynthConfig(train=1, val=1, test=1, frames=4, width=34, height=36), progress=False, workers=1)
    assert _read(next((tmp_path / "videos").glob("*.avi")))[0].shape[:2] == (36, 34)
