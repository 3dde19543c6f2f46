import re

import numpy as np
import pytest

from s2vt.runtime.errors import S2VTError
from s2vt.video.flow import FlowComputer, flow_to_image
from s2vt.video.reader import Sampling, VideoError, iter_frames, iter_video_paths

from videos import moving_square, numbered, write


def test_stride_sampling_counts_decoded_frames(tmp_path):
    p = write(tmp_path / "n.avi", numbered(30))
    info = {}
    got = list(iter_frames(p, Sampling(stride=10), info=info))
    assert [i for i, _ in got] == [0, 10, 20]
    # the frame content matches its index (grey level 8*t)
    assert [int(round(f.mean() / 8)) for _, f in got] == [0, 10, 20]
    assert info["decoded_frames"] == 30


def test_uniform_and_max_frames(tmp_path):
    p = write(tmp_path / "n.avi", numbered(30))
    assert [i for i, _ in iter_frames(p, Sampling(num_frames=4))] == [0, 10, 19, 29]
    assert [i for i, _ in iter_frames(p, Sampling(stride=5, max_frames=3))] == [0, 5, 10]


def test_video_shorter_than_stride_and_one_frame(tmp_path):
    p = write(tmp_path / "s.avi", numbered(4))
    assert [i for i, _ in iter_frames(p, Sampling(stride=10))] == [0]
    one = write(tmp_path / "one.avi", numbered(1))
    pairs = list(iter_frames(one, Sampling(stride=10), pairs=True))
    assert len(pairs) == 1 and np.array_equal(pairs[0][1], pairs[0][2])  # paired with itself: zero flow


def test_pairs_give_successor_and_last_frame_predecessor(tmp_path):
    p = write(tmp_path / "n.avi", numbered(21))
    got = list(iter_frames(p, Sampling(stride=10), pairs=True))
    assert [i for i, *_ in got] == [0, 10, 20]
    levels = [(int(round(a.mean() / 8)), int(round(b.mean() / 8))) for _, a, b in got]
    assert levels == [(0, 1), (10, 11), (19, 20)]


def test_large_frames_are_shrunk_on_decode(tmp_path):
    big = [np.zeros((2160, 3840, 3), np.uint8) for _ in range(2)]  # 4K
    p = write(tmp_path / "big.avi", big)
    (_, f), = list(iter_frames(p, Sampling(stride=10, short_side=256)))
    assert f.shape == (256, 455, 3)  # short side bounded on decode


def test_grayscale_video_decodes_to_three_channels(tmp_path):
    frames = [np.full((24, 32), 100, np.uint8) for _ in range(3)]
    p = write(tmp_path / "g.avi", frames, is_color=False)
    (_, f), = list(iter_frames(p, Sampling(stride=10)))
    assert f.shape == (24, 32, 3)


def _put(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("maker,reason", [
    (lambda d: d / "missing.mp4", "file not found"),
    (lambda d: _put(d / "zero.mp4", b""), "empty file"),
    (lambda d: _put(d / "rand.mp4", np.random.default_rng(0).bytes(5000)), "cannot open|no frame"),
    (lambda d: _put(d / "t.avi", b"hello, not a video\n" * 50), "cannot open|no frame"),
])
def test_bad_files_raise_with_reason(tmp_path, maker, reason):
    with pytest.raises(VideoError, match=reason):
        list(iter_frames(maker(tmp_path), Sampling(stride=2)))


def test_truncated_avi_is_reported(tmp_path):
    p = write(tmp_path / "full.avi", moving_square(60, 64, 48))
    data = p.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="truncated|no frame|cannot open"):
        list(iter_frames(cut, Sampling(stride=5)))


def test_flow_image_recipe_sign_and_magnitude(tmp_path):
    frames = moving_square(3, dx=2)
    for method in ("dis", "farneback"):
        flow = FlowComputer(method)(frames[0], frames[1])
        region = flow[20:28, 10:16]  # inside the square
        assert region[..., 0].mean() > 1.0, f"{method}: rightward motion must give positive x-flow"
        assert abs(region[..., 1].mean()) < 0.5
    img = flow_to_image(np.array([[[2.0, -1.0], [0.0, 0.0], [20.0, 20.0]]], np.float32))
    # x = 16*2+128, y = 16*-1+128, magnitude = 16*sqrt(5)+128
    assert img[0, 0].tolist() == [160, 112, round(16 * 5 ** 0.5 + 128)]
    assert img[0, 1].tolist() == [128, 128, 128]
    assert img[0, 2].tolist() == [255, 255, 255]  # clipped / capped
    assert flow_to_image(np.array([[[-9.0, -30.0]]], np.float32))[0, 0].tolist()[:2] == [0, 0]  # floor at 0


def test_flow_image_matches_the_formula_on_random_flow():
    rng = np.random.default_rng(0)
    flow = (rng.standard_normal((60, 80, 2)) * 6).astype(np.float32)
    ref = np.stack([flow[..., 0] * 16 + 128, flow[..., 1] * 16 + 128,
                    np.sqrt((flow.astype(np.float64) ** 2).sum(-1)) * 16 + 128], -1)
    ref = np.clip(ref.round(), 0, 255)
    img = flow_to_image(flow)
    assert img.dtype == np.uint8 and img.shape == (60, 80, 3)
    diff = np.abs(img.astype(int) - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float32 magnitude may round the other way at .5
    assert 0 < (img[..., 0] == 0).mean() < 0.5 and (img[..., 2] == 255).any()  # both saturations exercised


def test_folder_scan_finds_names_with_inner_dots(tmp_path):
    for p in ("lecture.part.1.avi", "lecture.part.2.avi", "clip.v2.final.mp4", "draft.avi.tmp"):
        (tmp_path / p).write_bytes(b"x")
    assert [p.name for p in iter_video_paths(tmp_path)] == ["clip.v2.final.mp4", "lecture.part.1.avi",
                                                           "lecture.part.2.avi"]


@pytest.mark.parametrize("kw,flag", [(dict(stride=0), "--stride"), (dict(num_frames=-1), "--num-frames"),
                                     (dict(max_frames=-1), "--max-frames"), (dict(stride=2.5), "--stride")])
def test_sampling_validates_naming_the_flag(kw, flag):
    with pytest.raises(S2VTError, match=flag):
        Sampling(**kw)


def test_flow_method_checked_and_signature_constants_come_from_flow():
    from s2vt.video import flow
    from s2vt.features.backbones.registry import Backbone
    from s2vt.features.config import ExtractConfig, make_signature

    with pytest.raises(S2VTError, match="--flow-method 'brox'"):
        FlowComputer("brox")
    sig = make_signature(ExtractConfig(stream="flow", input_size=32), Backbone())
    assert sig["flow"] == {"method": "dis", "scale": flow.SCALE, "offset": flow.OFFSET} == \
        {"method": "dis", "scale": 16, "offset": 128}


def test_folder_scan_is_recursive_and_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    for p in ("b/x.MP4", "a.avi", "notes.txt", "c.mkv"):
        (tmp_path / p).write_bytes(b"x")
    assert [p.name for p in iter_video_paths(tmp_path)] == ["a.avi", "c.mkv", "x.MP4"]


def test_files_that_are_not_readable_videos_say_why(tmp_path, monkeypatch):
    import os

    fifo = tmp_path / "pipe.avi"
    os.mkfifo(fifo)  # opening it to read would block for ever
    (tmp_path / "empty.avi").write_bytes(b"")
    (tmp_path / "dir.avi").mkdir()
    cases = {"pipe.avi": "not a regular file", "empty.avi": "empty file (0 bytes)",
             "dir.avi": "is a directory", "missing.avi": "file not found"}
    for name, reason in cases.items():
        with pytest.raises(VideoError, match=re.escape(reason)) as e:
            next(iter_frames(tmp_path / name, Sampling(stride=1)))
        assert str(tmp_path / name) in str(e.value)  # the reason names the file
    video = write(tmp_path / "ok.avi", moving_square(4))
    monkeypatch.setattr(os, "access", lambda p, mode: False)  # what a user without read permission sees
    with pytest.raises(VideoError, match="cannot read: permission denied"):
        next(iter_frames(video, Sampling(stride=1)))


def test_an_unreadable_folder_is_reported_not_silently_skipped(tmp_path):
    with pytest.warns(UserWarning, match=r"cannot read folder .*missing.*its videos are skipped"):
        assert list(iter_video_paths(tmp_path / "missing")) == []


def test_a_file_ffmpeg_cannot_open_is_reported_by_s2vt_alone(tmp_path):
    """Neither FFmpeg's logger nor OpenCV's (its own AVI reader prints raw bytes of a truncated AVI)
    writes to the process's stderr, for a library user as for the command."""
    import subprocess
    import sys

    good = write(tmp_path / "ok.avi", numbered(20))
    (tmp_path / "trunc.avi").write_bytes(good.read_bytes()[:3000])
    (tmp_path / "text.mp4").write_text("not a video\n")
    code = ("import sys\nfrom s2vt.video.reader import Sampling, iter_frames\n"
            "for p in sys.argv[1:]:\n"
            "    try:\n        print(p, len(list(iter_frames(p, Sampling(stride=1)))))\n"
            "    except Exception as e:\n        print(p, type(e).__name__)\n")
    r = subprocess.run([sys.executable, "-c", code, str(good), str(tmp_path / "trunc.avi"), str(tmp_path / "text.mp4")],
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == [str(good), "20", str(tmp_path / "trunc.avi"), "VideoError",
                                str(tmp_path / "text.mp4"), "VideoError"]
    assert r.stderr == ""
