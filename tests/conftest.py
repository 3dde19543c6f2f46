import os
from pathlib import Path

# One process per core: pytest-xdist runs a worker per core, so each worker (and the commands it
# starts) computes on its share of the cores. More threads than cores makes torch's OpenMP threads
# spin against each other: a small model's training step then costs ten times its CPU time.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("S2VT_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def msvd_dir():
    d = shared_dir() / "data" / "msvd"
    if not (d / "youtube_mapping.txt").exists():
        pytest.skip(f"MSVD caption files not found at {d} (set S2VT_SHARED to the shared/ folder)")
    return d


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory):
    """A small embedded dataset written once per test session."""
    from s2vt.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(train=12, val=4, test=4, frames=16, width=64, height=48, seed=3)
    generate(out, cfg, progress=False)
    return out, cfg


@pytest.fixture(scope="session")
def tiny_features(tiny_synth, tmp_path_factory):
    """RGB and flow feature stores of the tiny dataset (EfficientNet-Lite0 at 64 px)."""
    from s2vt.data.corpora import load_corpus
    from s2vt.features.extract import extract
    from s2vt.features.config import ExtractConfig

    root, _ = tiny_synth
    corpus = load_corpus("synthetic", root)
    items = [(v, corpus.video_path(v)) for ids in corpus.splits.values() for v in ids]
    out = tmp_path_factory.mktemp("feats")
    stores = {}
    for stream in ("rgb", "flow"):
        cfg = ExtractConfig(stream=stream, stride=4, input_size=64, crop_ratio=1.0, workers=0)
        stores[stream] = out / f"{stream}.h5"
        s = extract(items, stores[stream], cfg, progress=False)
        assert s.done == len(items) and not s.failed
    return root, stores
