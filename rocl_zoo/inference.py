"""Inference: images in any common form to top-k labels or features (the CLI is rocl_zoo/predict.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .errors import ConfigError, DataError, InputMismatchWarning
from .hub import model_dataset

MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding
DARK_BACKGROUND = ("fashion_mnist", "digits")  # datasets of light objects on black


def model_input_size(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) the model expects, from its pretrained_cfg; the channel count comes from the model itself."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    _, h, w = cfg.get("input_size") or (0, 32, 32)
    return int(getattr(model, "in_chans", cfg.get("input_size", (3,))[0])), int(h), int(w)


def _open(path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"No image file {path}.")
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        img = Image.open(path)
        img.load()
    except (OSError, Image.DecompressionBombError) as e:
        raise DataError(f"{path} is not a readable image ({e}). Use PNG, JPEG, BMP, TIFF or WebP.") from e
    return img


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """PIL image to float32 HxWxC in [0, 1]; 16- and 32-bit greys are scaled by their range, alpha is dropped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        return (arr / (65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0))[..., None]
    if img.mode == "F":
        return np.clip(np.asarray(img, dtype=np.float32), 0, 1)[..., None]
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGBA").convert("RGB") if "A" in img.mode or img.mode == "P" else img.convert("RGB")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[..., None] if arr.ndim == 2 else arr


def _array_to_chw(arr: np.ndarray) -> torch.Tensor:
    """numpy image (HxW, HxWxC, or CxHxW when C is 1, 3 or 4 and the last axis is not) to float CxHxW in [0, 1]."""
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise DataError(f"float images must lie in [0, 1], got values in [{arr.min():.3g}, {arr.max():.3g}]; "
                            f"divide by 255 first or pass uint8.")
    else:
        raise DataError(f"unsupported image dtype {arr.dtype}; use uint8, uint16 or float in [0, 1].")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise DataError(f"an image array must be HxW or HxWxC, got shape {arr.shape}.")
    if arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.shape[-1] not in (1, 3):
        raise DataError(f"an image needs 1, 3 or 4 channels, got shape {arr.shape}.")
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(arr, -1, 0)))


def _to_chw(image) -> torch.Tensor:
    if isinstance(image, (str, Path)):
        image = _open(image)
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(_pil_to_array(image), -1, 0)))
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dtype == torch.uint8:
            t = t.float() / 255.0
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
            raise DataError(f"an image tensor must be CxHxW with C in 1, 3, 4, got shape {tuple(image.shape)}.")
        t = t.float()[:3]
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise DataError("image tensors must lie in [0, 1]; the model normalises inside.")
        return t
    if isinstance(image, np.ndarray):
        return _array_to_chw(image)
    raise DataError(f"cannot read an image from {type(image).__name__}; pass a path, PIL image, numpy array or "
                    f"tensor.")


def fit_image(t: torch.Tensor, in_chans: int, size: tuple[int, int]) -> torch.Tensor:
    """CxHxW in [0, 1] to the model's channels (ITU-R 601 luma for RGB to grey) and size (bilinear, antialiased)."""
    if t.shape[0] == 3 and in_chans == 1:
        t = (0.299 * t[0] + 0.587 * t[1] + 0.114 * t[2])[None]
    elif t.shape[0] == 1 and in_chans == 3:
        t = t.expand(3, -1, -1)
    if tuple(t.shape[1:]) != tuple(size):
        t = torch.nn.functional.interpolate(t[None], size=size, mode="bilinear", antialias=True,
                                            align_corners=False)[0]
    return t.clamp(0, 1)


def mismatch(image: torch.Tensor, fitted: torch.Tensor, dataset: str | None) -> str | None:
    """How an image (CxHxW, as given) differs from the model's training images once fitted, or None."""
    why = []
    if image.shape[0] == 3 and fitted.shape[0] == 1 and (image - image.mean(0)).abs().max() > 0.1:
        why.append("a colour image turned grey")
    if max(image.shape[1] / fitted.shape[1], image.shape[2] / fitted.shape[2]) >= 4:
        why.append(f"{image.shape[2]}x{image.shape[1]} shrunk to {fitted.shape[2]}x{fitted.shape[1]}")
    border = torch.cat([fitted[:, 0], fitted[:, -1], fitted[:, :, 0], fitted[:, :, -1]], -1)
    if dataset in DARK_BACKGROUND and border.mean() > 0.5:
        why.append(f"a light background, where {dataset}'s images are light objects on black")
    return ", ".join(why) or None


def prepare_images(images, model: nn.Module) -> torch.Tensor:
    """Paths, PIL images, numpy arrays or tensors (one or a list; or a BxCxHxW tensor) to a float batch in
    [0, 1] at the model's channels and input size. Images far from the training data get an
    InputMismatchWarning (see `mismatch`)."""
    c, h, w = model_input_size(model)
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        images = list(images)
    elif isinstance(images, (str, Path, Image.Image, np.ndarray, torch.Tensor)):
        images = [images]
    images = list(images)
    if not images:
        raise DataError("no images given.")
    dataset = model_dataset(model)
    batch, notes = [], []
    for i, im in enumerate(images):
        t = _to_chw(im)
        batch.append(fit_image(t, c, (h, w)))
        if (why := mismatch(t, batch[-1], dataset)) is not None:
            notes.append(f"image {i + 1} ({im if isinstance(im, (str, Path)) else type(im).__name__}): {why}")
    if notes:
        import warnings

        trained = f"on {dataset} images" if dataset else "on different images"
        warnings.warn(f"{'; '.join(notes)}. The model was trained {trained}: its predictions on these mean little.",
                      InputMismatchWarning, stacklevel=3)
    return torch.stack(batch)


def _as_model(model) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    from .hub import load

    return load(model)


@torch.inference_mode()
def _batched(model: nn.Module, x: torch.Tensor, fn, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat([fn(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


def predict(model, images, topk: int = 5, batch_size: int = 256) -> list[list[dict]]:
    """Top-k predictions per image: a list (one per image) of [{"label", "index", "prob"}, ...], best first.

    `model` is a loaded model or any source `rocl_zoo.load` accepts. Images are resized and converted to the
    model's input size and channels; the model must have a classifier head (num_classes > 0).
    """
    model = _as_model(model)
    if not getattr(model, "num_classes", 0):
        raise ConfigError("this model has no classifier head (num_classes=0); use extract_features, or fine-tune "
                          "a head with `python -m rocl_zoo.finetune`.")
    was_training = model.training
    model.eval()
    try:
        probs = _batched(model, prepare_images(images, model), lambda b: model(b).softmax(-1), batch_size)
    finally:
        model.train(was_training)
    labels = (getattr(model, "pretrained_cfg", None) or {}).get("label_names") or [str(i) for i in range(probs.shape[1])]
    k = max(1, min(int(topk), probs.shape[1]))
    top = probs.topk(k, dim=1)
    return [[{"label": str(labels[i]), "index": int(i), "prob": float(p)} for p, i in zip(ps, idx)]
            for ps, idx in zip(top.values.tolist(), top.indices.tolist())]


def extract_features(model, images, batch_size: int = 256) -> torch.Tensor:
    """Pooled encoder features (N x num_features), the input of the model's linear head."""
    model = _as_model(model)
    was_training = model.training
    model.eval()
    try:
        return _batched(model, prepare_images(images, model),
                        lambda b: model.forward_head(model.forward_features(b), pre_logits=True), batch_size)
    finally:
        model.train(was_training)
