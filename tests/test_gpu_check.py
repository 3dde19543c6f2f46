"""scripts/gpu_check.sh runs on the CPU (the CPU against itself) so that it cannot rot, and the
GPU scripts keep their promises: a failed bench is recorded as JSON, benches time the device they use."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_check_on_the_cpu(tmp_path):
    from s2vt.apps.gpu_check import CHECKS

    env = dict(os.environ, DEVICE="cpu", QUICK="1", OUT=str(tmp_path), PYTHON=sys.executable)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["device"].startswith("cpu") and report["torch"]
    assert set(report["checks"]) == set(CHECKS)
    assert all(c["pass"] for c in report["checks"].values())
    ran = {k for k, c in report["checks"].items() if not c.get("skipped")}
    assert ran == set(CHECKS) - {"train_amp"}  # the one that needs CUDA
    assert report["checks"]["extract_raft"]["detail"]["frames"] > 0
    assert report["checks"]["train_fp32"]["detail"]["max_rel_loss_diff"] == 0.0  # the CPU against itself
    assert report["checks"]["bank_paths"]["detail"]["paths"]["store"] == "store"


def test_gpu_benchmarks_records_a_failed_run_as_json(tmp_path):
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nprintf \'Traceback\\nRuntimeError: cannot pin "x" \\\\ here\\n\' >&2\nexit 1\n')
    fake.chmod(0o755)
    env = dict(os.environ, DEVICE="cpu", QUICK="1", OUT=str(tmp_path / "out"), PYTHON=str(fake))
    subprocess.run(["bash", str(ROOT / "scripts" / "gpu_benchmarks.sh")], env=env, capture_output=True, timeout=60)
    files = sorted((tmp_path / "out").glob("*.json"))
    assert len(files) >= 6
    for f in files:
        rec = json.loads(f.read_text())
        assert rec["rc"] == 1 and rec["error"] == 'RuntimeError: cannot pin "x" \\ here', f.name


def test_no_cuda_synchronize_without_its_device():
    """torch.cuda.synchronize() waits for the current device only: timing cuda:1 with it is wrong."""
    bare = [f"{p.relative_to(ROOT)}:{i}" for p in [*ROOT.glob("s2vt/*.py"), *ROOT.glob("scripts/*.py")]
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"cuda\.synchronize\(\s*\)", line)]
    assert not bare
