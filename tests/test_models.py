"""Every architecture builds for 1 and 3 channels, runs at its input size, and follows timm's interface."""
import pytest
import timm
import torch

import rocl_zoo
from rocl_zoo.errors import ConfigError, ModelNotFoundError
from rocl_zoo.models import ARCHITECTURES

SIZES = {"cnn4_rocl": 28, "cnn4w_rocl": 28, "resnet18_rocl": 32, "resnet50_rocl": 32, "wrn34_10_rocl": 32}
NUM_FEATURES = {"cnn4_rocl": 256, "cnn4w_rocl": 512, "resnet18_rocl": 512, "resnet50_rocl": 2048,
                "wrn34_10_rocl": 640}


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_forward_at_input_size(arch, in_chans):
    model = timm.create_model(arch, in_chans=in_chans, num_classes=7).eval()
    x = torch.rand(2, in_chans, SIZES[arch], SIZES[arch])
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
    assert logits.shape == (2, 7)
    assert feats.shape == (2, NUM_FEATURES[arch]) == (2, model.num_features)
    assert torch.isfinite(logits).all()
    # forward == forward_head(forward_features): the head is just pool + linear
    assert torch.allclose(model.get_classifier()(feats), logits, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_timm_features_only_and_pooled(arch):
    feat_model = timm.create_model(arch, features_only=True, in_chans=3)
    x = torch.rand(1, 3, 32, 32)  # a power of two, so every map's stride divides the input exactly
    maps = feat_model(x)
    assert [m.shape[1] for m in maps] == feat_model.feature_info.channels()
    assert [32 // m.shape[-1] for m in maps] == feat_model.feature_info.reduction()
    # the last map, pooled, is what num_classes=0 returns
    pooled = timm.create_model(arch, num_classes=0, in_chans=3)
    pooled.load_state_dict(feat_model.state_dict(), strict=False)
    pooled.eval(), feat_model.eval()
    with torch.no_grad():
        assert torch.allclose(pooled(x), feat_model(x)[-1].mean((2, 3)), atol=1e-5)
    assert pooled(x).shape == (1, NUM_FEATURES[arch])
    assert pooled(torch.rand(1, 3, SIZES[arch], SIZES[arch])).shape == (1, NUM_FEATURES[arch])


def test_normalisation_is_inside_the_model_and_saved():
    model = rocl_zoo.create_model("cnn4_rocl.fmnist")
    assert model.normalize.mean.flatten().tolist() == pytest.approx([0.2860])
    assert "normalize.mean" in model.state_dict()
    # timm-visible preprocessing is the identity, so timm's transforms feed [0, 1] images
    assert model.pretrained_cfg["mean"] == (0.0,)
    x = torch.full((1, 1, 28, 28), 0.2860)
    assert model.normalize(x).abs().max() < 1e-6


def test_reset_classifier():
    model = timm.create_model("cnn4_rocl", num_classes=10)
    model.reset_classifier(3)
    assert model(torch.rand(1, 1, 28, 28)).shape == (1, 3)
    model.reset_classifier(0)
    assert model(torch.rand(1, 1, 28, 28)).shape == (1, 256)
    on_meta = timm.create_model("cnn4_rocl", num_classes=10).to("meta")
    on_meta.reset_classifier(4)  # a model on the GPU keeps its new head on the GPU, not on the CPU
    assert on_meta.fc.weight.device.type == "meta"


def test_bad_arguments_are_clear():
    with pytest.raises(ConfigError, match="in_chans"):
        timm.create_model("cnn4_rocl", in_chans=2)
    with pytest.raises(ConfigError, match="mean has 3 values"):
        timm.create_model("cnn4_rocl", in_chans=1, mean=(0.1, 0.2, 0.3))
    with pytest.raises(ModelNotFoundError, match="Did you mean resnet18_rocl"):
        rocl_zoo.create_model("resnet18_rcl")


def test_list_models():
    assert rocl_zoo.list_models() == sorted(ARCHITECTURES)
    assert rocl_zoo.list_models("resnet*") == ["resnet18_rocl", "resnet50_rocl"]
    assert set(timm.list_models("*_rocl")) >= set(ARCHITECTURES)
    published = rocl_zoo.list_models(pretrained=True)
    assert all(rocl_zoo.get_entry(n).published for n in published)


@pytest.mark.parametrize("arch,params_m,macs_m", [("cnn4_rocl", 0.39, 44), ("cnn4w_rocl", 1.56, 174),
                                                  ("resnet18_rocl", 11.17, 555), ("resnet50_rocl", 23.52, 1298),
                                                  ("wrn34_10_rocl", 46.16, 6659)])
def test_documented_cost(arch, params_m, macs_m):
    """The parameter and multiply-add counts stated in the README and docstrings."""
    from torch.utils.flop_counter import FlopCounterMode

    in_chans = 1 if arch.startswith("cnn4") else 3
    model = timm.create_model(arch, in_chans=in_chans).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, in_chans, SIZES[arch], SIZES[arch]))
    assert counter.get_total_flops() / 2e6 == pytest.approx(macs_m, rel=0.01)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, rel=0.01)


def test_an_architecture_defaults_to_a_trained_tag_until_its_marked_one_ships(tmp_path):
    from rocl_zoo.models._cfg import WEIGHTS_FILE, Tag, default_tags

    tags = {"a.cifar10": Tag("cifar10", "r1", "the paper's", default=True), "a.fmnist": Tag("fashion_mnist", "r2", "FM"),
            "b.cifar10": Tag("cifar10", "r3", "unmarked")}
    assert default_tags(tags, tmp_path) == {"a.cifar10", "b.cifar10"}  # nothing trained: the marked one
    for name in ("a.fmnist", "a.cifar10"):
        (tmp_path / name).mkdir()
        (tmp_path / name / WEIGHTS_FILE).write_bytes(b"x")
        assert default_tags(tags, tmp_path) == {name, "b.cifar10"}  # the trained one, then the marked one
