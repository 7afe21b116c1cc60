"""Saving and verified loading of Hub-layout folders, zoo names, and every error a user can hit."""
import json
import shutil

import pytest
import timm
import torch

import rocl_zoo
from rocl_zoo import zoo
from rocl_zoo.errors import IntegrityError, ModelNotFoundError, WeightsUnavailableError
from rocl_zoo.hub import CONFIG_NAME, WEIGHTS_NAME
from rocl_zoo.utils import sha256_file


@pytest.fixture
def model():
    m = rocl_zoo.create_model("cnn4_rocl.fmnist")
    # non-trivial BN statistics and weights, so a round trip that dropped buffers would show
    m.train()
    with torch.no_grad():
        m(torch.rand(16, 1, 28, 28))
    return m.eval()


@pytest.fixture
def folder(model, tmp_path):
    return rocl_zoo.save_pretrained(model, tmp_path / "cnn4", dataset="fashion_mnist", recipe="fmnist_rocl",
                                    metrics={"clean_acc": 0.5})


def test_round_trip_is_bit_exact(model, folder):
    loaded = rocl_zoo.load(folder)
    x = torch.rand(4, 1, 28, 28)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert torch.equal(model(x), loaded(x))
    assert not loaded.training
    cfg = loaded.pretrained_cfg
    assert cfg["label_names"][9] == "Ankle boot"
    assert tuple(cfg["input_size"]) == (1, 28, 28)
    assert cfg["rocl_zoo"]["recipe"] == "fmnist_rocl" and cfg["rocl_zoo"]["metrics"] == {"clean_acc": 0.5}


def test_folder_layout_is_timm_schema(folder):
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["architecture"] == "cnn4_rocl" and config["num_features"] == 256
    assert config["pretrained_cfg"]["input_size"] == [1, 28, 28]
    record = config["rocl_zoo"]["files"][WEIGHTS_NAME]
    assert record["sha256"] == sha256_file(folder / WEIGHTS_NAME)


def test_timm_reads_the_same_folder(model, folder):
    x = torch.rand(3, 1, 28, 28)
    via_timm = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert torch.equal(via_timm(x), model(x))
    assert via_timm.pretrained_cfg["label_names"][0] == "T-shirt/top"
    assert torch.equal(rocl_zoo.load(f"local-dir:{folder}")(x), model(x))


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ModelNotFoundError, match="Did you mean cnn4_rocl.fmnist"):
        rocl_zoo.load("cnn4_rocl.fmnst")


def test_unpublished_tag_names_its_recipe():
    with pytest.raises(WeightsUnavailableError, match="cifar10_wrn34_10_rocl"):
        rocl_zoo.load("wrn34_10_rocl.cifar10")
    with pytest.raises(WeightsUnavailableError, match="training.reproduce wrn34_10_rocl.cifar10"):
        rocl_zoo.create_model("wrn34_10_rocl", pretrained=True)


def test_missing_folder_and_files(folder, tmp_path):
    with pytest.raises(ModelNotFoundError, match="No folder"):
        rocl_zoo.load(tmp_path / "nowhere")
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(IntegrityError, match="missing"):
        rocl_zoo.load(folder)


def test_missing_config(folder):
    (folder / CONFIG_NAME).unlink()
    with pytest.raises(IntegrityError, match="config.json is missing"):
        rocl_zoo.load(folder)


def test_truncated_weights(folder):
    data = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match="truncated"):
        rocl_zoo.load(folder)
    # without the recorded checksum the safetensors reader itself refuses it
    with pytest.raises(IntegrityError, match="not a readable safetensors"):
        rocl_zoo.load(folder, verify=False)


def test_edited_weights_fail_the_checksum(folder):
    data = bytearray((folder / WEIGHTS_NAME).read_bytes())
    data[-5] ^= 0xFF  # same size, one byte of a weight flipped
    (folder / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        rocl_zoo.load(folder)


def test_corrupt_config(folder):
    (folder / CONFIG_NAME).write_text("{not json")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        rocl_zoo.load(folder)


def test_state_dict_that_does_not_fit(folder):
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["architecture"] = "cnn4w_rocl"  # wrong architecture for these weights
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(IntegrityError, match="do not fit ConvNet.*another shape"):
        rocl_zoo.load(folder)


HOSTILE_CONFIGS = [  # (what is changed, the field the error must name)
    ({"architecture": "not_a_model"}, "'architecture'"),
    ({"architecture": "hf-hub:org/repo"}, "'architecture'"),  # would make timm contact the Hub
    ({"model_args": {"in_chans": 1, "checkpoint_path": "/etc/passwd"}}, "'model_args'"),  # timm would read it
    ({"model_args": {"in_chans": 2}}, "'model_args.in_chans'"),
    ({"model_args": {"in_chans": 1, "mean": [0.1, 0.2]}}, "'model_args.mean'"),
    ({"model_args": "in_chans=1"}, "'model_args'"),
    ({"num_classes": 1e9}, "'num_classes'"),  # a 1 TB head
    ({"num_classes": 10 ** 9}, "'num_classes'"),
    ({"num_classes": -1}, "'num_classes'"),
    ({"num_classes": "10"}, "'num_classes'"),
    ({"pretrained_cfg": {"input_size": [1, -28, 28]}}, r"'pretrained_cfg.input_size\[1\]'"),
    ({"pretrained_cfg": {"input_size": [1, 28, 10 ** 6]}}, r"'pretrained_cfg.input_size\[2\]'"),
    ({"pretrained_cfg": {"input_size": [3, 28, 28]}}, r"'pretrained_cfg.input_size\[0\]'"),  # in_chans is 1
    ({"pretrained_cfg": {"input_size": "28x28"}}, "'pretrained_cfg.input_size'"),
    ({"pretrained_cfg": {"num_classes": 7}}, "'pretrained_cfg.num_classes'"),
    ({"pretrained_cfg": [1, 28, 28]}, "'pretrained_cfg'"),
    ({"label_names": ["a", "b"]}, "'label_names'"),
    ({"label_names": list(range(10))}, "'label_names'"),
    ({"rocl_zoo": {"files": {"model.safetensors": {"sha256": "00", "size": 1}}}}, r"'rocl_zoo.files.model.safetensors.sha256'"),
    ({"rocl_zoo": {"files": {"model.safetensors": {"size": "big"}}}}, r"'rocl_zoo.files.model.safetensors.size'"),
]


@pytest.mark.parametrize("change,field", HOSTILE_CONFIGS)
def test_a_hostile_config_is_refused_whole_before_anything_is_built(folder, monkeypatch, change, field):
    import timm

    config = json.loads((folder / CONFIG_NAME).read_text())
    config.update(change)
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("built a model from a bad config"))
    with pytest.raises(IntegrityError, match=f"field {field}"):
        rocl_zoo.load(folder)


def test_every_shipped_config_passes_the_check():
    from rocl_zoo.hub import read_config

    for name in rocl_zoo.list_models(pretrained=True):
        entry = rocl_zoo.get_entry(name)
        if (entry.embedded_dir / CONFIG_NAME).is_file():
            assert read_config(entry.embedded_dir / CONFIG_NAME)["architecture"] == entry.architecture


def test_zoo_name_loads_embedded_weights_verified_against_the_registry(model, folder, tmp_path, monkeypatch):
    embedded = tmp_path / "weights"
    shutil.copytree(folder, embedded / "cnn4_rocl.fmnist")
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", embedded)
    entry = zoo.ZOO["cnn4_rocl.fmnist"]
    good = zoo.ZooEntry(**{**entry.__dict__, "sha256": sha256_file(folder / WEIGHTS_NAME)})
    monkeypatch.setitem(zoo.ZOO, entry.name, good)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(rocl_zoo.load("cnn4_rocl.fmnist")(x), model(x))
    assert "cnn4_rocl.fmnist" in rocl_zoo.list_models(pretrained=True)
    # pretrained=True on the bare architecture picks the default tag; num_classes swaps the head
    fresh_head = rocl_zoo.create_model("cnn4_rocl", pretrained=True, num_classes=3)
    assert fresh_head(x).shape == (2, 3)
    # the registry, not the folder, is the reference for zoo names
    monkeypatch.setitem(zoo.ZOO, entry.name, zoo.ZooEntry(**{**entry.__dict__, "sha256": "0" * 64}))
    with pytest.raises(IntegrityError, match="sha256"):
        rocl_zoo.load("cnn4_rocl.fmnist")


def test_writes_are_atomic(model, folder, monkeypatch):
    """A crash while writing leaves the previous complete folder, never half a file."""
    before = (folder / WEIGHTS_NAME).read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("rocl_zoo.model_card.build_card", boom)
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    with pytest.raises(RuntimeError):
        rocl_zoo.save_pretrained(model, folder)
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    assert (folder / WEIGHTS_NAME).read_bytes() == before
    rocl_zoo.load(folder)


def test_written_files_have_the_usual_mode(folder):
    from rocl_zoo.utils import current_umask

    for f in folder.iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~current_umask(), f


def test_saving_the_same_weights_twice_gives_the_same_bytes(model, tmp_path):
    # a re-release of unchanged weights must keep its checksum (the registry and caches key on it)
    import subprocess
    import sys

    a = rocl_zoo.save_pretrained(model, tmp_path / "a") / WEIGHTS_NAME
    code = ("import sys, rocl_zoo; m = rocl_zoo.load(sys.argv[1]); "
            "rocl_zoo.save_pretrained(m, sys.argv[2])")  # another process: another hash seed
    subprocess.run([sys.executable, "-c", code, str(a.parent), str(tmp_path / "b")], check=True)
    assert (tmp_path / "b" / WEIGHTS_NAME).read_bytes() == a.read_bytes()
