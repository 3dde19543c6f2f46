"""Decoding workers start whatever the parent process has done with OpenCV: a notebook that
resized one image (which starts OpenCV's thread pool) must still be able to extract with workers."""
import subprocess
import sys

import h5py

PARENT = """
import sys
import cv2
import numpy as np
cv2.setNumThreads(2)
cv2.resize(np.zeros((1500, 1500, 3), np.uint8), (700, 700))  # starts OpenCV's thread pool in this process
import s2vt
r = s2vt.extract_features(sys.argv[1], sys.argv[2], workers=1, stride=4)
print("done", r.done, len(r.failed))
print("threads", cv2.getNumThreads())
"""


def test_extraction_with_workers_finishes_after_opencv_ran_in_the_parent(tiny_synth, tmp_path):
    root, cfg = tiny_synth
    out = tmp_path / "f.h5"
    p = subprocess.run([sys.executable, "-c", PARENT, str(root / "videos"), str(out)],
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    n = cfg.train + cfg.val + cfg.test
    assert p.stdout.split("\n")[:2] == [f"done {n} 0", "threads 2"]  # every video, and the parent's setting kept
    with h5py.File(out, "r") as f:
        assert len(f["videos"]) == n
