"""OnnxClassifier: ONNX Runtime predictions equal to the PyTorch path's, provider choice, clear input errors."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import rocl_zoo
from rocl_zoo import export as ex
from rocl_zoo.errors import ConfigError, DataError, ModelNotFoundError
from rocl_zoo.onnx import OnnxClassifier, resolve_providers


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(3)
    model = rocl_zoo.create_model("cnn4_rocl.fmnist").eval()
    with pytest.warns(UserWarning, match="without results"):
        return ex.export(model, tmp_path_factory.mktemp("onnx") / "out", n_check=4, pgd_steps=1)


@pytest.fixture(scope="module")
def clf(folder):
    return OnnxClassifier(folder)


def test_predict_matches_the_pytorch_path(folder, clf, tmp_path):
    model = rocl_zoo.load(folder)
    rng = np.random.default_rng(0)
    grey = (rng.random((28, 28)) * 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgb = (rng.random((40, 30, 3)) * 255).astype(np.uint8)  # other size and channels: resized, made grey
    images = [tmp_path / "grey.png", rgb, Image.fromarray(grey), torch.rand(1, 28, 28), rng.random((28, 28))]
    want = rocl_zoo.predict(model, images, topk=3)
    got = clf.predict(images, topk=3)
    assert [[p["index"] for p in r] for r in got] == [[p["index"] for p in r] for r in want]
    assert [[p["label"] for p in r] for r in got] == [[p["label"] for p in r] for r in want]
    assert np.allclose([[p["prob"] for p in r] for r in got], [[p["prob"] for p in r] for r in want], atol=1e-5)
    assert got[0][0]["label"] in clf.label_names and clf.label_names[0] == "T-shirt/top"
    x = torch.rand(300, 1, 28, 28)  # more than one internal batch
    with torch.no_grad():
        assert np.abs(clf(x, batch_size=128) - model(x).numpy()).max() <= 1e-4


def test_cpu_provider_and_provider_choice(clf, monkeypatch):
    import onnxruntime as ort

    assert clf.providers[-1] == "CPUExecutionProvider"
    assert resolve_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="not available.*onnxruntime-gpu"):
        resolve_providers(["TensorrtExecutionProvider"])
    # onnxruntime-gpu lists the CUDA provider even without a GPU: it is used only when torch sees one.
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_providers(None) == ["CPUExecutionProvider"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_providers(None) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize("x, match", [
    (np.random.rand(1, 28, 28).astype(np.float32), r"\(B, C, H, W\).*x\[None\]"),
    ((np.random.rand(2, 1, 28, 28) * 255).astype(np.uint8), "dtype uint8.*divide"),
    (np.random.rand(2, 1, 28, 28).astype(np.float32) * 255, r"\[0, 1\]"),
    (np.random.rand(2, 3, 28, 28).astype(np.float32), "1-channel images, got 3 channels"),
    (np.random.rand(2, 1, 32, 32).astype(np.float32), "28x28 images"),
    (np.full((1, 1, 28, 28), np.nan, dtype=np.float32), "NaN"),
    ([[0.5]], "numpy array or torch tensor"),
])
def test_clear_errors_for_bad_batches(clf, x, match):
    with pytest.raises(DataError, match=match):
        clf.logits(x)


def test_predict_errors_are_the_pytorch_paths(clf):
    with pytest.raises(DataError, match="1, 3 or 4 channels"):
        clf.predict(np.random.rand(28, 28, 5).astype(np.float32))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        clf.predict(np.full((28, 28), 2.0, dtype=np.float32))


def test_bare_onnx_file_describes_itself(folder, tmp_path):
    """Without config.json beside it, label names and input size come from the metadata export wrote."""
    shutil.copy(folder / "model.onnx", tmp_path / "m.onnx")
    bare = OnnxClassifier(tmp_path / "m.onnx")
    assert bare.input_size == (1, 28, 28) and bare.label_names[9] == "Ankle boot"
    assert bare.architecture == "cnn4_rocl"
    with pytest.raises(ModelNotFoundError, match="rocl_zoo.export"):
        OnnxClassifier(tmp_path / "nothing_here")


def test_encoder_without_head(tmp_path):
    """An encoder (num_classes=0) exports too; its ONNX output is the pooled features and predict() refuses."""
    model = rocl_zoo.create_model("cnn4_rocl", num_classes=0).eval()
    with pytest.warns(UserWarning):
        out = ex.export(model, tmp_path / "enc", n_check=2, pgd_steps=1)
    enc = OnnxClassifier(out)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert np.abs(enc.logits(x) - model(x).numpy()).max() <= 1e-4 and enc.num_classes == 0
    with pytest.raises(ConfigError, match="no classifier head"):
        enc.predict(x[0])


@pytest.mark.slow
def test_the_flagship_ships_to_onnx(tmp_path):
    """resnet18_rocl.fmnist's Hub folder with model.onnx: export checks its parity (clean and under PGD) itself;
    ONNX Runtime's logits then equal PyTorch's on real test images."""
    from rocl_zoo.data import load_dataset
    from rocl_zoo.linear import as_tensors

    out = ex.export("resnet18_rocl.fmnist", tmp_path / "flagship", n_check=8, pgd_steps=2)
    config = rocl_zoo.load(out).pretrained_cfg["rocl_zoo"]
    assert config["export"]["parity"]["n_real"] == 8 and (out / "model.onnx").is_file()  # export raises on a mismatch
    assert config["training_budget"][0]["clock"] == "GPU"  # the card says what trained it, carried from the entry
    x, _ = as_tensors(load_dataset("fashion_mnist", "test"), 64, 0)
    with torch.no_grad():
        want = rocl_zoo.load("resnet18_rocl.fmnist")(x).numpy()
    assert np.abs(OnnxClassifier(out)(x) - want).max() <= 1e-3
