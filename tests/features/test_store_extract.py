import os
import re
import signal
import subprocess
import sys
import time

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from s2vt.runtime.errors import S2VTError, SignatureMismatch
from s2vt.features.extract import extract
from s2vt.features.shards import shard_items
from s2vt.features.config import ExtractConfig
from s2vt.features.store import BackgroundWriter, FeatureStore, FeatureWriter, check_signature, merge_stores, stage_dir, staged_ids

from processes import wait_until_gone
from videos import moving_square, write
from commands import s2vt_in_process

CFG = dict(stride=4, input_size=64, crop_ratio=1.0, workers=0)


def _videos(d, n=4, frames=12):
    d.mkdir(exist_ok=True)
    return [(f"v{i}", write(d / f"v{i}.avi", moving_square(frames, seed=i))) for i in range(n)]


def test_features_shapes_indices_and_signature(tmp_path):
    items = _videos(tmp_path / "v", 2, frames=10)
    s = extract(items, tmp_path / "f.h5", ExtractConfig(**CFG), progress=False)
    assert s.done == 2 and not s.failed and s.frames == 6
    st = FeatureStore(tmp_path / "f.h5")
    assert st.ids == ["v0", "v1"]
    assert st.features("v0").shape == (3, 1280)
    assert st.frame_indices("v0").tolist() == [0, 4, 8]
    assert st.meta("v0")["decoded_frames"] == 10
    sig = st.signature
    assert sig["stream"] == "rgb" and sig["backbone"] == "efficientnet_lite0" and sig["layer"] == "pool"
    assert sig["sampling"]["stride"] == 4 and sig["preprocess"]["size"] == 64 and sig["weights_digest"]


def test_same_file_twice_gives_identical_features(tmp_path):
    p = write(tmp_path / "a.avi", moving_square(12))
    cfg = ExtractConfig(**CFG)
    extract([("a", p)], tmp_path / "1.h5", cfg, progress=False)
    extract([("a", p)], tmp_path / "2.h5", cfg, progress=False)
    assert np.array_equal(FeatureStore(tmp_path / "1.h5").features("a"), FeatureStore(tmp_path / "2.h5").features("a"))


def test_flow_stream_differs_for_motion_and_records_method(tmp_path):
    still = write(tmp_path / "still.avi", [moving_square(1)[0]] * 12)
    moving = write(tmp_path / "moving.avi", moving_square(12))
    extract([("still", still), ("moving", moving)], tmp_path / "f.h5", ExtractConfig(stream="flow", **CFG), progress=False)
    st = FeatureStore(tmp_path / "f.h5")
    assert st.signature["flow"]["method"] == "dis"
    assert np.abs(st.features("still") - st.features("moving")).max() > 0.1


def test_bad_videos_reported_others_extracted(tmp_path):
    good = _videos(tmp_path / "v", 2)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "zero.mp4").write_bytes(b"")
    (bad / "rand.mp4").write_bytes(np.random.default_rng(1).bytes(4000))
    (bad / "text.avi").write_text("not a video")
    full = write(bad / "full.avi", moving_square(60))
    (bad / "cut.avi").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full_mp4 = write(bad / "full4.mp4", moving_square(60), fourcc="mp4v")
    (bad / "cut4.mp4").write_bytes(full_mp4.read_bytes()[: full_mp4.stat().st_size // 2])
    write(bad / "odd.avi", [f[:37, :53] for f in moving_square(5)])
    items = good + [(p.stem, p) for p in sorted(bad.iterdir()) if not p.stem.startswith("full")] + [("missing", tmp_path / "nope.mp4")]
    s = extract(items, tmp_path / "f.h5", ExtractConfig(**CFG), progress=False)
    st = FeatureStore(tmp_path / "f.h5")
    assert set(st.ids) == {"v0", "v1", "odd"}
    assert set(s.failed) == {"zero", "rand", "text", "cut", "cut4", "missing"}
    assert set(st.failed) == set(s.failed)
    assert "empty" in st.failed["zero"]["reason"] and "not found" in st.failed["missing"]["reason"]
    assert st.features("odd").shape == (2, 1280)
    with pytest.raises(KeyError, match="extraction failed"):
        st.features("zero")


def test_cli_exit_status_says_whether_anything_failed(tmp_path, capsys):
    from s2vt.cli.app import main

    good = write(tmp_path / "good.avi", moving_square(8))
    args = ["extract", "--quiet", "--stride", "4", "--input-size", "64", "--workers", "0"]
    assert main(args + [str(good), "--out", str(tmp_path / "a.h5")]) == 0, capsys.readouterr().err
    (tmp_path / "bad.mp4").write_bytes(b"")
    assert main(args + [str(good), str(tmp_path / "bad.mp4"), "--out", str(tmp_path / "b.h5")]) == 1
    assert "failed: bad: empty file" in capsys.readouterr().err


def test_rerun_skips_finished_and_signature_mismatch_refused(tmp_path):
    items = _videos(tmp_path / "v", 3)
    cfg = ExtractConfig(**CFG)
    extract(items[:2], tmp_path / "f.h5", cfg, progress=False)
    s = extract(items, tmp_path / "f.h5", cfg, progress=False)
    assert (s.skipped, s.done) == (2, 1)
    assert FeatureStore(tmp_path / "f.h5").ids == ["v0", "v1", "v2"]
    with pytest.raises(SignatureMismatch, match=r"sampling: .*'stride': 4.*'stride': 8"):
        extract(items, tmp_path / "f.h5", ExtractConfig(**{**CFG, "stride": 8}), progress=False)
    with pytest.raises(SignatureMismatch, match="stream: 'rgb' != 'flow'"):
        check_signature(FeatureStore(tmp_path / "f.h5").signature, {**FeatureStore(tmp_path / "f.h5").signature, "stream": "flow"}, "x")


def _staged(out) -> set:
    try:
        return staged_ids(out)
    except FileNotFoundError:  # the run just published the store and removed its staging folder
        return set(FeatureStore(out).ids)


def _run_and_kill(cmd, out, ready):
    """Start ``cmd`` (committing every video), SIGKILL it as soon as ``ready()`` holds; the videos then
    durably staged."""
    env = dict(os.environ, S2VT_COMMIT_VIDEOS="1")
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    t0 = time.time()
    while time.time() - t0 < 120 and p.poll() is None and not ready():
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    return _staged(out)


def _same_store(a, b):
    a, b = FeatureStore(a), FeatureStore(b)
    assert a.ids == b.ids and a.failed == b.failed and a.signature == b.signature
    for v in a.ids:
        assert np.array_equal(a.features(v), b.features(v)) and np.array_equal(a.frame_indices(v), b.frame_indices(v))
        assert a.meta(v) == b.meta(v)


def test_killed_run_resumes_to_identical_store(tmp_path):
    vids = tmp_path / "v"
    _videos(vids, 10, frames=24)
    cmd = [sys.executable, "-m", "s2vt", "extract", str(vids), "--quiet", "--stride", "2", "--input-size", "64",
           "--crop-ratio", "1.0", "--workers", "0", "--batch-size", "8"]
    extract(sorted((p.stem, p) for p in vids.iterdir()), tmp_path / "ref.h5",
            ExtractConfig(stride=2, input_size=64, crop_ratio=1.0, workers=0, batch_size=8), progress=False)
    out = tmp_path / "killed.h5"
    staged = len(_run_and_kill(cmd + ["--out", str(out)], out, lambda: len(_staged(out)) >= 3))
    assert 3 <= staged < 10, f"kill came too late ({staged} staged)"
    assert not out.exists()  # nothing published half-done
    r = s2vt_in_process(*cmd[3:], "--out", out)  # the resume: in this process
    assert r.returncode == 0 and f"skipped {staged} already done" in r.stdout, r.stderr
    assert len(FeatureStore(out).ids) == 10
    _same_store(tmp_path / "ref.h5", out)
    assert not (tmp_path / "killed.h5.parts").exists()


def _toggle(gate):
    while True:
        gate.clear()
        gate.set()


def test_turns_gate_never_blocks_after_its_setter_is_killed():
    """The main process flips the gate at every CNN batch; a kill may land mid-flip. A waiting
    worker must still return (and so notice its dead parent), whatever instant the kill hit."""
    import multiprocessing
    import threading

    from s2vt.features.pipeline import CpuGate

    ctx = multiprocessing.get_context("fork")
    for _ in range(10):
        gate = CpuGate()
        p = ctx.Process(target=_toggle, args=(gate,))
        p.start()
        time.sleep(0.03)
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        seen = []
        t = threading.Thread(target=lambda: (gate.clear(), seen.append(gate.wait(0.1)), gate.set(),
                                             seen.append(gate.wait(0.1))), daemon=True)
        t.start()
        t.join(3)
        assert not t.is_alive(), "the gate blocked after its setter was killed"
        assert seen == [False, True]


def test_turns_gate_sleeps_while_closed_and_wakes_at_once():
    """A worker waiting for its turn must leave the cores to the CNN (no polling loop: one
    spinning waiter slowed CNN batches by a sixth on 2 cores) and resume as soon as it opens."""
    import threading

    from s2vt.features.pipeline import CpuGate

    gate = CpuGate(2)
    gate.set()
    gate.set()  # tokens do not pile up: at most one stale wake-up per worker
    gate.clear()
    seen = {}

    def waiter():
        c, t = time.thread_time(), time.monotonic()
        seen["closed"] = gate.wait(1.0, worker=1)
        seen["closed_cpu"], seen["closed_s"] = time.thread_time() - c, time.monotonic() - t
        c, t = time.thread_time(), time.monotonic()
        seen["opened"] = gate.wait(10.0, worker=1)
        seen["opened_cpu"], seen["opened_s"] = time.thread_time() - c, time.monotonic() - t

    th = threading.Thread(target=waiter, daemon=True)
    th.start()
    time.sleep(1.3)
    gate.set()
    th.join(5)
    assert not th.is_alive()
    assert seen["closed"] is False and 0.95 <= seen["closed_s"] < 1.5
    assert seen["opened"] is True and seen["opened_s"] < 1.0  # woken by set(), not by its 10 s timeout
    # asleep in the kernel, not polling: a 0.5 ms polling loop costs 54-58 ms of CPU per second,
    # while a sleeping thread is charged at most a few scheduler ticks (4 ms each on some kernels)
    assert seen["closed_cpu"] + seen["opened_cpu"] < 0.03, seen


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_workers_take_turns_with_the_cnn_and_die_with_a_killed_run(tmp_path):
    vids = tmp_path / "v"
    _videos(vids, 8, frames=24)
    items = sorted((p.stem, p) for p in vids.iterdir())
    cfg = dict(stride=2, input_size=64, crop_ratio=1.0, batch_size=4)
    extract(items, tmp_path / "ref.h5", ExtractConfig(**cfg, workers=0), progress=False)
    extract(items, tmp_path / "w2.h5", ExtractConfig(**cfg, workers=2), progress=False)  # the gated path
    _same_store(tmp_path / "ref.h5", tmp_path / "w2.h5")

    out = tmp_path / "killed.h5"
    cmd = [sys.executable, "-m", "s2vt", "extract", str(vids), "--quiet", "--stride", "2", "--input-size", "64",
           "--crop-ratio", "1.0", "--workers", "2", "--batch-size", "4", "--out", str(out)]
    _run_and_kill(cmd, out, lambda: len(_staged(out)) >= 1)
    assert not wait_until_gone(str(out)), "decoding workers outlived their killed run"
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    _same_store(tmp_path / "ref.h5", out)


def test_three_kills_at_different_points_then_resume_equals_clean_run(tmp_path):
    """SIGKILL at start-up, after the first durable videos, and part-way through a resumed run;
    the same command then completes a store equal to an uninterrupted run (features, frame
    indices, metadata, failures, signature)."""
    vids = tmp_path / "v"
    _videos(vids, 12, frames=24)
    (vids / "broken.avi").write_bytes(b"not a video")
    cmd = [sys.executable, "-m", "s2vt", "extract", str(vids), "--quiet", "--stride", "2", "--input-size", "64",
           "--crop-ratio", "1.0", "--workers", "0", "--batch-size", "8"]
    extract(sorted((p.stem, p) for p in vids.iterdir()), tmp_path / "ref.h5",
            ExtractConfig(stride=2, input_size=64, crop_ratio=1.0, workers=0, batch_size=8), progress=False)
    out = tmp_path / "killed.h5"
    parts = tmp_path / "killed.h5.parts"
    cmd += ["--out", str(out)]
    counts = [len(_run_and_kill(cmd, out, lambda: (parts / "signature.json").exists()))]
    counts.append(len(_run_and_kill(cmd, out, lambda: len(_staged(out)) >= 2)))
    counts.append(len(_run_and_kill(cmd, out, lambda: len(_staged(out)) >= counts[1] + 2)))
    assert counts[0] < counts[1] < counts[2] < 12, f"kills did not land part-way: {counts}"
    assert not out.exists()
    r = s2vt_in_process(*cmd[3:])  # the resume: in this process
    assert r.returncode == 1 and f"skipped {counts[2]} already done" in r.stdout, r.stdout + r.stderr
    _same_store(tmp_path / "ref.h5", out)
    assert set(FeatureStore(out).failed) == {"broken"} and not parts.exists()


def test_shards_and_merge(tmp_path):
    items = _videos(tmp_path / "v", 5)
    cfg = ExtractConfig(**CFG)
    shards = []
    for r in range(2):
        mine = shard_items(items, r, 2)
        out = tmp_path / f"f.shard{r}of2.h5"
        extract(mine, out, cfg, progress=False, shard=(r, 2))
        shards.append(out)
    assert len(FeatureStore(shards[0])) == 3 and len(FeatureStore(shards[1])) == 2
    merged = merge_stores(tmp_path / "all.h5", shards)
    whole = tmp_path / "whole.h5"
    extract(items, whole, cfg, progress=False)
    m, w = FeatureStore(merged), FeatureStore(whole)
    assert m.ids == w.ids == ["v0", "v1", "v2", "v3", "v4"]
    check_signature(m.signature, w.signature, "merged")
    for v in m.ids:
        assert np.array_equal(m.features(v), w.features(v))


def test_features_do_not_depend_on_how_videos_fall_into_batches(tmp_path):
    items = _videos(tmp_path / "v", 3, frames=9)  # 3 frames each at stride 4
    stores = {}
    for b in (1, 2, 4, 64):  # batch 4 leaves a batch of one at the end; 1 is all batches of one
        stores[b] = FeatureStore(extract(items, tmp_path / f"b{b}.h5", ExtractConfig(**CFG, batch_size=b),
                                         progress=False).out)
    for v, _ in items:
        ref = stores[64].features(v)
        assert ref.shape == (3, 1280) and np.abs(ref).sum() > 0
        for b in (1, 2, 4):
            assert np.array_equal(stores[b].features(v), ref), (v, b)


def test_default_cnn_batch_follows_the_device():
    assert ExtractConfig().cnn_batch() == 8
    assert ExtractConfig(batch_size=32).cnn_batch() == 32
    with pytest.raises(S2VTError, match="--batch-size"):
        ExtractConfig(batch_size=0)


def test_finished_store_reruns_without_writing(tmp_path, monkeypatch):
    items = _videos(tmp_path / "v", 2, frames=8)
    out = tmp_path / "f.h5"
    extract(items, out, ExtractConfig(**CFG), progress=False)
    before = (out.read_bytes(), sorted(p.name for p in tmp_path.iterdir()))

    def read_only(*a, **k):
        raise PermissionError(13, "Read-only file system", str(a[0]) if a else "")

    monkeypatch.setattr(os, "mkdir", read_only)  # as on a read-only filesystem: any write attempt fails
    monkeypatch.setattr(os, "open", lambda path, flags, *a, **k: read_only(path) if flags & (os.O_WRONLY | os.O_RDWR)
                        else _real_open(path, flags, *a, **k))
    s = extract(items, out, ExtractConfig(**CFG), progress=False)
    assert (s.done, s.skipped, s.failed) == (0, 2, {})
    monkeypatch.undo()
    assert (out.read_bytes(), sorted(p.name for p in tmp_path.iterdir())) == before
    # one more video: the store is extended as before
    more = items + _videos(tmp_path / "w", 1, frames=8)
    more[-1] = ("v9", more[-1][1])
    s = extract(more, out, ExtractConfig(**CFG), progress=False)
    assert (s.done, s.skipped) == (1, 2) and FeatureStore(out).ids == ["v0", "v1", "v9"]


_real_open = os.open


def test_store_pickles_for_dataloader_workers(tmp_path):
    import pickle

    items = _videos(tmp_path / "v", 1)
    extract(items, tmp_path / "f.h5", ExtractConfig(**CFG), progress=False)
    st = FeatureStore(tmp_path / "f.h5")
    st.features("v0")  # opens the file
    clone = pickle.loads(pickle.dumps(st))
    assert clone._file is None and np.array_equal(clone.features("v0"), st.features("v0"))


def test_two_ranks_under_torchrun_environment_then_merge(tmp_path):
    """Each process reads RANK/WORLD_SIZE (as torchrun sets them), writes its shard; merge joins them."""
    vids = tmp_path / "v"
    _videos(vids, 5)
    out = tmp_path / "f.h5"
    cmd = [sys.executable, "-m", "s2vt", "extract", str(vids), "--quiet", "--stride", "4", "--input-size", "64",
           "--crop-ratio", "1.0", "--workers", "0", "--out", str(out)]
    procs = [subprocess.Popen(cmd, env=dict(os.environ, RANK=str(r), WORLD_SIZE="2", OMP_NUM_THREADS="1"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err.decode()[-2000:]
    shards = [tmp_path / "f.shard0of2.h5", tmp_path / "f.shard1of2.h5"]
    assert [len(FeatureStore(s)) for s in shards] == [3, 2]
    r = s2vt_in_process("merge-features", out, *shards)
    assert r.returncode == 0, r.stderr
    m = FeatureStore(out)
    assert m.ids == ["v0", "v1", "v2", "v3", "v4"] and "shard" not in m.signature


def test_nbytes_from_shapes(tmp_path):
    items = _videos(tmp_path / "v", 2)
    extract(items, tmp_path / "f.h5", ExtractConfig(**CFG), progress=False)
    st = FeatureStore(tmp_path / "f.h5")
    assert st.nbytes(["v0", "v1", "absent"]) == 2 * 3 * 1280 * 4


# ----------------------------------------------------------------------------- group commit and the writer thread

def _sig(dim=4):
    return {"format_version": 1, "stream": "rgb", "dim": dim}


def test_group_commit_makes_videos_durable_together(tmp_path):
    out = tmp_path / "f.h5"
    w = FeatureWriter(out, _sig(), commit_seconds=60, commit_videos=3)
    for i in range(2):
        w.add(f"v{i}", np.full((2, 4), i, np.float32), [0, 5], {"fps": 10.0})
    assert staged_ids(out) == set()  # not durable yet: a re-run would redo them
    w.add("v2", np.zeros((1, 4), np.float32), [0], {"fps": 10.0})
    assert staged_ids(out) == {"v0", "v1", "v2"}
    assert len(list(stage_dir(out).glob("g*.npz"))) == 1  # one file, one fsync for the group
    w.add_failure("bad", "cannot open", "/x/bad.avi")
    w.finalize()
    st = FeatureStore(out)
    assert st.ids == ["v0", "v1", "v2"] and st.failed == {"bad": {"reason": "cannot open", "source": "/x/bad.avi"}}
    assert st.features("v1").tolist() == [[1.0] * 4] * 2 and st.frame_indices("v1").tolist() == [0, 5]
    assert not stage_dir(out).exists()


def test_background_writer_commits_on_time_and_reports_errors(tmp_path):
    out = tmp_path / "f.h5"
    bg = BackgroundWriter(FeatureWriter(out, _sig(), commit_seconds=0.05))
    bg.add("a", np.ones((3, 4), np.float32), [0, 1, 2], {})
    t0 = time.time()
    while staged_ids(out) != {"a"} and time.time() - t0 < 10:
        time.sleep(0.02)
    assert staged_ids(out) == {"a"}  # durable with no further call
    with pytest.raises(S2VTError, match="non-finite"):
        bg.add("b", np.full((1, 4), np.nan, np.float32), [0], {})  # checked in the caller, at once
    bg.writer.commit = lambda: (_ for _ in ()).throw(OSError("disk full"))
    bg.add("c", np.ones((1, 4), np.float32), [0], {})
    with pytest.raises(OSError, match="disk full"):
        bg.finish()


@pytest.mark.parametrize("vid,feats,idx,match", [
    ("a/b", np.ones((1, 4)), [0], "path separator"),
    (".x", np.ones((1, 4)), [0], "starts with a dot"),
    ("a", np.ones((2, 4)), [0], r"must be \(T, 4\)"),
    ("a", np.ones((1, 5)), [0], r"must be \(T, 4\)"),
    ("a", np.ones(4), [0], r"must be \(T, 4\)"),
    ("a", np.ones((0, 4)), [], "no frames"),
    ("a", np.array([[1, np.inf, 0, 0]]), [0], "non-finite"),
])
def test_writer_add_validates_with_s2vt_errors(tmp_path, vid, feats, idx, match):
    w = FeatureWriter(tmp_path / "f.h5", _sig())
    with pytest.raises(S2VTError, match=match):
        w.add(vid, feats, idx, {})


def test_store_refuses_files_that_are_not_stores(tmp_path):
    import h5py

    (tmp_path / "text.h5").write_text("hello")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f.create_dataset("x", data=[1])
    with h5py.File(tmp_path / "nosig.h5", "w") as f:
        f.attrs["format"] = "s2vt-features"
        f.create_group("videos"), f.create_group("failed")
    with h5py.File(tmp_path / "badid.h5", "w") as f:
        f.attrs["format"], f.attrs["signature"] = "s2vt-features", json.dumps(_sig())
        f.create_group("failed")
        f.create_group("videos").create_group(".hidden").create_dataset("features", data=np.ones((1, 4)))
    for name, match in [("text", "cannot read"), ("plain", "format attribute"), ("nosig", "no readable signature"),
                        ("badid", "'.hidden'.*starts with a dot")]:
        with pytest.raises(S2VTError, match=f"{name}.h5.*{match}"):
            FeatureStore(tmp_path / f"{name}.h5")


def test_store_refuses_non_finite_features_naming_the_video(tmp_path):
    import h5py

    w = FeatureWriter(tmp_path / "f.h5", _sig())
    w.add("good", np.ones((2, 4), np.float32), [0, 1], {})
    w.add("nan", np.ones((2, 4), np.float32), [0, 1], {})
    w.finalize()
    with h5py.File(tmp_path / "f.h5", "a") as f:
        f["videos/nan/features"][1, 2] = np.nan  # damaged after writing
    st = FeatureStore(tmp_path / "f.h5")
    assert st.features("good").shape == (2, 4)
    with pytest.raises(S2VTError, match="video nan has non-finite features"):
        st.features("nan")


# ----------------------------------------------------------------------------- extraction inputs

@pytest.mark.parametrize("kw,flag", [
    (dict(stride=0), "--stride"), (dict(num_frames=-1), "--num-frames"), (dict(max_frames=-2), "--max-frames"),
    (dict(input_size=8), "--input-size"), (dict(cnn="alexnet", input_size=62), "--input-size"),
    (dict(crop_ratio=0.0), "--crop-ratio"), (dict(crop_ratio=5), "--crop-ratio"), (dict(batch_size=0), "--batch-size"),
    (dict(workers=-1), "--workers"), (dict(flow_method="brox"), "--flow-method"), (dict(device="gpu0"), "--device"),
    (dict(cnn="vgg17"), "--cnn"), (dict(layer="fc9"), "--layer"), (dict(stream="depth"), "--stream"),
])
def test_extract_config_validates_naming_the_flag(kw, flag):
    with pytest.raises(S2VTError, match=flag):
        ExtractConfig(**kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused_when_the_run_starts():
    cfg = ExtractConfig(device="cuda")  # a config is machine-independent: built anywhere
    with pytest.raises(S2VTError, match="--device cuda: no CUDA GPU"):
        cfg.on_device()


def test_bf16_on_cpu_warns_and_computes_fp32():
    cfg = ExtractConfig(device="cpu", precision="bf16")
    with pytest.warns(UserWarning, match="--precision bf16 is for GPUs"):
        run, _ = cfg.on_device()
    assert run.precision == "fp32"  # what runs is what the signature records


def test_signature_is_made_from_the_feature_fields_and_read_back():
    from dataclasses import fields
    from s2vt.features.config import make_signature

    class FakeBackbone:  # what a Backbone resolves, without loading weights
        def signature(self):
            return {"backbone": "efficientnet_lite0", "layer": "pool", "dim": 1280, "weights_digest": "x",
                    "preprocess": {"size": 64, "crop_ratio": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3}}

    cfg = ExtractConfig(stream="flow", num_frames=7, max_frames=9, input_size=64, crop_ratio=1.0,
                        flow_method="farneback", precision="bf16", resize_with="opencv")
    sig = make_signature(cfg, FakeBackbone())
    assert "method" not in sig["preprocess"]  # opencv: the signature reads as before the key existed
    assert sig["sampling"]["num_frames"] == 7 and sig["flow"]["method"] == "farneback" and sig["precision"] == "bf16"
    back = ExtractConfig.from_signature(sig)
    marked = [f.name for f in fields(ExtractConfig) if f.metadata.get("feature")]
    assert [getattr(back, n) for n in marked if n != "layer"] == [getattr(cfg, n) for n in marked if n != "layer"]
    assert "flow" not in make_signature(ExtractConfig(), FakeBackbone())  # flow_method applies to flow only
    assert "--flow-method" not in ExtractConfig().flags() and "--precision bf16" in cfg.flags()


def test_crop_ratio_is_applied(tmp_path):
    import cv2
    from s2vt.features.backbones.spec import prepare
    from s2vt.features.pipeline import VideoChunks

    p = write(tmp_path / "a.avi", moving_square(1, 96, 64))
    frame = cv2.cvtColor(cv2.VideoCapture(str(p)).read()[1], cv2.COLOR_BGR2RGB)
    cfg = ExtractConfig(input_size=32, crop_ratio=0.5, workers=0)
    (msg,) = list(VideoChunks([("a", p)], cfg))
    assert cfg.preprocess().crop_ratio == 0.5
    assert np.array_equal(msg["images"][0].numpy(), prepare(frame, cfg.preprocess()))
    full = prepare(frame, ExtractConfig(input_size=32, crop_ratio=1.0).preprocess())
    assert not np.array_equal(msg["images"][0].numpy(), full)


class _NaNForBright(torch.nn.Module):
    """A backbone whose features are NaN for bright images (a stand-in for a diverging CNN)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.preprocess, self.dim = inner, inner.preprocess, inner.dim

    def signature(self):
        return self.inner.signature()

    def forward(self, x):
        y = self.inner(x)
        return torch.where((x.float().mean((1, 2, 3)) > 100)[:, None], torch.full_like(y, float("nan")), y)


def test_non_finite_and_zero_frame_videos_are_failures(tmp_path, monkeypatch):
    from s2vt.features import pipeline as ex
    from s2vt.features.backbones.registry import Backbone

    dark = _videos(tmp_path / "v", 2)
    bright = write(tmp_path / "bright.avi", [np.full((48, 64, 3), 250, np.uint8)] * 8)
    empty = write(tmp_path / "empty.avi", moving_square(8))
    real = ex.video_images
    monkeypatch.setattr(ex, "video_images", lambda path, *a: iter(()) if "empty" in str(path) else real(path, *a))
    cfg = ExtractConfig(**CFG)
    s = extract(dark + [("bright", bright), ("empty", empty)], tmp_path / "f.h5", cfg,
                backbone=_NaNForBright(Backbone(preprocess=cfg.preprocess())), progress=False)
    st = FeatureStore(tmp_path / "f.h5")
    assert st.ids == ["v0", "v1"] and s.done == 2
    assert "non-finite features" in st.failed["bright"]["reason"]
    assert st.failed["empty"]["reason"] == "no frame sampled"


def test_shard_specs_are_validated(monkeypatch):
    from s2vt.features.shards import env_shard

    for rank, world in [(2, 2), (-1, 2), (0, 0)]:
        with pytest.raises(S2VTError, match=f"--shard {rank}/{world}"):
            shard_items([("a", "a.avi")], rank, world)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(S2VTError, match="RANK=3 WORLD_SIZE=2"):
        env_shard()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(S2VTError, match="must be integers"):
        env_shard()
    monkeypatch.setenv("RANK", "1")
    assert env_shard() == (1, 2)


def test_pipeline_returns_rows_to_their_owners_in_order():
    from s2vt.features.backbones.registry import Backbone
    from s2vt.features.pipeline import Pipeline

    b = Backbone(preprocess=ExtractConfig(input_size=32).preprocess())
    x = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    pipe = Pipeline(b, torch.device("cpu"), batch_size=3, size=32)
    out = pipe.add("a", x[:2]) + pipe.add("b", x[2:6]) + pipe.add("c", x[6:]) + pipe.flush()
    assert [(o, len(r)) for o, r in out] == [("a", 2), ("b", 1), ("b", 3), ("c", 1)]  # b spans two batches
    rows = np.concatenate([r for _, r in out])
    with torch.inference_mode():
        ref = b(x).numpy()
    np.testing.assert_allclose(rows, ref, rtol=1e-4, atol=1e-4)


def test_missing_shards_are_named():
    from s2vt.features.store import missing_shards

    assert missing_shards(["0/4", "2/4"]) == ["1/4", "3/4"]
    assert missing_shards(["0/2", "1/2"]) == [] and missing_shards([None, None]) == []


@pytest.mark.parametrize("name, value", [("S2VT_COMMIT_SECONDS", "inf"), ("S2VT_COMMIT_SECONDS", "nan"),
                                         ("S2VT_COMMIT_SECONDS", "0"), ("S2VT_COMMIT_VIDEOS", "0.5"),
                                         ("S2VT_COMMIT_VIDEOS", "-3"), ("S2VT_COMMIT_VIDEOS", "abc")])
def test_commit_settings_from_the_environment_are_checked(tmp_path, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(S2VTError, match=f"{name}='{re.escape(value)}' must be a positive"):
        FeatureWriter(tmp_path / "f.h5", {"stream": "rgb"})


def test_damaged_staging_signature_names_the_folder_to_delete(tmp_path):
    FeatureWriter(tmp_path / "f.h5", {"stream": "rgb"})
    for damage in ("{bad", "[1, 2]"):
        (tmp_path / "f.h5.parts" / "signature.json").write_text(damage)
        with pytest.raises(S2VTError, match=r"signature.json is damaged; delete .*f.h5.parts to extract afresh"):
            FeatureWriter(tmp_path / "f.h5", {"stream": "rgb"})


def _rewrite_group(g, index, arrays):
    with open(g, "wb") as f:
        np.savez(f, index=np.array(json.dumps(index)), **arrays)


_F, _I = np.ones((2, 4), np.float32), np.arange(2)
_DAMAGED_GROUPS = {
    "no meta": ([{"kind": "video", "vid": "a"}], {"f0": _F, "i0": _I}),
    "no arrays": ([{"kind": "video", "vid": "a", "meta": {}}], {}),
    "index not a list": ({"kind": "video", "vid": "a"}, {}),
    "unknown kind": ([{"kind": "other", "vid": "a"}], {}),
    "failure without reason": ([{"kind": "failed", "vid": "a"}], {}),
    "id not a string": ([{"kind": "video", "vid": 3, "meta": {}}], {"f0": _F, "i0": _I}),
    "other width": ([{"kind": "video", "vid": "a", "meta": {}}], {"f0": np.ones((2, 3), np.float32), "i0": _I}),
    "indices not per row": ([{"kind": "video", "vid": "a", "meta": {}}], {"f0": _F, "i0": np.arange(3)}),
    "truncated": None,
}


@pytest.mark.parametrize("damage", sorted(_DAMAGED_GROUPS))
def test_a_damaged_staged_group_is_dropped_and_its_videos_extracted_again(tmp_path, damage):
    sig = {"stream": "rgb", "dim": 4}
    w = FeatureWriter(tmp_path / "f.h5", sig, commit_videos=1)
    for vid in ("a", "b"):
        w.add(vid, _F * (vid == "b"), _I, {"fps": 1.0})
    w.close()  # interrupted: two groups staged, nothing published
    g = sorted(stage_dir(tmp_path / "f.h5").glob("g*.npz"))[0]
    if _DAMAGED_GROUPS[damage] is None:
        g.write_bytes(g.read_bytes()[:100])
    else:
        _rewrite_group(g, *_DAMAGED_GROUPS[damage])
    w = FeatureWriter(tmp_path / "f.h5", sig)
    assert w.done_ids() == {"b"} and not g.exists()
    w.add("a", _F * 2, _I, {"fps": 1.0})
    store = FeatureStore(w.finalize())
    assert store.ids == ["a", "b"] and store.features("a")[0, 0] == 2 and store.features("b")[0, 0] == 1


def test_a_staged_group_whose_data_is_damaged_is_named_with_the_fix(tmp_path):
    sig = {"stream": "rgb", "dim": 4}
    w = FeatureWriter(tmp_path / "f.h5", sig, commit_videos=1)
    w.add("a", np.arange(4000, dtype=np.float32).reshape(1000, 4), np.arange(1000), {"fps": 1.0})
    w.close()
    g = next(stage_dir(tmp_path / "f.h5").glob("g*.npz"))
    data = bytearray(g.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the features: index and headers still read
    g.write_bytes(bytes(data))
    w = FeatureWriter(tmp_path / "f.h5", sig)
    assert w.done_ids() == {"a"}
    with pytest.raises(S2VTError, match=r"g000001.npz is damaged .*delete it and re-run: its videos are extracted again"):
        w.finalize()
    w.abandon()


def test_a_staged_group_with_non_finite_features_or_a_folder_for_a_group_is_named(tmp_path):
    sig = {"stream": "rgb", "dim": 4}
    w = FeatureWriter(tmp_path / "f.h5", sig, commit_videos=1)
    w.add("a", _F, _I, {"fps": 1.0})
    w.close()
    g = next(stage_dir(tmp_path / "f.h5").glob("g*.npz"))
    _rewrite_group(g, [{"kind": "video", "vid": "a", "meta": {}}], {"f0": _F * np.nan, "i0": _I})
    w = FeatureWriter(tmp_path / "f.h5", sig)
    with pytest.raises(S2VTError, match=r"g000001.npz is damaged \(non-finite features of a\); delete it and re-run"):
        w.finalize()
    w.abandon()
    assert not (tmp_path / "f.h5").exists()
    FeatureWriter(tmp_path / "f.h5", sig).close()
    g.mkdir()
    with pytest.raises(S2VTError, match=r"g000001.npz is not a group file s2vt wrote \(a folder\); move it away"):
        FeatureWriter(tmp_path / "f.h5", sig)
    assert g.is_dir()


def _die_in_a_worker(*a, **k):
    from torch.utils.data import get_worker_info

    if get_worker_info() is not None:
        os.kill(os.getpid(), signal.SIGKILL)
    yield from ()


def test_a_killed_decoding_worker_is_an_error_that_says_what_to_do(tmp_path, monkeypatch):
    import s2vt.features.pipeline as ex

    items = _videos(tmp_path / "v", 2)
    monkeypatch.setattr(ex, "video_images", _die_in_a_worker)  # forked workers inherit the patch
    with pytest.raises(S2VTError, match=r"a decoding worker died \(DataLoader worker .*\); the finished videos "
                                        r"are kept: re-run the same command to resume"):
        extract(items, tmp_path / "f.h5", ExtractConfig(**{**CFG, "workers": 1}), progress=False)


def test_a_worker_killed_while_the_cnn_computes_is_the_same_clear_error(tmp_path, monkeypatch):
    """The DataLoader's SIGCHLD handler raises wherever the main thread is (here: in a CNN batch),
    not only where it waits for the next chunk."""
    import s2vt.features.pipeline as ex
    from torch.utils.data import get_worker_info

    items = _videos(tmp_path / "v", 3)
    real_images, real_cnn = ex.video_images, ex.cnn_features
    first = items[0][0]

    def video_images(path, *a):
        if get_worker_info() is not None and Path(path).stem != first:
            time.sleep(0.3)  # the main process is inside the slow CNN batch by now
            os.kill(os.getpid(), signal.SIGKILL)
        return real_images(path, *a)

    def slow_cnn(*a):
        time.sleep(3)
        return real_cnn(*a)

    monkeypatch.setattr(ex, "video_images", video_images)  # forked workers inherit the patch
    monkeypatch.setattr(ex, "cnn_features", slow_cnn)
    t = time.monotonic()
    with pytest.raises(S2VTError, match=r"a decoding worker died \(DataLoader worker .*\); the finished videos "
                                        r"are kept: re-run the same command to resume"):
        extract(items, tmp_path / "f.h5", ExtractConfig(**{**CFG, "workers": 1, "batch_size": 1}), progress=False)
    assert time.monotonic() - t < 2.9  # raised during the CNN batch, not after it


def test_flags_give_back_the_same_feature_settings():
    from s2vt.cli.app import build_parser
    from s2vt.cli.features import extract_config

    fields = ("stream", "cnn", "layer", "stride", "num_frames", "max_frames", "input_size", "crop_ratio",
              "flow_method", "precision", "resize_with")
    for cfg in (ExtractConfig(), ExtractConfig(stream="flow", num_frames=20, max_frames=80, input_size=64,
                                               crop_ratio=1.0, flow_method="farneback", layer="logits"),
                ExtractConfig(cnn="vgg16", resize_with="opencv"), ExtractConfig(resize_with="pil")):
        back = extract_config(build_parser().parse_args(["extract", "x.avi", "--out", "o.h5", *cfg.flags().split()]))
        assert [getattr(back, f) for f in fields] == [getattr(cfg, f) for f in fields]


_UNDER_FORKSERVER = """
import multiprocessing, sys
from pathlib import Path
multiprocessing.set_start_method("forkserver")  # the default from Python 3.14 on
from s2vt.features.extract import extract
from s2vt.features.config import ExtractConfig
from s2vt.data.synth import SynthConfig, generate
out = Path(sys.argv[1])
generate(out / "data", SynthConfig(train=4, val=0, test=0, frames=12, width=64, height=48), progress=False, workers=2)
items = sorted((p.stem, p) for p in (out / "data" / "videos").iterdir())
s = extract(items, out / "f.h5", ExtractConfig(stride=4, input_size=64, crop_ratio=1.0, workers=2), progress=False)
print(s.done, s.frames, len(s.failed))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
def test_workers_run_whatever_the_interpreters_default_start_method(tmp_path):
    """Workers must be children of the run (their parent checks rely on it): under forkserver,
    they were the server's children and exited at once, so every extraction with workers failed."""
    r = subprocess.run([sys.executable, "-c", _UNDER_FORKSERVER, str(tmp_path)], capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["4", "12", "0"]
    ref = tmp_path / "ref.h5"
    items = sorted((p.stem, p) for p in (tmp_path / "data" / "videos").iterdir())
    extract(items, ref, ExtractConfig(**CFG), progress=False)
    _same_store(ref, tmp_path / "f.h5")


def test_workers_share_videos_so_a_slow_one_holds_up_nothing(tmp_path, monkeypatch):
    """Each worker takes the next untaken video and its chunks are passed on when ready: while
    one worker is stuck on a slow video, the other decodes all the rest (with a fixed share
    each, half of them waited behind the slow one)."""
    import s2vt.features.pipeline as ex

    vids = tmp_path / "v"
    _videos(vids, 9, frames=8)
    items = sorted((p.stem, p) for p in vids.iterdir())
    slow, real = items[0][0], ex.video_images

    def video_images(path, *a):
        if Path(path).stem == slow:
            time.sleep(1.5)
        return real(path, *a)

    monkeypatch.setattr(ex, "video_images", video_images)  # forked workers inherit the patch
    cfg = ExtractConfig(**{**CFG, "workers": 2})
    order = [m["vid"] for m in ex.worker_chunks(items, cfg, cfg.preprocess()) if m.get("last")]
    assert sorted(order) == [v for v, _ in items]
    assert order[-1] == slow, order


_HOLD_WRITER = """
import sys, time
from s2vt.features.store import FeatureWriter
w = FeatureWriter(sys.argv[1], {"stream": "rgb"})
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock")
def test_one_writer_per_store_and_a_killed_one_lets_the_next_in(tmp_path):
    """Two runs writing one --out at once mixed their staged videos and published wrong or
    empty stores; the second now stops at once, and a kill -9 of the first frees the store."""
    out = tmp_path / "f.h5"
    p = subprocess.Popen([sys.executable, "-c", _HOLD_WRITER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        with pytest.raises(S2VTError, match=r"another run is writing .*f.h5 \(its staging folder .*f.h5.parts is "
                                            r"locked\): wait for it to finish, or write to another --out"):
            FeatureWriter(out, {"stream": "rgb"})
    finally:
        p.kill()
        p.wait()
    w = FeatureWriter(out, {"stream": "rgb"})  # the kernel released the killed run's lock
    w.add("v", np.ones((2, 3), np.float32), np.arange(2), {"fps": 1.0})
    w.finalize()
    assert FeatureStore(out).ids == ["v"] and not stage_dir(out).exists()
    w2 = FeatureWriter(out, {"stream": "rgb"})  # a finished writer holds nothing either
    w2.close()


def test_a_refused_writer_leaves_no_staging_folder_behind(tmp_path):
    out = tmp_path / "f.h5"
    w = FeatureWriter(out, {"stream": "rgb"})
    w.add("v", np.ones((2, 3), np.float32), np.arange(2), {"fps": 1.0})
    w.finalize()
    with pytest.raises(SignatureMismatch):
        FeatureWriter(out, {"stream": "flow"})
    assert not stage_dir(out).exists()


def test_more_workers_than_cores_is_one_warning(tmp_path, monkeypatch, recwarn):
    import s2vt.features.pipeline as ex

    monkeypatch.setattr(ex, "usable_cores", lambda: 1)
    items = _videos(tmp_path / "v", 2)
    extract(items, tmp_path / "f.h5", ExtractConfig(**{**CFG, "workers": 2}), progress=False)
    said = [str(w.message) for w in recwarn if "worker" in str(w.message)]
    assert said == ["--workers 2: more decoding processes than the cores this run may use (1); they will take turns on them"]


def test_cli_failed_videos_and_the_merge_warning_are_lines_on_stderr(tmp_path, capsys):
    from s2vt.cli.app import main

    d = tmp_path / "v"
    _videos(d, 2)
    (d / "bad.avi").write_text("not a video\n")
    out = tmp_path / "a.h5"
    flags = ["--quiet", "--stride", "4", "--input-size", "64", "--workers", "0"]
    assert main(["extract", str(d), "--out", str(out), *flags]) == 1
    said = capsys.readouterr()
    assert len(said.out.splitlines()) == 1 and said.out.startswith("extracted 2 videos (")
    assert said.out.rstrip().endswith(f"skipped 0 already done, failed 1 -> {out}")
    assert said.err.splitlines() == [f"s2vt extract: failed: bad: cannot open: not a video, or a codec OpenCV lacks: "
                                     f"{d / 'bad.avi'}"]
    assert main(["extract", str(d / "v0.avi"), "--out", str(tmp_path / "s.h5"), "--shard", "0/2", *flags]) == 0
    capsys.readouterr()
    assert main(["merge-features", str(tmp_path / "m.h5"), str(tmp_path / "s.shard0of2.h5")]) == 0
    said = capsys.readouterr()
    assert said.out.splitlines() == [f"merged 1 stores into {tmp_path / 'm.h5'}"]
    assert said.err.splitlines() == ["[s2vt] warning: merging without shard(s) 1/2: their videos will be absent"]
