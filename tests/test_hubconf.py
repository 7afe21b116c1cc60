"""torch.hub.load from this repository, offline."""
from pathlib import Path

import pytest
import torch

from rocl_zoo.errors import WeightsUnavailableError

REPO = str(Path(__file__).resolve().parents[1])


def test_every_entry_point_is_listed_and_documented():
    # torch.hub.list/help only take GitHub repos; read hubconf.py the way torch.hub.load does for local ones
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf", Path(REPO) / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    names = [n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")]
    assert set(names) == {"cnn4_rocl", "cnn4w_rocl", "resnet18_rocl", "resnet50_rocl", "wrn34_10_rocl", "load"}
    assert all(getattr(hubconf, n).__doc__ for n in names)
    assert "512-d" in hubconf.resnet18_rocl.__doc__
    assert set(hubconf.dependencies) >= {"torch", "timm", "safetensors"}


def test_load_untrained_offline():
    model = torch.hub.load(REPO, "resnet18_rocl", source="local", pretrained=False, tag="cifar10", num_classes=5)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 5)
    # the bare name takes its default tag's input: Fashion-MNIST's while the flagship is its best trained entry
    assert torch.hub.load(REPO, "resnet18_rocl", source="local", pretrained=False).in_chans == 1
    small = torch.hub.load(REPO, "cnn4_rocl", source="local", pretrained=False, tag="fmnist_at")
    assert small.pretrained_cfg["tag"] == "fmnist_at" and small.in_chans == 1


def test_entry_points_default_to_the_pretrained_model():
    """As DINO's and SwAV's hubconf: torch.hub.load(repo, name) is the trained model."""
    import rocl_zoo

    default = torch.hub.load(REPO, "cnn4_rocl", source="local", tag="fmnist_at").eval()
    shipped = rocl_zoo.load("cnn4_rocl.fmnist_at")
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(default(x), shipped(x))
    with pytest.raises(WeightsUnavailableError, match="recipe"):  # no weights yet: the error names the recipe
        torch.hub.load(REPO, "resnet50_rocl", source="local")


def test_the_flagship_loads_trained_every_way():
    """resnet18_rocl's default tag is its best trained entry (Fashion-MNIST) until CIFAR-10 weights ship: hub,
    timm and rocl_zoo give the same verified weights; the cifar10 tag keeps its message."""
    import timm

    import rocl_zoo

    hub = torch.hub.load(REPO, "resnet18_rocl", source="local", pretrained=True).eval()
    shipped = rocl_zoo.load("resnet18_rocl")
    via_timm = timm.create_model("resnet18_rocl", pretrained=True).eval()
    assert hub.pretrained_cfg["tag"] == shipped.pretrained_cfg["tag"] == via_timm.pretrained_cfg["tag"] == "fmnist"
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(hub(x), shipped(x)) and torch.equal(via_timm(x), shipped(x))
    with pytest.raises(WeightsUnavailableError, match="cifar10_resnet18_rocl"):
        torch.hub.load(REPO, "resnet18_rocl", source="local", tag="cifar10")


def test_pretrained_without_published_weights_names_the_recipe():
    with pytest.raises(WeightsUnavailableError, match="cifar10_wrn34_10_rocl"):
        torch.hub.load(REPO, "wrn34_10_rocl", source="local", pretrained=True)


def test_load_entry_point_reads_a_folder(tmp_path):
    import rocl_zoo

    model = rocl_zoo.create_model("cnn4_rocl.fmnist").eval()
    folder = rocl_zoo.save_pretrained(model, tmp_path / "clf")
    loaded = torch.hub.load(REPO, "load", str(folder), source="local")
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))


def test_pretrained_returns_the_shipped_trained_weights():
    import rocl_zoo

    hub_model = torch.hub.load(REPO, "cnn4_rocl", source="local", pretrained=True).eval()
    shipped = rocl_zoo.load("cnn4_rocl.fmnist")  # checksum-verified against the registry
    assert hub_model.num_classes == 10 and hub_model.pretrained_cfg["tag"] == "fmnist"
    for (name, a), b in zip(hub_model.state_dict().items(), shipped.state_dict().values()):
        assert torch.equal(a, b), name
