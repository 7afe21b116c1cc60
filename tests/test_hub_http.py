"""Loading from the Hub through a local HTTP stand-in (tests/hub_server.py), then offline from the cache."""
import dataclasses

import pytest
import torch

import rocl_zoo
from hub_server import local_hub  # noqa: F401  (fixture)
from rocl_zoo.errors import IntegrityError, ModelNotFoundError, WeightsUnavailableError
from rocl_zoo.hub import save_pretrained
from rocl_zoo.utils import sha256_file

REPO = "test-org/cnn4-tiny"


def _logits(model, seed=0):
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture
def folders(tmp_path):
    """Two Hub folders of the same architecture with different weights."""
    out = {}
    for i, rev in enumerate(["main", "v1"]):
        torch.manual_seed(100 + i)
        model = rocl_zoo.create_model("cnn4_rocl.fmnist")
        out[rev] = (save_pretrained(model, tmp_path / rev, dataset="fashion_mnist", recipe="test"), model)
    return out


def test_load_and_timm_over_http_then_offline_from_cache(local_hub, folders):
    import timm

    folder, model = folders["main"]
    local_hub.add_folder(REPO, folder)
    want = _logits(model)
    loaded = rocl_zoo.load(f"hf-hub:{REPO}")
    assert torch.equal(_logits(loaded), want)
    assert loaded.pretrained_cfg["label_names"][0] == "T-shirt/top"
    via_timm = timm.create_model(f"hf-hub:{REPO}", pretrained=True)
    assert torch.equal(_logits(via_timm), want)
    heads = {path for method, path in local_hub.requests if method == "HEAD"}
    assert {f"/{REPO}/resolve/main/config.json", f"/{REPO}/resolve/main/model.safetensors"} <= heads
    assert any(m == "GET" for m, _ in local_hub.requests)

    local_hub.go_offline()
    n = len(local_hub.requests)
    assert torch.equal(_logits(rocl_zoo.load(f"hf-hub:{REPO}")), want)
    assert torch.equal(_logits(timm.create_model(f"hf-hub:{REPO}", pretrained=True)), want)
    assert len(local_hub.requests) == n  # nothing reached the server


def test_revision_over_http_then_offline(local_hub, folders):
    local_hub.add_folder(REPO, folders["main"][0])
    commit = local_hub.add_folder(REPO, folders["v1"][0], revision="v1")
    want_main, want_v1 = _logits(folders["main"][1]), _logits(folders["v1"][1])
    assert not torch.equal(want_main, want_v1)
    assert torch.equal(_logits(rocl_zoo.load(f"hf-hub:{REPO}@v1")), want_v1)
    assert torch.equal(_logits(rocl_zoo.load(f"hf-hub:{REPO}@{commit}")), want_v1)
    assert torch.equal(_logits(rocl_zoo.load(f"hf-hub:{REPO}")), want_main)
    local_hub.go_offline()
    assert torch.equal(_logits(rocl_zoo.load(f"hf-hub:{REPO}@v1")), want_v1)
    assert torch.equal(_logits(rocl_zoo.load(f"hf-hub:{REPO}")), want_main)


def test_hub_errors_are_clear(local_hub, folders):
    folder, _ = folders["main"]
    with pytest.raises(ModelNotFoundError, match="No Hub repo"):
        rocl_zoo.load("hf-hub:test-org/missing")
    local_hub.add_folder(REPO, folder)
    with pytest.raises(ModelNotFoundError, match="no revision"):
        rocl_zoo.load(f"hf-hub:{REPO}@nope")
    local_hub.add_files("test-org/weights-only", {"model.safetensors": (folder / "model.safetensors").read_bytes()})
    with pytest.raises(IntegrityError, match="has no file 'config.json'"):
        rocl_zoo.load("hf-hub:test-org/weights-only")
    # Weights edited on the server after the config recorded their checksum.
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    w = bytearray(files["model.safetensors"])
    w[-1] ^= 0xFF
    local_hub.add_files("test-org/tampered", {**files, "model.safetensors": bytes(w)})
    with pytest.raises(IntegrityError, match="sha256"):
        rocl_zoo.load("hf-hub:test-org/tampered")
    local_hub.go_offline()
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE"):
        rocl_zoo.load("hf-hub:test-org/never-downloaded")


def _zoo_entry(sha256):
    base = rocl_zoo.zoo.ZOO["cnn4_rocl.fmnist"]
    return dataclasses.replace(base, name="cnn4_rocl.httptest", sha256=sha256, default=False)


def test_zoo_name_downloads_entry_hf_hub_id_and_checks_sha256(local_hub, folders, monkeypatch):
    folder, model = folders["main"]
    entry = _zoo_entry(sha256_file(folder / "model.safetensors"))
    assert not entry.embedded_dir.exists()  # so the load must go through hf_hub_download
    monkeypatch.setitem(rocl_zoo.zoo.ZOO, entry.name, entry)
    local_hub.add_folder(entry.hf_hub_id, folder)
    assert torch.equal(_logits(rocl_zoo.load(entry.name)), _logits(model))
    assert (("GET", f"/{entry.hf_hub_id}/resolve/main/model.safetensors") in local_hub.requests)
    local_hub.go_offline()
    assert torch.equal(_logits(rocl_zoo.load(entry.name)), _logits(model))


def test_zoo_name_with_wrong_sha256_is_refused(local_hub, folders, monkeypatch):
    folder, _ = folders["main"]
    entry = _zoo_entry("0" * 64)
    monkeypatch.setitem(rocl_zoo.zoo.ZOO, entry.name, entry)
    local_hub.add_folder(entry.hf_hub_id, folder)
    with pytest.raises(IntegrityError, match="sha256"):
        rocl_zoo.load(entry.name)


def test_exported_folder_served_by_the_hub_loads_everywhere(local_hub, tmp_path):
    """Issue 6, loading back: an exported folder on the (stand-in) Hub gives the exported model's logits through
    rocl_zoo.load, timm and ONNX Runtime, online and then offline from the cache."""
    import timm
    from huggingface_hub import hf_hub_download

    from rocl_zoo.export import export
    from rocl_zoo.onnx import OnnxClassifier

    model = rocl_zoo.create_model("cnn4_rocl.fmnist").eval()
    with pytest.warns(UserWarning, match="without results"):
        folder = export(model, tmp_path / "out", n_check=2, pgd_steps=1)
    local_hub.add_folder("test-org/exported", folder)
    want = _logits(model)
    for _ in ("online", "offline"):
        assert torch.equal(_logits(rocl_zoo.load("hf-hub:test-org/exported")), want)
        assert torch.equal(_logits(timm.create_model("hf-hub:test-org/exported", pretrained=True)), want)
        hf_hub_download("test-org/exported", "config.json")  # beside model.onnx in the snapshot: labels, checksum
        clf = OnnxClassifier(hf_hub_download("test-org/exported", "model.onnx"))
        x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        assert abs(clf.logits(x) - want.numpy()).max() <= 1e-4 and clf.label_names[0] == "T-shirt/top"
        local_hub.go_offline()
