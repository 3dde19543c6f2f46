"""scripts/gpu_check.sh runs on the CPU (the CPU against itself) so that it cannot rot, and the
GPU scripts keep their promises: a failed bench is recorded as JSON, benches time the device they use."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_every_check_on_the_cpu_and_each_makes_what_it_reads(tmp_path):
    """Every check, in reverse order: a check that read what a check before it wrote would run first, and
    fail; so each one also runs alone (--only)."""
    from s2vt.apps.gpu_check import CHECKS

    env = dict(os.environ, DEVICE="cpu", QUICK="1", OUT=str(tmp_path), PYTHON=sys.executable)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--only", *reversed(list(CHECKS))], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ran_in = [line.split()[1] for line in r.stdout.splitlines() if line.startswith(("ok  ", "FAIL"))]
    assert ran_in == list(reversed(list(CHECKS)))
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["device"].startswith("cpu") and report["torch"]
    assert set(report["checks"]) == set(CHECKS) >= {"train_attention", "train_scst", "train_shuffle_frames",
                                                    "caption_attention"}
    assert all(c["pass"] for c in report["checks"].values())
    ran = {k for k, c in report["checks"].items() if not c.get("skipped")}
    assert ran == set(CHECKS) - {"train_amp"}  # the one that needs CUDA
    checks = {k: c["detail"] for k, c in report["checks"].items()}
    assert checks["extract_raft"]["frames"] > 0
    assert checks["train_fp32"]["max_rel_loss_diff"] == 0.0  # the CPU against itself
    assert checks["train_attention"]["max_rel_loss_diff"] == 0.0 and checks["train_attention"]["steps"] == 4
    assert checks["train_scst"]["steps"] == 4 and checks["train_scst"]["first_greedy_reward_rel_diff"] == 0.0
    assert checks["caption_attention"]["words"] > 0 and checks["caption_attention"]["max_weight_diff"] == 0.0
    assert checks["bank_paths"]["paths"]["store"] == "store"
    # a CPU computes and records fp32 whatever --precision says
    assert checks["extract_bf16"]["recorded"] == "fp32" and checks["extract_bf16"]["conv_out"] == ["float32"]


def _fake_tools(tmp_path: Path, java: bool) -> Path:
    """A PATH of the tools gpu_check.sh uses, no Java unless ``java``, as a user that is not root."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in ("bash", "dirname", "mkdir"):
        (bin_ / tool).symlink_to(subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True,
                                                text=True).stdout.strip())
    fakes = {"id": "echo 1000", "python": f'echo "$@" > {tmp_path / "ran"}'}
    if java:
        fakes["java"] = "exit 0"
    for name, body in fakes.items():
        (bin_ / name).write_text(f"#!{bin_ / 'bash'}\n{body}\n")
        (bin_ / name).chmod(0o755)
    return bin_


def test_gpu_check_finds_java_or_says_how_to_install_it(tmp_path):
    for java in (False, True):
        work = tmp_path / str(java)
        work.mkdir()
        bin_ = _fake_tools(work, java)
        env = {"PATH": str(bin_), "DEVICE": "cpu", "OUT": str(work / "out"), "PYTHON": str(bin_ / "python")}
        r = subprocess.run([str(bin_ / "bash"), str(ROOT / "scripts" / "gpu_check.sh")], env=env,
                           capture_output=True, text=True, timeout=60)
        if java:
            assert r.returncode == 0 and "-m s2vt.apps.gpu_check --device cpu" in (work / "ran").read_text()
        else:
            assert r.returncode == 1 and "no Java runtime found" in r.stderr and not (work / "ran").exists()


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
