"""Fitting an encoder and a dataset to each other for transfer learning (`rocl_zoo.finetune`).

By default the DATA is converted to what the encoder takes (`rocl_zoo.inference.fit_image`: grey to RGB by
repeating the channel, RGB to grey by ITU-R 601 luma, bilinear antialiased resize) and the encoder stays intact
(`load_data`). `build_classifier(..., in_chans=, image_size=)` changes the MODEL instead: a new channel count adapts
the first convolution and the in-model normalisation (`adapt_in_chans`); a new image size only changes the input
size (the encoders pool globally). Images stay uint8 in memory where they come so, and become float per batch.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from .data import load_dataset
from .errors import ConfigError, DataError
from .inference import fit_image, model_input_size
from .linear import as_tensors, check_encoder, init_head
from .models._base import check_in_chans

IMAGEFOLDER_TEST_FRACTION = 0.2


def _is_imagefolder(name) -> bool:
    return isinstance(name, str) and name.startswith("imagefolder:")


def _as_xy(data):
    if hasattr(data, "images") and hasattr(data, "labels"):
        return data.images, data.labels.long()  # keep uint8: adapted and converted per batch
    return as_tensors(data)


def _split(x, y, fraction: float, seed: int):
    """(kept x, kept y, held-out x, held-out y): a seeded random `fraction` held out."""
    n_out = int(round(fraction * len(x)))
    if n_out < 1 or n_out >= len(x):
        raise DataError(f"cannot hold out {fraction:.0%} of {len(x)} examples; give more data or another fraction.")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    keep, out = perm[n_out:].sort().values, perm[:n_out].sort().values
    return x[keep], y[keep], x[out], y[out]


def fixed_subset(x, y, n: int | None, seed: int):
    """A seeded random n of the examples, in their order (all when n is 0, None or too large)."""
    if not n or n >= len(x):
        return x, y
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[idx], y[idx]


def adapt_images(x: torch.Tensor, in_chans: int, size: tuple[int, int], chunk: int = 4096) -> torch.Tensor:
    """A batch (N, C, H, W) to the model's channels and size with `rocl_zoo.inference.fit_image`, in place of the
    model: uint8 stays uint8 (rounded), float stays float."""
    if x.shape[1] == in_chans and tuple(x.shape[2:]) == tuple(size):
        return x
    out = []
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        xf = xb.float().div(255) if xb.dtype == torch.uint8 else xb.float()
        fb = torch.stack([fit_image(t, in_chans, tuple(size)) for t in xf])
        out.append(fb.mul(255).round().to(torch.uint8) if xb.dtype == torch.uint8 else fb)
    return torch.cat(out)


def to_float(x: torch.Tensor, device) -> torch.Tensor:
    """Images kept as uint8 (to save memory) or float, as float in [0, 1] on `device`."""
    x = x.to(device, non_blocking=True)
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def load_data(dataset, *, test=None, in_chans: int, size, val_fraction: float = 0.1, seed: int = 0,
              subset: int | None = None, root=None, download: bool = False) -> dict:
    """Train / val / test tensors at the model's channels and size, and the class names.

    dataset: a name for rocl_zoo.data.load_dataset (test split loaded too), or a Dataset / (x, y) pair of
    training data with `test` the test data. The validation split is held out of the training split.
    """
    classes = None
    if isinstance(dataset, str):
        kw = dict(root=root, download=download)
        if _is_imagefolder(dataset):
            kw = dict(image_size=int(size[0]) if size[0] == size[1] else None)
        train = load_dataset(dataset, "train", **kw)
        classes = list(train.classes)
        xtr, ytr = _as_xy(train)
        if _is_imagefolder(dataset) and not (Path(dataset.split(":", 1)[1]).expanduser() / "test").is_dir():
            xtr, ytr, xte, yte = _split(xtr, ytr, IMAGEFOLDER_TEST_FRACTION, seed + 1)
        else:
            test_set = load_dataset(dataset, "test", **kw)
            if list(test_set.classes) != classes:
                raise DataError(f"{dataset}: the test split's classes {list(test_set.classes)} differ from the "
                                f"training split's {classes}.")
            xte, yte = _as_xy(test_set)
    else:
        if test is None:
            raise ConfigError("give the test data too (test=Dataset or (x, y)) when `dataset` is not a name.")
        classes = list(getattr(dataset, "classes", None) or []) or None
        xtr, ytr = _as_xy(dataset)
        xte, yte = _as_xy(test)
    if len(xtr) == 0 or len(xte) == 0:
        raise DataError("the training or test split is empty.")
    num_classes = len(classes) if classes else int(max(ytr.max(), yte.max())) + 1
    if classes is None:
        classes = [str(i) for i in range(num_classes)]
    if num_classes < 2:
        raise DataError(f"the dataset has {num_classes} class; fine-tuning a classifier needs at least 2.")
    for name, yy in (("training", ytr), ("test", yte)):
        if yy.min() < 0 or yy.max() >= num_classes:
            raise DataError(f"{name} labels must be in [0, {num_classes}), got {int(yy.min())}..{int(yy.max())}.")
    xtr, ytr = fixed_subset(xtr, ytr, subset, seed)
    xtr, ytr, xva, yva = _split(xtr, ytr, val_fraction, seed)
    source_size = tuple(xtr.shape[1:])
    return dict(train=(adapt_images(xtr, in_chans, size), ytr), val=(adapt_images(xva, in_chans, size), yva),
                test=(adapt_images(xte, in_chans, size), yte), classes=classes, num_classes=num_classes,
                source_input_size=source_size)


def _first_conv(model: nn.Module) -> nn.Conv2d:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise ConfigError(f"{type(model).__name__} has no Conv2d to adapt to another channel count.")


@torch.no_grad()
def adapt_in_chans(model: nn.Module, in_chans: int) -> nn.Module:
    """Change a model's input channels in place: first convolution and in-model normalisation.

    grey -> RGB: weights repeated over the 3 channels / 3, mean and std repeated, so an RGB image whose channels
    are equal gives exactly the grey image's output. RGB -> grey: each channel's weights scaled by std'/std_c and
    summed, std' and mean' the channels' averages: a grey image gives what its RGB copy gave (exactly when the
    channels share one mean and std; padding borders aside otherwise).
    """
    check_in_chans(in_chans)
    old = int(model.in_chans)
    if old == in_chans:
        return model
    conv, norm = _first_conv(model), model.normalize
    mean, std = norm.mean.flatten(), norm.std.flatten()
    w = conv.weight
    if old == 1:  # grey -> RGB
        new_w = w.repeat(1, in_chans, 1, 1) / in_chans
        new_mean, new_std = mean.repeat(in_chans), std.repeat(in_chans)
    else:  # RGB -> grey
        new_std, new_mean = std.mean().view(1), mean.mean().view(1)
        new_w = (w * (new_std / std).view(1, -1, 1, 1)).sum(1, keepdim=True)
    conv.weight = nn.Parameter(new_w.contiguous(), requires_grad=w.requires_grad)
    conv.in_channels = in_chans
    norm.mean = new_mean.view(1, in_chans, 1, 1).clone()
    norm.std = new_std.view(1, in_chans, 1, 1).clone()
    model.in_chans = in_chans
    return model


def build_classifier(encoder: nn.Module, num_classes: int, *, in_chans: int | None = None,
                     image_size: tuple[int, int] | None = None, label_names=None, seed: int = 0) -> nn.Module:
    """A copy of `encoder` with a fresh Linear(num_features, num_classes) head (std 0.01, zero bias, seeded)
    and, when asked, another input channel count or size. The encoder passed in is not modified."""
    check_encoder(encoder)
    clf = copy.deepcopy(encoder).cpu()
    if in_chans is not None:
        adapt_in_chans(clf, in_chans)
    c, h, w = model_input_size(clf)
    if image_size is not None:
        h, w = image_size
    clf.reset_classifier(num_classes)
    init_head(clf.get_classifier(), seed)
    cfg = dict(getattr(clf, "pretrained_cfg", None) or {})
    cfg.update(input_size=(int(clf.in_chans), int(h), int(w)), num_classes=num_classes,
               label_names=tuple(label_names) if label_names else tuple(str(i) for i in range(num_classes)))
    clf.pretrained_cfg = clf.default_cfg = cfg
    return clf
