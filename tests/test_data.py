"""Datasets by name, clear errors, and the batched RoCL augmentations against torchvision."""
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from rocl_zoo import data as D
from rocl_zoo.errors import ConfigError, DataError


needs_fmnist = pytest.mark.skipif(not (D.DEBIAN_FASHION_MNIST / "train-labels-idx1-ubyte.gz").is_file(),
                                  reason="apt-get install dataset-fashion-mnist")


@needs_fmnist
def test_fashion_mnist_from_debian_files(tmp_path):
    ds = D.load_dataset("fashion_mnist", "test", root=tmp_path)
    assert len(ds) == 10000 and ds.classes[0] == "T-shirt/top"
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert isinstance(y, int)
    assert (tmp_path / "FashionMNIST/raw/t10k-images-idx3-ubyte").is_file()
    sub = ds.subset(50, seed=1)
    assert len(sub) == 50 and torch.equal(sub.images, ds.subset(50, seed=1).images)


def test_digits_and_info():
    tr, te = D.load_dataset("digits", "train"), D.load_dataset("digits", "test")
    assert len(tr) + len(te) == 1797 and tr.input_size == (1, 8, 8)
    assert D.dataset_info("cifar10").input_size == (3, 32, 32)


def test_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="Did you mean fashion_mnist"):
        D.load_dataset("fashion_mnst")
    with pytest.raises(ConfigError):
        D.load_dataset("digits", split="validation")
    with pytest.raises(DataError, match="download"):
        D.load_dataset("cifar10", root=tmp_path)
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        D.load_dataset("fashion_mnist", root=tmp_path / "empty")


def test_imagefolder(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (10, 12), (i * 40, 20, 200)).save(tmp_path / c / f"{i}.png")
    ds = D.load_dataset(f"imagefolder:{tmp_path}")
    assert ds.classes == ["cat", "dog"] and len(ds) == 6 and ds.input_size == (3, 12, 10)
    assert ds[4][1] == 1
    (tmp_path / "dog" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read image"):
        D.load_dataset(f"imagefolder:{tmp_path}")
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    with pytest.raises(DataError, match="at least 2"):
        D.load_dataset(f"imagefolder:{one}")


def _params(aug, n, **over):
    p = aug.sample(n, torch.Generator().manual_seed(0))
    p.update(jitter=torch.zeros(n, dtype=torch.bool), grey=torch.zeros(n, dtype=torch.bool),
             flip=torch.zeros(n, dtype=torch.bool), top=torch.zeros(n), left=torch.zeros(n),
             crop_h=torch.full((n,), 16.0), crop_w=torch.full((n,), 16.0))
    p.update(over)
    return p


def test_augment_ops_match_torchvision():
    aug = D.RoclAugment(16)
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(aug.apply(x, _params(aug, 2)), x, atol=1e-6)  # nothing on: identity
    flip = aug.apply(x, _params(aug, 2, flip=torch.tensor([True, False])))
    assert torch.allclose(flip[0], x[0].flip(-1), atol=1e-6) and torch.allclose(flip[1], x[1], atol=1e-6)
    grey = aug.apply(x, _params(aug, 2, grey=torch.tensor([True, True])))
    torch.testing.assert_close(grey, TF.rgb_to_grayscale(x, num_output_channels=3), atol=1e-5, rtol=0)
    crop = aug.apply(x, _params(aug, 2, top=torch.tensor([2.0, 0]), left=torch.tensor([4.0, 8]),
                                crop_h=torch.tensor([8.0, 16]), crop_w=torch.tensor([8.0, 8])))
    ref = TF.resized_crop(x[0], 2, 4, 8, 8, [16, 16], antialias=False)
    torch.testing.assert_close(crop[0, :, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], atol=1e-5, rtol=0)  # borders differ
    # colour jitter: one op at a time, in first position
    for k, (name, fn) in enumerate([("brightness", TF.adjust_brightness), ("contrast", TF.adjust_contrast),
                                    ("saturation", TF.adjust_saturation), ("hue", TF.adjust_hue)]):
        order = torch.tensor([[k] + [j for j in range(4) if j != k]] * 2)
        f = torch.tensor([0.07, -0.05]) if name == "hue" else torch.tensor([1.3, 0.7])
        neutral = dict(brightness=torch.ones(2), contrast=torch.ones(2), saturation=torch.ones(2), hue=torch.zeros(2))
        neutral[name] = f
        out = aug.apply(x, _params(aug, 2, jitter=torch.tensor([True, True]), order=order, **neutral))
        for i in range(2):
            torch.testing.assert_close(out[i], fn(x[i], float(f[i])), atol=1e-4, rtol=0)


def test_augment_batch_properties():
    g = torch.Generator().manual_seed(0)
    for c in (1, 3):
        aug = D.RoclAugment(20)
        x = (torch.rand(64, c, 20, 20) * 255).to(torch.uint8)
        out = aug(x, g)
        assert out.shape == (64, c, 20, 20) and out.dtype == torch.float32
        assert 0 <= out.min() and out.max() <= 1
        p = aug.sample(64, torch.Generator().manual_seed(3))
        # the same parameters give the same images, applied whole or in two halves (distributed batches)
        whole = aug.apply(x, p)
        halves = torch.cat([aug.apply(x[:32], aug.slice(p, 0, 32)), aug.apply(x[32:], aug.slice(p, 32, 64))])
        torch.testing.assert_close(whole, halves)
        assert 0.6 < p["jitter"].float().mean() < 0.95 and 0.05 < p["grey"].float().mean() < 0.4
        area = p["crop_h"] * p["crop_w"] / 400
        assert area.min() >= 0.05 and area.max() <= 1 and (p["top"] + p["crop_h"] <= 20).all()
