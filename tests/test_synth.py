import json

import cv2
import numpy as np

from s2vt.synth import COLOURS, SynthConfig, generate


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
    from s2vt.synth import trajectory

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
