"""The properties timm's own model suite (pytorch-image-models tests/test_models.py) checks, on our architectures.

timm's test module is not installed with the wheel, so these are our own, smaller versions of its checks: default
cfg keys (pool_size, first_conv, classifier), forward_features / forward_head / reset_classifier, unpooled output,
features_only (list and getter wrappers), forward_intermediates, TorchScript (plain and after FX tracing), and
that timm lists as pretrained only the tags whose weights are published. Inputs are small (16x16 where the cfg
size is not under test) so the big WideResNet stays cheap.
"""
import math

import pytest
import timm
import torch
from timm.models import FeatureInfo

import rocl_zoo  # noqa: F401  (registers the architectures)
from rocl_zoo.models import ARCHITECTURES
from rocl_zoo.zoo import ZOO

SMALL = 16  # input side for the checks that do not depend on the cfg's input size
TAGGED = sorted(ZOO)


def _small_input(model, batch_size=1):
    return torch.rand(batch_size, model.pretrained_cfg["input_size"][0], SMALL, SMALL)


@pytest.mark.parametrize("name", list(ARCHITECTURES) + TAGGED)
def test_default_cfg_matches_model(name):
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    for key in ("input_size", "pool_size", "first_conv", "classifier", "num_classes", "mean", "std"):
        assert cfg.get(key) is not None, key
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state
    assert cfg["classifier"] + ".weight" in state
    assert model.num_classes == cfg["num_classes"] and model.num_features > 0 and model.head_hidden_size > 0
    x = torch.rand(1, *cfg["input_size"])
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[1:] == (model.num_features, *cfg["pool_size"])
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0 and torch.allclose(model(x), pre, atol=1e-6)
        model.reset_classifier(0, "")  # no pooling: the feature map itself
        assert torch.allclose(model(x), feats, atol=1e-6)
        unpooled = timm.create_model(name, num_classes=0, global_pool="").eval()
        assert unpooled(x).shape == feats.shape


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_backward_and_reset_classifier(arch):
    model = timm.create_model(arch, num_classes=42).train()
    out = model(_small_input(model, batch_size=2))
    assert out.shape == (2, 42)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.reset_classifier(5)
    assert model.eval()(_small_input(model)).shape == (1, 5)
    with pytest.raises(rocl_zoo.ConfigError, match="global_pool"):
        model.reset_classifier(5, "max")


def _check_maps(maps, channels, reductions, side):
    assert len(maps) == len(channels) >= 3
    for m, c, r in zip(maps, channels, reductions):
        assert m.shape[:2] == (1, c)
        assert m.shape[-1] <= math.ceil(side / r) + 1 and m.shape[-2] <= math.ceil(side / r) + 1
        assert torch.isfinite(m).all()


@pytest.mark.parametrize("feature_cls", ["list", "getter"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_features_only(arch, feature_cls):
    model = timm.create_model(arch, features_only=True, feature_cls=feature_cls).eval()
    with torch.no_grad():
        maps = model(_small_input(model))
    _check_maps(maps, model.feature_info.channels(), model.feature_info.reduction(), SMALL)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_intermediates(arch):
    model = timm.create_model(arch).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    x = _small_input(model)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, output_fmt="NCHW")
        _check_maps(maps, info.channels(), info.reduction(), SMALL)
        assert torch.equal(final, model.forward_features(x))
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [m.shape for m in last2] == [m.shape for m in maps[-2:]]
        first = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        assert torch.equal(first[0], maps[0])
    with pytest.raises(rocl_zoo.ConfigError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")
    kept = model.prune_intermediate_layers([0, 1], prune_head=False)
    assert kept == [0, 1] and model.num_classes == 0 and model.num_features == info.channels()[1]
    with torch.no_grad():
        assert model(x).shape == maps[1].shape


def _fx_model(model):
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    _, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_torchscript_plain_and_through_fx(arch):
    pytest.importorskip("torchvision")
    with timm.set_scriptable(True):
        model = timm.create_model(arch).eval()
    x = _small_input(model)
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(torch.jit.script(model)(x), expected, atol=1e-5)
        fx = _fx_model(model)
        assert torch.equal(next(iter(fx(x).values())), expected)
        assert torch.allclose(next(iter(torch.jit.script(fx)(x).values())), expected, atol=1e-5)


def test_only_published_tags_are_pretrained():
    listed = set(timm.list_pretrained("*_rocl*"))
    published = {n for n, e in ZOO.items() if e.published}
    assert {n for n in listed if "." in n} == published
    for name, entry in ZOO.items():
        cfg = timm.models.get_pretrained_cfg(name)
        assert bool(cfg.has_weights) == entry.published, name
