"""Learned optical flow (--flow-method raft_small|raft_large): torchvision's RAFT on the
extraction device, with weight files of randomly initialised models written here."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from s2vt.runtime.errors import S2VTError, WeightsNotFound
from s2vt.video.flow import flow_to_image
from s2vt.features.raft import LearnedFlow, flow_images, resolve_flow_weights

from videos import moving_square, write
from commands import s2vt_in_process


@pytest.fixture(scope="module")
def raft_weights(tmp_path_factory):
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("raft") / "raft_small.pth"
    torch.save(raft_small(weights=None).state_dict(), path)
    return path


def test_flow_images_encode_as_opencvs_flow_images():
    rng = np.random.default_rng(0)
    flow = (rng.standard_normal((2, 16, 24)) * 9).astype(np.float32)
    flow[0, 0, 0], flow[1, 0, 1] = 40.0, -40.0  # saturating both ways
    ours = flow_images(torch.from_numpy(flow)[None])[0].numpy()
    theirs = flow_to_image(flow.transpose(1, 2, 0)).transpose(2, 0, 1)
    assert ours.dtype == np.uint8 and ours[0, 0, 0] == 255 and ours[1, 0, 1] == 0
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1  # rounding of exact halves only
    assert (ours == theirs).mean() > 0.99


def test_raft_small_extracts_flow_features_on_the_cpu_and_caption_recomputes_them(tmp_path, raft_weights):
    from s2vt.captioning.videos import VideoFeatures
    from s2vt.features.extract import extract, video_items
    from s2vt.features.config import ExtractConfig
    from s2vt.features.store import FeatureStore

    (tmp_path / "v").mkdir()
    write(tmp_path / "v" / "right.avi", moving_square(n=9, dx=3, seed=1))
    write(tmp_path / "v" / "left.avi", moving_square(n=9, dx=-3, seed=2))
    out = tmp_path / "raft.h5"
    r = s2vt_in_process("extract", tmp_path / "v", "--stream", "flow", "--flow-method", "raft_small", "--flow-weights",
                        raft_weights, "--out", out, "--stride", "4", "--input-size", "128", "--crop-ratio", "1",
                        "--workers", "1")
    assert r.returncode == 0, r.stderr
    store = FeatureStore(out)
    sig = store.signature
    assert sig["flow"]["method"] == "raft_small" and len(sig["flow"]["weights_digest"]) == 16
    assert store.features("right").shape == (3, 1280) and np.isfinite(store.features("right")).all()
    assert not np.allclose(store.features("right"), store.features("left"))
    # the same network in process, with the worker's pairs: the same bits
    cfg = ExtractConfig(stream="flow", flow_method="raft_small", flow_weights=str(raft_weights), stride=4,
                        input_size=128, crop_ratio=1.0, workers=0)
    s = extract(video_items([tmp_path / "v"]), tmp_path / "again.h5", cfg, progress=False)
    assert s.done == 2
    np.testing.assert_array_equal(FeatureStore(tmp_path / "again.h5").features("left"), store.features("left"))
    ck = SimpleNamespace(feature_signature=sig, max_frames=0)
    feats = VideoFeatures(ck, flow_weights=str(raft_weights))(tmp_path / "v" / "right.avi")
    np.testing.assert_array_equal(feats.numpy(), store.features("right"))
    other = tmp_path / "other.pth"
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(1)
    torch.save(raft_small(weights=None).state_dict(), other)
    with pytest.raises(S2VTError, match="--flow-weights"):
        VideoFeatures(ck, flow_weights=str(other))


def test_raft_weights_missing_or_of_another_model_are_named(tmp_path, monkeypatch, raft_weights):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFound, match=r"--flow-weights.*raft_small_C_T_V2-01064c6d.pth.*--download"):
        resolve_flow_weights("raft_small")
    with pytest.raises(WeightsNotFound, match=r"raft_small.pth does not fit raft_large .*missing|another shape"):
        LearnedFlow("raft_large", str(raft_weights))


def test_raft_needs_an_input_size_divisible_by_8_and_at_least_128():
    from s2vt.features.config import ExtractConfig

    for size in (132, 120):
        with pytest.raises(S2VTError, match=f"--input-size {size}: RAFT .* divisible by 8 and at least 128"):
            ExtractConfig(stream="flow", flow_method="raft_small", input_size=size)
    ExtractConfig(stream="flow", flow_method="dis", input_size=60)  # the RAFT rule holds for RAFT only
    for kw, flag in [(dict(stream="rgb", flow_method="raft_small"), "--flow-method"),  # given where they do not apply
                     (dict(stream="rgb", flow_weights="r.pth"), "--flow-weights"),
                     (dict(stream="flow", flow_method="dis", flow_weights="r.pth"), "--flow-weights")]:
        with pytest.raises(S2VTError, match=f"{flag} .* applies only with --stream flow"):
            ExtractConfig(**kw)
