"""What is not ours is never touched: one writer per run folder, scratch names no user file can
have, a staging folder used and removed only when s2vt made it, synth removing only its own
clips, full disks and stop signals ending in one line."""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from s2vt.runtime.errors import S2VTError
from s2vt.runtime.fileio import SCRATCH_SUFFIX, atomic_write, folder_lock, write_json

from videos import moving_square, write

HOLD = """
import sys, time
from s2vt.runtime.fileio import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _s2vt(*args, **kw):
    return subprocess.run([sys.executable, "-m", "s2vt", *map(str, args)], capture_output=True, text=True, **kw)


def test_a_run_folder_has_one_writer_and_a_killed_one_lets_the_next_in(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t = time.perf_counter()
        r = _s2vt("train", "--dataset", "synthetic", "--annotations", tmp_path / "nowhere", "--features", tmp_path / "f.h5",
                  "--out", run)
        assert r.returncode == 2 and time.perf_counter() - t < 30
        assert r.stderr.strip() == (f"s2vt train: error: another run is writing {run} (it holds the folder's lock): "
                                    "wait for it to finish, or choose another --out")
        with pytest.raises(S2VTError, match="another run is writing"):
            with folder_lock(run):
                pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(run) as held:  # the kernel released the killed holder's lock
        assert held == run
    assert run.is_dir()  # not created by the last holder: kept
    with folder_lock(tmp_path / "fresh"):
        pass
    assert not (tmp_path / "fresh").exists()  # created by this lock and left empty: removed


def test_folder_lock_keeps_a_folder_it_did_not_create_and_refuses_a_file(tmp_path):
    with folder_lock(tmp_path):
        pass
    assert tmp_path.is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(S2VTError, match="is a file, not a folder"):
        with folder_lock(tmp_path / "f"):
            pass


def test_atomic_writes_never_touch_a_users_tmp_file_and_leave_no_scratch(tmp_path):
    out = tmp_path / "results.json"
    mine = {out.with_name("results.json.tmp"): b"user data 1", tmp_path / "last.pt.tmp": b"user data 2"}
    for p, data in mine.items():
        p.write_bytes(data)
    write_json({"a": 1}, out)
    atomic_write(tmp_path / "last.pt", b"checkpoint")
    with pytest.raises(ValueError):
        atomic_write(out, lambda f: (_ for _ in ()).throw(ValueError("half-way")))
    assert {p: p.read_bytes() for p in mine} == mine
    assert out.read_text().strip().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert not list(tmp_path.glob(f"*{SCRATCH_SUFFIX}")) and not list(tmp_path.glob(f".*{SCRATCH_SUFFIX}"))
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # the usual mode of a new file, not mkstemp's 0600


def test_a_full_disk_names_the_target_and_keeps_the_previous_file(tmp_path, monkeypatch):
    out = tmp_path / "metrics.json"
    out.write_text("previous")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        write_json({"x": 1}, out)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out)
    assert out.read_text() == "previous" and len(list(tmp_path.iterdir())) == 1


def test_a_checkpoint_writer_failing_on_a_full_disk_is_an_os_error_naming_the_checkpoint(tmp_path):
    out = tmp_path / "last.pt"

    def torch_save_on_a_full_disk(f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1088 vs 1000")

    with pytest.raises(OSError, match="is the disk full") as e:
        atomic_write(out, torch_save_on_a_full_disk)
    assert e.value.filename == str(out) and not list(tmp_path.iterdir())


def _clips(folder: Path) -> Path:
    folder.mkdir()
    write(folder / "a.avi", moving_square(n=6, seed=1))
    return folder


def test_a_users_folder_named_like_the_staging_folder_is_refused_and_kept(tmp_path, capsys):
    from s2vt.cli.app import main

    videos = _clips(tmp_path / "v")
    out = tmp_path / "f.h5"
    parts = tmp_path / "f.h5.parts"
    parts.mkdir()
    (parts / "notes.txt").write_text("mine")
    argv = ["extract", str(videos), "--out", str(out), "--input-size", "32", "--workers", "0", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "holds files s2vt did not write (notes.txt)" in err
    assert (parts / "notes.txt").read_text() == "mine" and not out.exists()
    (parts / "notes.txt").unlink()
    (parts / "mine").mkdir()
    assert main(argv) == 2 and (parts / "mine").is_dir()
    (parts / "mine").rmdir()  # an empty folder of that name is used, then removed with the run's files
    assert main(argv) == 0, capsys.readouterr().err
    assert out.is_file() and not parts.exists()


def test_synth_overwrite_removes_only_the_clips_it_wrote(tmp_path):
    from s2vt.data.synth import SynthConfig, generate

    d = tmp_path / "ds"
    cfg = SynthConfig(train=2, val=1, test=1, frames=6, width=48, height=32, seed=1)
    generate(d, cfg, progress=False, workers=1)
    mine = {d / "videos" / "clip00099.avi": b"my own clip", d / "videos" / "clip00001.part.mp4": b"mine too",
            d / "notes.md": b"notes"}
    for p, data in mine.items():
        p.write_bytes(data)
    generate(d, SynthConfig(train=1, val=1, test=1, frames=6, width=48, height=32, seed=2), progress=False,
             workers=1, overwrite=True)
    assert {p: p.read_bytes() for p in mine} == mine
    assert sorted(p.name for p in (d / "videos").glob("clip0000?.avi")) == ["clip00000.avi", "clip00001.avi",
                                                                          "clip00002.avi"]


def test_synth_refuses_to_publish_a_clip_that_was_not_written_whole(tmp_path, monkeypatch):
    import cv2

    from s2vt.data.synth import write_video

    real = cv2.VideoWriter

    class Lossy:  # what a full disk does to OpenCV: frames vanish without an error
        def __init__(self, *a):
            self.w, self.n = real(*a), 0

        def isOpened(self):
            return self.w.isOpened()

        def write(self, f):
            self.n += 1
            if self.n < 3:
                self.w.write(f)

        def release(self):
            self.w.release()

    monkeypatch.setattr(cv2, "VideoWriter", Lossy)
    with pytest.raises(OSError, match="not written completely") as e:
        write_video(tmp_path / "clip00000.avi", np.zeros((5, 24, 32, 3), np.uint8), 10.0)
    assert e.value.filename == str(tmp_path / "clip00000.avi") and not list(tmp_path.iterdir())


@pytest.mark.parametrize("sig,code,name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGHUP, 129, "SIGHUP")])
def test_sigterm_and_sighup_end_a_command_with_one_line(tmp_path, sig, code, name):
    p = subprocess.Popen([sys.executable, "-c",
                          "import sys, time, s2vt.cli.app as c\n"
                          "orig = c.build_parser\n"
                          "def bp():\n"
                          "    p = orig()\n"
                          "    a = p.parse_args(['dataset-info', 'synthetic', '--root', '.'])\n"
                          "    a.fn = lambda a: (print('ready', flush=True), time.sleep(60))\n"
                          "    p.parse_args = lambda argv=None: a\n"
                          "    return p\n"
                          "c.build_parser = bp\n"
                          "sys.exit(c.main())\n"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    assert p.returncode == code
    assert err.strip().splitlines() == [f"s2vt dataset-info: stopped by {name} (nothing was left half-written)"]


HOLD_FILE = """
import sys, time
from s2vt.runtime.fileio import file_lock
with file_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_an_output_file_has_one_writer_and_its_lock_file_goes_with_the_run(tmp_path, capsys):
    from s2vt.cli.app import main

    out = tmp_path / "ev.json"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_FILE, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["evaluate", "--dataset", "synthetic", "--annotations", str(tmp_path / "nowhere"),
                     "--checkpoint", str(tmp_path / "nowhere.pt"), "--features", str(tmp_path / "f.h5"),
                     "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip() == (f"s2vt evaluate: error: another run is writing {out} (it holds "
                                                   ".ev.json.s2vt-lock): wait for it to finish, or choose another --out")
        assert main(["merge-features", str(out), str(tmp_path / "a.h5")]) == 2
        assert "another run is writing" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / ".ev.json.s2vt-lock").exists()  # the killed holder's, released by the kernel
    assert main(["merge-features", str(out), str(tmp_path / "a.h5")]) == 2  # the lock is free: the real error
    assert "another run" not in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # a finished holder removes its lock file


def test_output_folders_of_benchmark_synth_and_demo_are_locked(tmp_path, capsys):
    from s2vt.cli.app import main
    from s2vt.runtime.fileio import folder_lock

    with folder_lock(tmp_path / "ds"):
        assert main(["synth", str(tmp_path / "ds"), "--train", "1", "--val", "1", "--test", "1"]) == 2
        assert "another run is writing" in capsys.readouterr().err
    with folder_lock(tmp_path / "wd"):
        assert main(["demo", "--workdir", str(tmp_path / "wd")]) == 2
        assert "another run is writing" in capsys.readouterr().err


def test_synth_never_writes_over_a_users_file_under_a_name_the_dataset_needs(tmp_path, capsys):
    from s2vt.cli.app import main
    from s2vt.data.synth import SynthConfig, generate

    d = tmp_path / "ds"
    generate(d, SynthConfig(train=1, val=1, test=1, frames=6, width=48, height=32, seed=1), progress=False, workers=1)
    mine = d / "videos" / "clip00004.avi"
    mine.write_bytes(b"my clip")
    assert main(["synth", str(d), "--train", "3", "--val", "1", "--test", "1", "--frames", "6", "--width", "48",
                 "--height", "32", "--workers", "1", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"{mine} exists and was not written by `s2vt synth`" in err and len(err.strip().splitlines()) == 1
    assert mine.read_bytes() == b"my clip"


def test_evaluate_locks_its_default_output_next_to_the_checkpoint(tiny_features, tmp_path, capsys):
    from s2vt.cli.app import main
    from s2vt.runtime.fileio import file_lock

    root, stores = tiny_features
    run = tmp_path / "run"
    assert main(["train", "--dataset", "synthetic", "--annotations", str(root), "--features", str(stores["rgb"]),
                 "--out", str(run), "--max-steps", "1", "--batch-size", "4", "--no-val-meteor", "--embed", "8",
                 "--hidden", "8", "--quiet"]) == 0
    capsys.readouterr()
    argv = ["evaluate", "--dataset", "synthetic", "--annotations", str(root), "--checkpoint", str(run / "best.pt"),
            "--features", str(stores["rgb"]), "--split", "test", "--beam", "1", "--quiet"]
    with file_lock(run / "eval_test_beam1.json"):
        assert main(argv) == 2
        assert "another run is writing" in capsys.readouterr().err
    assert main(argv) == 0, capsys.readouterr().err
    assert (run / "eval_test_beam1.json").is_file() and not list(run.glob(".*s2vt-lock"))


def test_a_failed_evaluate_or_report_leaves_no_new_folder(tmp_path, capsys):
    from s2vt.cli.app import main

    out = tmp_path / "new" / "deeper"
    assert main(["report", str(tmp_path / "missing.json"), "--out", str(out / "r.html")]) != 0
    assert main(["evaluate", "--dataset", "synthetic", "--annotations", str(tmp_path), "--checkpoint",
                 str(tmp_path / "missing.pt"), "--features", str(tmp_path / "f.h5"), "--out", str(out / "e.json")]) != 0
    assert not (tmp_path / "new").exists()
