"""Weights as people save them: without a classifier the features do not use (timm's
``num_classes=0``), under a prefix that wrapping adds (``module.``, ``model.``) or that taking a
tower out of a larger model removes (``visual.``), with an upper-case ``.SAFETENSORS`` suffix.
Every weights file is a randomly initialised model's, written here."""
import warnings

import pytest
import torch
from torch import nn

from s2vt.features.backbones.registry import Backbone
from s2vt.runtime.errors import WeightsNotFound
from s2vt.runtime.state_dicts import fitting_state, prefix_hint

timm = pytest.importorskip("timm")


def _net():
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_a_known_prefix_is_added_or_removed_and_said():
    net = _net()
    state = {k: torch.randn_like(v) for k, v in net.state_dict().items()}
    for saved, how in (({"module." + k: v for k, v in state.items()}, "with the prefix 'module.' removed"),
                       ({"model." + k: v for k, v in state.items()}, "with the prefix 'model.' removed"),
                       (state, "")):
        fits, said, _ = fitting_state(net, saved)
        assert said == how and set(fits) == set(state)
        assert all(torch.equal(fits[k], state[k]) for k in state)


def test_an_unused_classifier_is_optional_and_a_used_one_is_not():
    net = _net()
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("2.")}  # headless
    fits, _, _ = fitting_state(net, state, unused=("2.",))
    assert fits is not None and torch.equal(fits["2.weight"], net.state_dict()["2.weight"])
    assert fitting_state(net, state)[0] is None  # the layer needs the head: it is not optional
    other = {**state, "2.weight": torch.zeros(10, 4), "2.bias": torch.zeros(10)}  # another number of classes
    assert fitting_state(net, other, unused=("2.",))[0] is not None


def test_the_prefix_that_would_fit_is_named():
    want = ["conv.weight", "bn.weight", "bn.bias", "fc.weight"]
    assert prefix_hint(want, ["encoder." + k for k in want]) == "with the prefix 'encoder.' removed"
    assert prefix_hint(want, want) is None  # the same names: no prefix
    assert prefix_hint(["tower." + k for k in want], want) == "with the prefix 'tower.' added"
    assert prefix_hint(want, ["a.x", "b.y"]) is None  # nothing in common: no hint


@pytest.fixture(scope="module")
def resnet18_headless(tmp_path_factory):
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    path = tmp_path_factory.mktemp("r18") / "resnet18_headless.pth"
    torch.save(net.state_dict(), path)
    assert not any(k.startswith("fc.") for k in net.state_dict())
    return net, path


def _features(backbone: Backbone, net: nn.Module):
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return backbone(x), net(backbone.norm(x))


def test_timm_weights_saved_without_their_classifier_load_for_the_pooled_features(resnet18_headless):
    from s2vt.features.backbones.spec import Preprocess

    net, path = resnet18_headless
    b = Backbone("timm:resnet18", weights=str(path), preprocess=Preprocess(size=64))
    ours, theirs = _features(b, net)
    assert ours.shape == (2, 512) and ours.abs().max() > 0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    with pytest.raises(WeightsNotFound, match=r"2 tensors missing \(fc.weight, fc.bias\)"):
        Backbone("timm:resnet18", layer="logits", weights=str(path))  # the logits need the classifier


@pytest.mark.parametrize("prefix", ["module.", "model."])
def test_timm_weights_under_a_wrapper_prefix_load_with_a_warning(prefix, resnet18_headless, tmp_path):
    from safetensors.torch import save_file

    from s2vt.features.backbones.spec import Preprocess

    net, _ = resnet18_headless
    path = tmp_path / "wrapped.SAFETENSORS"  # the suffix's case does not matter
    save_file({prefix + k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = Backbone("timm:resnet18", weights=str(path), preprocess=Preprocess(size=64))
    said = [str(w.message) for w in caught if "loaded into" in str(w.message)]
    assert said == [f"{path}: loaded into timm:resnet18 with the prefix {prefix!r} removed "
                    "(its names otherwise differ from the network's)"]
    ours, theirs = _features(b, net)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_weights_under_another_prefix_are_refused_naming_it(resnet18_headless, tmp_path):
    net, _ = resnet18_headless
    path = tmp_path / "encoder.pth"
    torch.save({"encoder." + k: v for k, v in net.state_dict().items()}, path)
    with pytest.raises(WeightsNotFound) as e:
        Backbone("timm:resnet18", weights=str(path))
    msg = str(e.value)
    assert msg.endswith("the names would fit with the prefix 'encoder.' removed") and "\n" not in msg
    assert str(path) in msg and "unexpected (encoder.conv1.weight" in msg


def test_an_open_clip_image_tower_saved_without_visual_loads_into_timms_quickgelu_vit(tmp_path):
    """open_clip's ``model.visual.state_dict()`` (OpenAI's names, no ``visual.`` prefix) goes through timm's
    own converter once the prefix is back; the embedding equals open_clip's ``encode_image``."""
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    path = tmp_path / "clip_visual.safetensors"
    save_file({k: v.contiguous() for k, v in model.visual.state_dict().items()}, str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = Backbone("timm:vit_base_patch32_clip_quickgelu_224.openai", weights=str(path))
    assert any("with the prefix 'visual.' added" in str(w.message) for w in caught)
    x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ours, theirs = b(x), model.encode_image(b.norm(x).contiguous())
    assert ours.shape == (2, 512)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gelu = Backbone("timm:vit_base_patch32_clip_224.openai", weights=str(path))  # the same file, GELU
    with torch.inference_mode():
        assert (gelu(x) - theirs).abs().max() > 1e-3  # another network: OpenAI's weights go with the QuickGELU name


def test_torchvision_weights_without_the_layers_after_the_feature_load(tmp_path):
    import torchvision

    from s2vt.features.backbones.spec import Preprocess

    torch.manual_seed(0)
    full = torchvision.models.alexnet(weights=None).eval()
    path = tmp_path / "alexnet_to_fc6.pth"
    torch.save({k: v for k, v in full.state_dict().items() if not k.startswith(("classifier.4.", "classifier.6."))},
               path)
    b = Backbone("alexnet", layer="fc6", weights=str(path), preprocess=Preprocess(size=64))
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        fc6 = torch.relu(full.classifier[1](torch.flatten(full.avgpool(full.features(b.norm(x))), 1)))
        torch.testing.assert_close(b(x), fc6)
    with pytest.raises(WeightsNotFound, match="classifier.4.weight"):
        Backbone("alexnet", layer="fc7", weights=str(path), preprocess=Preprocess(size=64))
