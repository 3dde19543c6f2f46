"""Each backbone family's features equal its reference library's on the same pictures: per image,
cosine >= 0.9999 between s2vt's feature and ``model(reference_transform(PIL image))``, on real
photographs (scikit-image's sample images) and on the frames of a video s2vt decodes itself
(larger than the 256-pixel shrink the OpenCV path applies). The networks are randomly initialised
and their weights written here; the references are open_clip (CLIP), timm's ``create_transform``
and torchvision's ``weights.transforms()``. The OpenCV path, on the same pictures, is measurably
farther from each reference: the comparison can fail."""
import cv2
import numpy as np
import pytest
import torch

from s2vt.features.backbones.spec import prepare
from s2vt.features.config import ExtractConfig

from videos import write

timm = pytest.importorskip("timm")
skdata = pytest.importorskip("skimage.data")
Image = pytest.importorskip("PIL.Image")
COS = 0.9999


@pytest.fixture(scope="module")
def photos():
    return {name: np.ascontiguousarray(getattr(skdata, name)()) for name in ("astronaut", "chelsea", "coffee")}


@pytest.fixture(scope="module")
def video(photos, tmp_path_factory):
    """A pan over a photograph, 288x384 (short side above 256), as MJPG; decoded by the test with OpenCV."""
    big = photos["coffee"]  # 400 x 600
    frames = [np.ascontiguousarray(big[40 + 8 * t:328 + 8 * t, 20 + 30 * t:404 + 30 * t, ::-1]) for t in range(6)]
    return write(tmp_path_factory.mktemp("pan") / "pan.avi", frames)


def _decoded(path, indices):
    cap, out, i = cv2.VideoCapture(str(path)), {}, 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i in indices:
            out[i] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        i += 1
    cap.release()
    return [out[i] for i in indices]


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(torch.as_tensor(a), torch.as_tensor(b), dim=1)


def _ours(backbone, images, pre):
    x = torch.from_numpy(np.stack([prepare(img, pre) for img in images]))
    with torch.inference_mode():
        return backbone(x)


def _check(cfg: ExtractConfig, reference, photos, video, tmp_path):
    """s2vt's features against ``reference`` (PIL image -> (D,) feature) on the photos and on the frames of
    ``video`` as s2vt's extraction stores them; returns the OpenCV path's cosines on the photos."""
    from s2vt.features.extract import extract
    from s2vt.features.store import FeatureStore

    backbone = cfg.network()
    pre = cfg.preprocess()
    assert pre.method == "pil"
    images = list(photos.values())
    with torch.inference_mode():
        ref = torch.stack([reference(Image.fromarray(img)) for img in images])
    cos = _cos(_ours(backbone, images, pre), ref)
    assert cos.min() >= COS, cos
    s = extract([("pan", str(video))], tmp_path / "f.h5", cfg, backbone=backbone, progress=False)
    assert s.done == 1 and not s.failed
    store = FeatureStore(tmp_path / "f.h5")
    assert store.signature["preprocess"]["method"] == "pil" and store.signature["sampling"]["short_side"] == 0
    idx = [int(i) for i in store.frame_indices("pan")]
    assert idx == [0, 2, 4]
    with torch.inference_mode():
        ref_frames = torch.stack([reference(Image.fromarray(f)) for f in _decoded(video, idx)])
    cos = _cos(store.features("pan"), ref_frames)
    assert cos.min() >= COS, cos
    old = ExtractConfig(cnn=cfg.cnn, layer=cfg.layer, weights=cfg.weights, resize_with="opencv").preprocess()
    return _cos(_ours(backbone, images, old), ref)


def test_clip_equals_open_clip_encode_image_of_its_own_preprocess(photos, video, tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32-quickgelu", pretrained=None)
    model.eval()
    w = tmp_path / "clip_b32_visual.safetensors"  # open_clip's image tower as saved from model.visual
    save_file({k: v.contiguous() for k, v in model.visual.state_dict().items()}, str(w))
    cfg = ExtractConfig(cnn="timm:vit_base_patch32_clip_quickgelu_224.openai", weights=str(w), stride=2, workers=0)
    old = _check(cfg, lambda img: model.encode_image(preprocess(img)[None])[0], photos, video, tmp_path)
    assert old.min() < COS  # OpenCV's bicubic is not PIL's antialiased one


def test_timm_cnn_equals_timm_create_transform(photos, video, tmp_path):
    from timm.data import create_transform, resolve_data_config

    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    w = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), w)
    transform = create_transform(**resolve_data_config({}, model=net))
    cfg = ExtractConfig(cnn="timm:resnet18", weights=str(w), stride=2, workers=0)
    old = _check(cfg, lambda img: net(transform(img)[None])[0], photos, video, tmp_path)
    assert old.min() < COS


def test_torchvision_cnn_equals_its_weights_transforms(photos, video, tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.alexnet(weights=None).eval()
    w = tmp_path / "alexnet.pth"
    torch.save(net.state_dict(), w)
    transform = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.transforms()  # no download: a transform only
    fc7 = {}
    net.classifier[5].register_forward_hook(lambda m, i, o: fc7.update(out=o))  # the ReLU after fc7

    def reference(img):
        net(transform(img)[None])
        return fc7["out"][0]

    cfg = ExtractConfig(cnn="alexnet", weights=str(w), stride=2, workers=0)
    old = _check(cfg, reference, photos, video, tmp_path)
    assert old.min() < COS


def test_preprocess_of_each_family_is_its_reference_librarys():
    """The parameters each family's PIL path runs with are the reference's own."""
    import torchvision
    from timm.data import resolve_data_config

    tv = torchvision.models.ResNet152_Weights.IMAGENET1K_V1.transforms()
    pre = ExtractConfig(cnn="resnet152").preprocess()
    assert (pre.size, pre.resize_side()) == (tv.crop_size[0], tv.resize_size[0]) == (224, 256)
    assert pre.mean == tuple(tv.mean) and pre.std == tuple(tv.std) and pre.interpolation == "auto"  # bilinear
    with torch.device("meta"):
        data = resolve_data_config({}, model=timm.create_model("convnext_tiny"))
    pre = ExtractConfig(cnn="timm:convnext_tiny").preprocess()
    assert pre.resize_side() == int(224 / data["crop_pct"]) == 235 and pre.interpolation == data["interpolation"]
    clip = ExtractConfig(cnn="timm:vit_base_patch16_clip_quickgelu_224.openai").preprocess()
    assert (clip.resize_side(), clip.interpolation, clip.crop_mode) == (224, "bicubic", "center")
    tuned = ExtractConfig(cnn="timm:vit_base_patch16_clip_224.openai_ft_in1k").preprocess()
    assert tuned.crop_ratio == 0.9  # fine-tuned on ImageNet with timm: timm's transform
    lite0 = ExtractConfig().preprocess()
    assert lite0.method == "opencv" and ExtractConfig().sampling().short_side == 256


def test_a_store_made_before_the_method_was_recorded_is_recomputed_the_old_way(video, tmp_path):
    """A timm store whose signature has no preprocess.method (the OpenCV path, frames shrunk to 256 px, timm's
    crop_pct 0.9 for CLIP) reads back as it was made: caption recomputes the same features."""
    from types import SimpleNamespace

    from s2vt.captioning.videos import VideoFeatures
    from s2vt.features.extract import extract
    from s2vt.features.store import FeatureStore

    torch.manual_seed(0)
    w = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), w)
    cfg = ExtractConfig(cnn="timm:resnet18", weights=str(w), stride=2, workers=0, input_size=64, resize_with="opencv")
    extract([("pan", str(video))], tmp_path / "old.h5", cfg, progress=False)
    sig = FeatureStore(tmp_path / "old.h5").signature
    assert "method" not in sig["preprocess"] and sig["sampling"]["short_side"] == 256  # as every earlier store
    back = ExtractConfig.from_signature(sig, str(w))
    assert back.resize_with == "opencv" and back.sampling().short_side == 256
    again = VideoFeatures(SimpleNamespace(feature_signature=sig, max_frames=0), str(w))
    assert again.backbone.preprocess.method == "opencv"
    np.testing.assert_allclose(again(video).numpy(), FeatureStore(tmp_path / "old.h5").features("pan"), rtol=1e-5,
                               atol=1e-5)
    new = ExtractConfig(cnn="timm:resnet18", weights=str(w), input_size=64).network()
    with torch.inference_mode():
        assert not torch.allclose(again(video), _ours(new, _decoded(video, [0, 2, 4]), new.preprocess), atol=1e-3)
