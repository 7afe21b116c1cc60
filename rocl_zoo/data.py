"""Datasets by name and the RoCL augmentations.

Every dataset yields ([0, 1] float tensor C x H x W, int label) and has `.classes`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_size: tuple  # (C, H, W)
    classes: tuple
    mean: tuple
    std: tuple


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

DATASETS = {
    "fashion_mnist": DatasetInfo("fashion_mnist", (1, 28, 28), FASHION_MNIST_CLASSES, (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), CIFAR10_CLASSES, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo("cifar100", (3, 32, 32), tuple(f"class_{i}" for i in range(100)),
                            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": DatasetInfo("stl10", (3, 96, 96), ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey",
                                                "ship", "truck"), (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "svhn": DatasetInfo("svhn", (3, 32, 32), tuple(str(i) for i in range(10)), (0.4377, 0.4438, 0.4728),
                        (0.1980, 0.2010, 0.1970)),
    "digits": DatasetInfo("digits", (1, 8, 8), tuple(str(i) for i in range(10)), (0.3,), (0.4,)),
}


# ------------------------------------------------------------------------------------------------- loading

import gzip  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from .errors import ConfigError, DataError  # noqa: E402

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                       "t10k-labels-idx1-ubyte")
TORCHVISION_NAMES = {"fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100",
                     "stl10": "STL10", "svhn": "SVHN"}
SPLITS = ("train", "test")


def default_root() -> Path:
    """Where datasets live: $ROCL_ZOO_DATA, else ~/.cache/rocl_zoo/data."""
    return Path(os.environ.get("ROCL_ZOO_DATA") or Path.home() / ".cache" / "rocl_zoo" / "data").expanduser()


class ImageTensorDataset(torch.utils.data.Dataset):
    """A whole dataset held in memory as uint8 images (N, C, H, W) and int64 labels.

    Items are ([0, 1] float tensor C x H x W, int). Training takes `images` directly and moves whole batches to
    the device, so no per-item Python work sits in the training loop.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes, name: str = ""):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"{name}: expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}.")
        if len(images) != len(labels):
            raise DataError(f"{name}: {len(images)} images but {len(labels)} labels.")
        self.images, self.labels, self.classes, self.name = images, labels.long(), list(classes), name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i].float().div_(255), int(self.labels[i])

    @property
    def input_size(self) -> tuple:
        return tuple(self.images.shape[1:])

    def subset(self, n: int, seed: int = 0) -> "ImageTensorDataset":
        """A fixed random subset of n items (the same for a given seed), for tests and quick runs."""
        if n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return ImageTensorDataset(self.images[idx], self.labels[idx], self.classes, self.name)

    def __repr__(self) -> str:
        return f"ImageTensorDataset({self.name!r}, n={len(self)}, input_size={self.input_size})"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}.")


def _prepare_fashion_mnist(root: Path) -> bool:
    """Gunzip Debian's Fashion-MNIST files into <root>/FashionMNIST/raw once. True when the raw files exist."""
    raw = root / "FashionMNIST" / "raw"
    if all((raw / f).is_file() for f in FASHION_MNIST_FILES):
        return True
    if not all((DEBIAN_FASHION_MNIST / f"{f}.gz").is_file() for f in FASHION_MNIST_FILES):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for f in FASHION_MNIST_FILES:
        if not (raw / f).is_file():
            from .utils import atomic_write

            with gzip.open(DEBIAN_FASHION_MNIST / f"{f}.gz", "rb") as src, atomic_write(raw / f) as dst:
                shutil.copyfileobj(src, dst)
    return True


def _from_hwc(data) -> torch.Tensor:
    t = torch.as_tensor(data)
    if t.dim() == 3:
        t = t.unsqueeze(-1)
    return t.permute(0, 3, 1, 2).contiguous()


def _load_torchvision(name: str, split: str, root: Path, download: bool) -> ImageTensorDataset:
    import torchvision.datasets as tvd

    cls = getattr(tvd, TORCHVISION_NAMES[name])
    train = split == "train"
    if name == "fashion_mnist" and not download and not _prepare_fashion_mnist(root):
        raise DataError(f"Fashion-MNIST not found under {root / 'FashionMNIST/raw'} nor in {DEBIAN_FASHION_MNIST}. "
                        "Install it with `apt-get install dataset-fashion-mnist`, or pass download=True "
                        "(`--download` on the command line) where a network is reachable.")
    try:
        if name in ("stl10", "svhn"):
            ds = cls(str(root), split=split, download=download)
        else:
            ds = cls(str(root), train=train, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise DataError(f"{name} ({split}) not found or corrupt under {root}: {e} Pass download=True "
                        "(`--download` on the command line) on a machine with a network, or set --data-root / "
                        "$ROCL_ZOO_DATA to a folder that holds it.") from e
    if name == "fashion_mnist":
        images, labels = ds.data.unsqueeze(1).contiguous(), ds.targets
    elif name in ("cifar10", "cifar100"):
        images, labels = _from_hwc(ds.data), torch.as_tensor(ds.targets)
    else:  # stl10, svhn: already (N, C, H, W)
        images, labels = torch.as_tensor(ds.data).contiguous(), torch.as_tensor(ds.labels)
    classes = getattr(ds, "classes", None) or DATASETS[name].classes
    return ImageTensorDataset(images, labels, classes, name)


def _load_digits(split: str) -> ImageTensorDataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError("the `digits` dataset needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    images = torch.as_tensor(d.images, dtype=torch.float32).mul(255 / 16).round().to(torch.uint8).unsqueeze(1)
    labels = torch.as_tensor(d.target)
    # A fixed 80/20 split (sklearn ships no split).
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(images))
    idx = perm[:cut] if split == "train" else perm[cut:]
    return ImageTensorDataset(images[idx.sort().values], labels[idx.sort().values], DATASETS["digits"].classes,
                              "digits")


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _load_imagefolder(path: str, split: str, image_size: int | None) -> ImageTensorDataset:
    """<path>/<class>/<image> (or <path>/<split>/<class>/<image> when such split folders exist)."""
    from PIL import Image, UnidentifiedImageError

    root = Path(path).expanduser()
    if (root / split).is_dir():
        root = root / split
    if not root.is_dir():
        raise DataError(f"imagefolder: {root} is not a folder. Give imagefolder:PATH with one sub-folder per class.")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"imagefolder: {root} has {len(classes)} class folder(s); it needs at least 2 "
                        "(one sub-folder per class, images inside).")
    images, labels = [], []
    size = (image_size, image_size) if image_size else None
    for label, c in enumerate(classes):
        files = sorted(f for f in (root / c).rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"imagefolder: class folder {root / c} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        for f in files:
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB")
                    size = size or im.size
                    if im.size != size:
                        im = im.resize(size, Image.BILINEAR)
                    images.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
                                  .view(size[1], size[0], 3).permute(2, 0, 1))
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"imagefolder: cannot read image {f}: {e}. Remove or fix the file.") from e
            labels.append(label)
    return ImageTensorDataset(torch.stack(images), torch.tensor(labels), classes, f"imagefolder:{path}")


def dataset_names() -> list[str]:
    return sorted(DATASETS) + ["imagefolder:PATH"]


def dataset_info(name: str) -> DatasetInfo:
    """Input size, channels, class names, mean/std of a dataset name. `imagefolder:PATH` is read to find out."""
    if name.startswith("imagefolder:"):
        ds = load_dataset(name, "train")
        c = ds.input_size[0]
        return DatasetInfo(name, ds.input_size, tuple(ds.classes), (0.5,) * c, (0.5,) * c)
    if name not in DATASETS:
        import difflib

        close = difflib.get_close_matches(name, dataset_names(), n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise DataError(f"unknown dataset {name!r}.{hint} Known: {', '.join(dataset_names())}.")
    return DATASETS[name]


def load_dataset(name: str, split: str = "train", root=None, download: bool = False, subset: int | None = None,
                 image_size: int | None = None) -> ImageTensorDataset:
    """A dataset by name, in memory, yielding ([0, 1] float tensor C x H x W, int label), with `.classes`.

    name: fashion_mnist (Debian's files under /usr/share/datasets/fashion-mnist are used when present),
    cifar10, cifar100, stl10, svhn (torchvision; downloaded only with download=True), digits (scikit-learn),
    or imagefolder:PATH (one sub-folder per class; images resized to image_size, default the first image's).
    root: default $ROCL_ZOO_DATA or ~/.cache/rocl_zoo/data. subset: a fixed random subset of that many items.
    """
    _check_split(split)
    if name.startswith("imagefolder:"):
        ds = _load_imagefolder(name.split(":", 1)[1], split, image_size)
    else:
        dataset_info(name)  # a clear error for unknown names
        if name == "digits":
            ds = _load_digits(split)
        else:
            ds = _load_torchvision(name, split, Path(root).expanduser() if root else default_root(), download)
    return ds.subset(subset) if subset else ds


# ---------------------------------------------------------------------------------------------- augmentation

_GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_GREY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blend(x, other, factor):
    return (factor * x + (1 - factor) * other).clamp_(0, 1)


def _brightness(x, f):
    return (x * f).clamp_(0, 1)


def _contrast(x, f):
    return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation(x, f):
    return _blend(x, _grey(x), f)


def _hue(x, f):
    from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

    hsv = _rgb_to_hsv(x)
    h = (hsv[:, 0] + f.view(-1, 1, 1)) % 1.0
    return _hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], dim=1))


def crop_pad(input_size) -> int:
    """The zero padding of the supervised crop: 4 pixels at 32x32 (CIFAR's), 2 at 28x28 and below."""
    return 2 if input_size[-1] <= 28 else 4


def crop_flip(x: torch.Tensor, g: torch.Generator, pad: int) -> torch.Tensor:
    """Random crop with zero padding `pad` and horizontal flip, per sample, as one exact integer-shift sampling."""
    B, _, H, W = x.shape
    dx = torch.randint(-pad, pad + 1, (B,), generator=g).float()
    dy = torch.randint(-pad, pad + 1, (B,), generator=g).float()
    flip = torch.where(torch.rand(B, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = flip, 2 * dx / W * flip
    theta[:, 1, 1], theta[:, 1, 2] = 1.0, 2 * dy / H
    theta = theta.to(x)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


class RoclAugment:
    """RoCL's (SimCLR's) augmentations on a batch of [0, 1] images (B, C, H, W), on any device, with random
    parameters per sample, in the order of the original code:

    ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8 (the four adjustments in a random order per sample, as
    torchvision does), RandomGrayscale(0.2), RandomHorizontalFlip(0.5), RandomResizedCrop(size, scale
    (0.08, 1), ratio (3/4, 4/3), bilinear). No blur, no normalisation.

    Grey (1-channel) images: saturation, hue and grayscale are skipped; for one channel torchvision's
    versions are the identity too, so the result is the same. The flip and the crop run as one bilinear
    `grid_sample` (the crop only ever enlarges, so no antialiasing is lost).

    Parameters come from `sample(batch_size, generator)` on the CPU, so a seeded generator gives the same
    augmentations on any device and for any split of a batch across processes; `apply(x, params)` uses them.
    """

    def __init__(self, size: int | tuple, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), jitter=(0.4, 0.4, 0.4, 0.1),
                 p_jitter: float = 0.8, p_grey: float = 0.2, p_flip: float = 0.5):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale, self.ratio, self.jitter = scale, ratio, jitter
        self.p_jitter, self.p_grey, self.p_flip = p_jitter, p_grey, p_flip

    def __repr__(self) -> str:
        return (f"RoclAugment(size={self.size}, scale={self.scale}, ratio={self.ratio}, jitter={self.jitter}, "
                f"p_jitter={self.p_jitter}, p_grey={self.p_grey}, p_flip={self.p_flip})")

    def sample(self, n: int, generator: torch.Generator | None = None, image_size: tuple | None = None) -> dict:
        """Random parameters for n images of size image_size (H, W); default self.size."""
        g = generator
        H, W = image_size or self.size
        u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
        b, c, s, h = self.jitter
        params = dict(
            jitter=u(n) < self.p_jitter,
            order=torch.argsort(u(n, 4), dim=1),  # a uniform random permutation per sample
            brightness=1 - b + 2 * b * u(n), contrast=1 - c + 2 * c * u(n), saturation=1 - s + 2 * s * u(n),
            hue=-h + 2 * h * u(n), grey=u(n) < self.p_grey, flip=u(n) < self.p_flip)
        # RandomResizedCrop.get_params, vectorised: 10 tries per image, the first valid one wins, else centre crop.
        tries = 10
        area = H * W * (self.scale[0] + (self.scale[1] - self.scale[0]) * u(n, tries))
        log_r = torch.log(torch.tensor(self.ratio))
        aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * u(n, tries))
        w = torch.sqrt(area * aspect).round()
        h_ = torch.sqrt(area / aspect).round()
        ok = (w > 0) & (h_ > 0) & (w <= W) & (h_ <= H)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
        rows = torch.arange(n)
        cw, ch = w[rows, first.clamp_min(0)], h_[rows, first.clamp_min(0)]
        # Fallback (no valid try): centre crop with the ratio clamped into range, as torchvision does.
        in_ratio = W / H
        fb_w = W if self.ratio[0] <= in_ratio <= self.ratio[1] else (
            W if in_ratio < self.ratio[0] else round(H * self.ratio[1]))
        fb_h = H if self.ratio[0] <= in_ratio <= self.ratio[1] else (
            round(W / self.ratio[0]) if in_ratio < self.ratio[0] else H)
        bad = first < 0
        cw = torch.where(bad, torch.full_like(cw, fb_w), cw)
        ch = torch.where(bad, torch.full_like(ch, fb_h), ch)
        top = torch.floor(u(n) * (H - ch + 1))
        left = torch.floor(u(n) * (W - cw + 1))
        top = torch.where(bad, ((H - ch) / 2).round(), top)
        left = torch.where(bad, ((W - cw) / 2).round(), left)
        params.update(top=top, left=left, crop_h=ch, crop_w=cw)
        return params

    @staticmethod
    def slice(params: dict, start: int, stop: int) -> dict:
        """The parameters of images start..stop-1 (one process's share of a distributed batch)."""
        return {k: v[start:stop] for k, v in params.items()}

    def apply(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        if x.dim() != 4:
            raise ConfigError(f"RoclAugment takes a batch (B, C, H, W), got shape {tuple(x.shape)}.")
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        p = {k: v.to(x.device) for k, v in params.items()}
        B, C, H, W = x.shape
        x = x.clone()
        ops = [("brightness", _brightness), ("contrast", _contrast)]
        if C == 3:
            ops += [("saturation", _saturation), ("hue", _hue)]
        op_index = {"brightness": 0, "contrast": 1, "saturation": 2, "hue": 3}
        for pos in range(4):
            for name, fn in ops:
                sel = p["jitter"] & (p["order"][:, pos] == op_index[name])
                if sel.any():
                    idx = sel.nonzero().squeeze(1)
                    f = p[name][idx].to(x.dtype)
                    x[idx] = fn(x[idx], f if name == "hue" else f.view(-1, 1, 1, 1))
        if C == 3:
            x = torch.where(p["grey"].view(-1, 1, 1, 1), _grey(x).expand(-1, 3, -1, -1), x)
        # Flip then crop+resize, as one affine sampling grid (align_corners=False pixel-centre convention).
        sx = p["crop_w"].to(x.dtype) / W
        sy = p["crop_h"].to(x.dtype) / H
        tx = (2 * p["left"].to(x.dtype) + p["crop_w"].to(x.dtype)) / W - 1
        ty = (2 * p["top"].to(x.dtype) + p["crop_h"].to(x.dtype)) / H - 1
        flip = torch.where(p["flip"], -1.0, 1.0).to(x.dtype)
        theta = torch.zeros(B, 2, 3, device=x.device, dtype=x.dtype)
        # A flip of the image followed by a crop at `left` equals a crop of the flipped box, mirrored.
        theta[:, 0, 0] = sx * flip
        theta[:, 0, 2] = tx * flip
        theta[:, 1, 1] = sy
        theta[:, 1, 2] = ty
        grid = torch.nn.functional.affine_grid(theta, (B, C, *self.size), align_corners=False)
        return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.sample(x.shape[0], generator, tuple(x.shape[-2:])))
