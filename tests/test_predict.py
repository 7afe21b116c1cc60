"""The inference API takes images in every common form and agrees with the model called directly."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import rocl_zoo
from rocl_zoo.errors import ConfigError, DataError
from rocl_zoo.inference import prepare_images
from rocl_zoo.predict import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    model = rocl_zoo.create_model("cnn4_rocl.fmnist").eval()
    return rocl_zoo.save_pretrained(model, tmp_path_factory.mktemp("m") / "cnn4", dataset="fashion_mnist")


@pytest.fixture(scope="module")
def model(folder):
    return rocl_zoo.load(folder)


def test_every_input_form_becomes_the_models_input(model, tmp_path):
    grey = (np.arange(28 * 28, dtype=np.uint8).reshape(28, 28))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    forms = {
        "path": tmp_path / "grey.png",
        "str path": str(tmp_path / "grey.png"),
        "PIL L": Image.fromarray(grey),
        "uint8 HxW": grey,
        "uint8 HxWx3": np.repeat(grey[..., None], 3, axis=2),
        "RGBA": Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).convert("RGBA"),
        "16-bit": Image.fromarray(grey.astype(np.uint16) * 257),
        "uint16 array": grey.astype(np.uint16) * 257,
        "float tensor CHW": torch.from_numpy(grey).float()[None] / 255,
    }
    expected = torch.from_numpy(grey).float()[None, None] / 255
    for name, image in forms.items():
        x = prepare_images(image, model)
        assert x.shape == (1, 1, 28, 28), name
        assert torch.allclose(x, expected, atol=2e-3), name


def test_resizes_and_converts_channels(model):
    rgb = torch.rand(3, 64, 40)
    x = prepare_images([rgb, rgb], model)
    assert x.shape == (2, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    batch = prepare_images(torch.rand(5, 1, 28, 28), model)
    assert batch.shape == (5, 1, 28, 28)


def test_predict_matches_the_model(model):
    x = torch.rand(3, 1, 28, 28)
    preds = rocl_zoo.predict(model, x, topk=3)
    with torch.no_grad():
        probs = model(x).softmax(-1)
    for p, row in zip(preds, probs):
        assert len(p) == 3
        assert p[0]["index"] == int(row.argmax())
        assert p[0]["prob"] == pytest.approx(float(row.max()), abs=1e-6)
        assert p[0]["label"] == model.pretrained_cfg["label_names"][p[0]["index"]]
        assert p[0]["prob"] >= p[1]["prob"] >= p[2]["prob"]


def test_extract_features(model):
    x = torch.rand(4, 1, 28, 28)
    feats = rocl_zoo.extract_features(model, x)
    with torch.no_grad():
        assert torch.allclose(feats, model.forward_head(model.forward_features(x), pre_logits=True))
    assert feats.shape == (4, 256)


def test_accepts_a_source_string(folder):
    assert len(rocl_zoo.predict(str(folder), torch.rand(1, 1, 28, 28), topk=1)[0]) == 1


def test_bad_inputs_are_clear(model, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="not a readable image"):
        rocl_zoo.predict(model, tmp_path / "notes.txt")
    with pytest.raises(DataError, match="No image file"):
        rocl_zoo.predict(model, tmp_path / "missing.png")
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        rocl_zoo.predict(model, np.full((28, 28), 200.0, dtype=np.float32))
    with pytest.raises(DataError, match="channels"):
        rocl_zoo.predict(model, np.zeros((28, 28, 5), dtype=np.uint8))
    with pytest.raises(DataError, match="no images"):
        rocl_zoo.predict(model, [])
    features_only = rocl_zoo.create_model("cnn4_rocl", num_classes=0)
    with pytest.raises(ConfigError, match="extract_features"):
        rocl_zoo.predict(features_only, torch.rand(1, 1, 28, 28))


def test_cli_table_and_json(folder, tmp_path, capsys):
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((30, 30, 3), 255, np.uint8)).save(tmp_path / "b.jpg")
    assert main(["--model", str(folder), str(tmp_path / "a.png"), str(tmp_path / "b.jpg"), "--topk", "2"]) == 0
    table = capsys.readouterr().out
    assert "a.png" in table and "b.jpg" in table and table.count("\n") == 5
    assert main(["--model", str(folder), str(tmp_path / "a.png"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["image"].endswith("a.png") and len(out[0]["predictions"]) == 3
    assert main(["--model", "cnn4_rocl.nope", str(tmp_path / "a.png")]) == 2
    assert "No zoo entry" in capsys.readouterr().err


def test_images_unlike_the_training_data_get_a_warning_that_says_how(model, folder, tmp_path, capsys):
    import warnings

    from rocl_zoo.data import load_dataset
    from rocl_zoo.errors import InputMismatchWarning

    skimage_data = pytest.importorskip("skimage.data")
    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "photo.png")
    with pytest.warns(InputMismatchWarning, match="colour image turned grey, 512x512 shrunk to 28x28"):
        rocl_zoo.predict(model, tmp_path / "photo.png")
    shirt = load_dataset("fashion_mnist", "test").images[:200]
    with pytest.warns(InputMismatchWarning, match="light background"):
        rocl_zoo.predict(model, 255 - shirt[0, 0].numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputMismatchWarning)  # no false alarm on the real test images
        rocl_zoo.predict(model, shirt)
    assert main(["--model", str(folder), str(tmp_path / "photo.png")]) == 0
    assert "note: image 1" in capsys.readouterr().err


def test_the_cli_runs_without_a_warning_and_importing_it_keeps_the_function_callable(model, tmp_path):
    """`import rocl_zoo` must not import the CLI module, or `python -m rocl_zoo.predict` warns that it was found
    in sys.modules; importing the CLI rebinds `rocl_zoo.predict` to the module, which must still predict."""
    import subprocess
    import sys

    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "a.png")
    env = {**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"}
    out = subprocess.run([sys.executable, "-m", "rocl_zoo.predict", "--model", "cnn4_rocl.fmnist",
                          str(tmp_path / "a.png"), "--topk", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert "a.png" in out.stdout
    import rocl_zoo.predict as cli

    assert rocl_zoo.predict is cli and cli.main is main
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 6:22, 8:20] = torch.rand(2, 1, 16, 12)
    assert rocl_zoo.predict(model, x, topk=2) == rocl_zoo.inference.predict(model, x, topk=2)
