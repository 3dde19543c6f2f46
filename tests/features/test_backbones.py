import numpy as np
import pytest
import torch

from s2vt.features.backbones.registry import Backbone, resolve_weights
from s2vt.features.backbones.spec import Preprocess, normalize, prepare
from s2vt.runtime.errors import S2VTError, WeightsNotFound


def _frames():
    """Natural-ish RGB frames: smooth colour gradients and blobs (no network, no files)."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(6):
        y, x = np.mgrid[0:240, 0:320] / 50.0
        img = np.stack([np.sin(x * (k + 1)) , np.cos(y * (k + 2)), np.sin(x + y + k)], -1)
        img = ((img + 1) * 127.5).astype(np.uint8)
        cy, cx = rng.integers(40, 200), rng.integers(40, 280)
        img[cy - 30:cy + 30, cx - 30:cx + 30] = rng.integers(0, 255, 3)
        out.append(img)
    return out


def test_lite0_matches_reference_implementation():
    """Our EfficientNet-Lite0 equals the efficientnet-lite-pytorch reference on the same weights."""
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch", reason="reference package (test extra) not installed")
    ours = Backbone("efficientnet_lite0", layer="logits")
    path = resolve_weights("efficientnet_lite0", None)
    ref = ref_pkg.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path))
    ref.eval()
    x = torch.from_numpy(np.stack([prepare(f, ours.preprocess) for f in _frames()]))
    with torch.inference_mode():
        a = ours(x)
        b = ref(normalize(x, ours.preprocess))
    assert a.shape == (6, 1000)
    assert torch.equal(a.argmax(1), b.argmax(1))  # same top-1 class on every frame
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_pool_features_shape_and_determinism():
    b = Backbone()
    assert b.dim == 1280 and b.signature()["weights_digest"]
    x = torch.from_numpy(np.stack([prepare(f, Preprocess(size=96, mean=(0.5,) * 3, std=(0.5,) * 3)) for f in _frames()[:2]]))
    with torch.inference_mode():
        f1, f2 = b(x), b(x)
    assert f1.shape == (2, 1280) and torch.isfinite(f1).all() and torch.equal(f1, f2)
    assert (f1 >= 0).all()  # after ReLU6 and averaging


def test_prepare_resizes_and_centre_crops():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 100:] = 255
    out = prepare(img, Preprocess(size=64, crop_ratio=0.5))  # short side -> 128, crop 64 from the centre
    assert out.shape == (3, 64, 64)
    assert out[:, :, :31].max() == 0 and out[:, :, 33:].min() == 255


@pytest.mark.parametrize("name,file", [("vgg16", "vgg16-397923af.pth"), ("alexnet", "alexnet-owt-7be5be79.pth"),
                                       ("resnet152", "resnet152-394f9c45.pth")])
def test_paper_backbones_name_missing_file(name, file, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFound, match=f"{file}.*Nothing is downloaded"):
        Backbone(name)
    with pytest.raises(WeightsNotFound, match="not found: .*nope.pth"):
        Backbone(name, weights=str(tmp_path / "nope.pth"))


def test_vgg16_fc7_from_local_weights_file(tmp_path):
    """The paper's backbone loads from a local file and gives 4096-d fc7 (random weights saved locally)."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), path)
    b = Backbone("vgg16", weights=str(path), preprocess=Preprocess(size=64))
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        y = b(x)
        c = b.net.classifier  # fc6, ReLU, dropout, fc7, ReLU, ...
        fc6 = torch.relu(c[0](torch.flatten(b.net.avgpool(b.net.features(normalize(x, b.preprocess))), 1)))
        fc7 = torch.relu(c[3](fc6))
    assert y.shape == (2, 4096) and (y >= 0).all()  # fc7 after its ReLU
    torch.testing.assert_close(y, fc7)  # fc7, not fc6


def test_alexnet_fc6_head_built_once_equals_the_torchvision_layers(tmp_path):
    """The head runs features -> avgpool -> fc6 -> ReLU (no dropout); forward builds nothing."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    b = Backbone("alexnet", layer="fc6", weights=str(path), preprocess=Preprocess(size=64))
    modules = list(b.modules())
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        y = b(x)
        net = b.net
        z = torch.relu(net.classifier[1](torch.flatten(net.avgpool(net.features(normalize(x, b.preprocess))), 1)))
    assert y.shape == (2, 4096) and list(b.modules()) == modules
    torch.testing.assert_close(y, z)


@pytest.mark.parametrize("kw,match", [(dict(size=8), "--input-size"), (dict(crop_ratio=1.5), "--crop-ratio"),
                                      (dict(crop_ratio=0), "--crop-ratio")])
def test_preprocess_validates(kw, match):
    with pytest.raises(S2VTError, match=match):
        Preprocess(**kw)


def test_backbone_refuses_unknown_name_layer_and_too_small_input():
    with pytest.raises(S2VTError, match="--cnn 'vgg17'"):
        Backbone("vgg17")
    with pytest.raises(S2VTError, match="--layer 'fc9'"):
        Backbone("efficientnet_lite0", layer="fc9")
    with pytest.raises(S2VTError, match="--input-size 32: alexnet needs at least 63"):
        Backbone("alexnet", preprocess=Preprocess(size=32))
