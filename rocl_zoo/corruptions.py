"""Common-corruption robustness (RobustBench's `corruptions` threat model) for 28x28 grey images: generation, cache,
dataset and evaluation.

    python -m rocl_zoo.evaluate cnn4_rocl.fmnist_at --threat-model corruptions --n-examples 0 \
        --out results/cnn4_rocl.fmnist_at/none/corruptions/corruptions-n10000.json

The set: MNIST-C's corruption types (Mu & Gilmer 2019, arXiv:1906.02337), each at 5 severities, generated here
from the Fashion-MNIST test split (never downloaded). Why MNIST-C's and not ImageNet-C's (`imagecorruptions`):
- MNIST-C was designed for 28x28 grey images with a black background, the format of Fashion-MNIST (FMNIST-C,
  Weiss & Tonella 2022, applies it to Fashion-MNIST); ImageNet-C's were tuned for 224-pixel colour photographs:
  `imagecorruptions` works on RGB only, its frost needs photographs of frost, its fog, snow, zoom and glass blur
  are sized for large images, and on 28 pixels several of them degenerate into noise or a blank image;
- it adds what matters for small centred objects and that ImageNet-C lacks: shear, scale, rotation, translation,
  and strokes drawn over the image (dotted lines, zigzags) or parts of it inverted (stripe);
- the `imagecorruptions` packages draw from numpy's global generator and need OpenCV and scikit-image; MNIST-C's own
  code is no package and needs ImageMagick (wand) and OpenCV, and gives most types one severity only.
So the types are MNIST-C's, written here on numpy and scipy.ndimage (not copied), with 5 severities each: the
values of MNIST-C's own 5-level tables where its code has one (shot and impulse noise, scale, rotate, brightness,
translate; shear's as a shear factor), CIFAR-10-C's for contrast and fog, and graded tables of ours for glass blur,
motion blur, spatter (MNIST-C's is not monotone), stripe (MNIST-C's width 7 is severity 4), dotted lines and
zigzags (1 to 5 of them; MNIST-C draws one). Left out: canny edges and inverse (nothing to grade) and JPEG /
pixelate (their bytes depend on the codec's version). Added: contrast (ImageNet-C's, in MNIST-C's longer list), so
there are 15 types, as in MNIST-C. The change from the clean image grows with the severity for every type.

Determinism: every image gets its own random stream (PCG64 seeded with the set's seed and version, the type, the
severity and the image's index in its split), read as raw 64-bit words, so an image's bytes do not depend on which
other images are generated with it, on batch sizes or on the machine; normal and Poisson draws are made from
those words here (Box-Muller, inverse CDF) rather than by numpy's samplers, whose algorithms may change between
versions (a last-bit difference of a libm function could only flip an exact .5 when rounding to uint8; the test
suite pins a checksum). Each type's (severities, images, H, W) uint8 array is cached under the data root with its sha256 and
regenerated when missing or when it fails the check; REFERENCE_SHA256 holds the digests of the canonical
Fashion-MNIST test set, and a generation that differs from them says so.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, DataError
from .threat import CORRUPTIONS as THREAT

VERSION = 1      # bump whenever any type's bytes change: the cache and the results files name it
SEED = 0
SEVERITIES = (1, 2, 3, 4, 5)
SIZE = (28, 28)  # the geometry of the lines and zigzags is MNIST-C's, for 28x28 images
SET_NAME = "MNIST-C types x 5 severities (rocl_zoo.corruptions)"
# sha256 of each type's (5, 10000, 28, 28) uint8 array made from Fashion-MNIST's test split at SEED, VERSION
REFERENCE_SHA256: dict[str, str] = {
    "shot_noise": "ccf9d85cca8075273cfa3ce37919d342be75336edcaf84ae0ae77c5b1358a191",
    "impulse_noise": "50a3eee02d0f06fe0617439cefd44a0aa9031a7be43734bfd549964634e3c767",
    "glass_blur": "e5fa13157e0a15580a255f98d57b703c9a0c4375edacd9b8cc4afabb0f053641",
    "motion_blur": "4efb9dc9bf5305501841b9640af6f304198fd88940b48a3c91df9c45ab55bcdc",
    "shear": "7190e62d212252e0efe678a9aa480e9bfc06cd4f929b25752067fd9e9b00dd02",
    "scale": "306c8d365a8f48af00c259868e4c6cf53b484db9453d8d0edc40417d9d8b1f7b",
    "rotate": "8431186c6e85f90c11d5053882c1f9c9abc8006a7a88f6120429b903a09130a8",
    "brightness": "ae3f59aaf82ddbfbe891698a95a2991b1fcc292cb488cc6bfd3376dea821e159",
    "contrast": "9697d3f4abbfa211ba6d1697a6a9dc566505dafede21cdbf7b007bc13fe16cf0",
    "translate": "8208fd9792724acde31c7c86997197ebd77e3d47ce5b15408068827372a8afad",
    "stripe": "f8908fa5e410e2d307d9099b546327aef975681e881278984a939ed13c553159",
    "fog": "34ace416b64e9a95b93feb3edbf8251633fb596911e4f38eb5e36d8029083aec",
    "spatter": "4f8eb75f6a96b56e5cf4613f3f7513469a2ae2be1487702e975b4f3a266e7b93",
    "dotted_line": "0dd63ad1ed96ca630e1789455ebd566eccdf81879c5bc6d8f51a87ff3b61160f",
    "zigzag": "8b373015020379ee2ef886455f8f2b6794edb7d749f7a91cfb783f99c47f9509",
}


def _scipy():
    try:
        import scipy.ndimage as ndi
    except ImportError as e:
        raise ImportError("the corruptions threat model needs scipy: pip install 'rocl-zoo[eval]' "
                          "(or pip install scipy)") from e
    return ndi


# ------------------------------------------------------------------------------------------------ randomness


class _Streams:
    """One PCG64 stream per image, keyed by (seed, version, type, severity, index in the split)."""

    def __init__(self, indices, name: str, severity: int, seed: int):
        key = zlib.crc32(name.encode())  # stable across Python runs, unlike hash()
        self.gens = [np.random.PCG64(np.random.SeedSequence([seed, VERSION, key, severity, int(i)]))
                     for i in indices]

    def uniform(self, *shape) -> np.ndarray:
        """(images, *shape) uniforms in [0, 1) from each image's own stream: 53 bits of a raw word, as numpy does."""
        k = math.prod(shape)
        raw = np.stack([g.random_raw(k) for g in self.gens]) if self.gens else np.zeros((0, k), np.uint64)
        return ((raw >> np.uint64(11)).astype(np.float64) * 2.0 ** -53).reshape(len(self.gens), *shape)

    def normal(self, *shape) -> np.ndarray:
        u1, u2 = self.uniform(*shape), self.uniform(*shape)
        return np.sqrt(-2 * np.log1p(-u1)) * np.cos(2 * np.pi * u2)  # Box-Muller; 1 - u1 is in (0, 1]

    def integers(self, low: int, high: int, *shape) -> np.ndarray:
        """Uniform integers in [low, high)."""
        return low + np.floor(self.uniform(*shape) * (high - low)).astype(np.int64)

    def signs(self, *shape) -> np.ndarray:
        return np.where(self.uniform(*shape) < 0.5, -1.0, 1.0)


def _poisson(lam: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Poisson draws by inverting the CDF at u (exact for the small means of shot noise)."""
    k = np.zeros(lam.shape)
    p = np.exp(-lam)
    cdf = p.copy()
    active = u > cdf
    for j in range(1, int(lam.max(initial=0) + 12 * math.sqrt(lam.max(initial=0)) + 20)):
        if not active.any():
            break
        k += active
        p = p * lam / j
        cdf = cdf + p
        active &= u > cdf
    return k


# ------------------------------------------------------------------------------------------------ geometry


def _warp(x: np.ndarray, matrices: np.ndarray, order: int = 1) -> np.ndarray:
    """x (N, H, W) resampled through per-image affine maps: output pixel (r, c) reads input
    matrices[n] @ (r, c, 1), bilinear, black outside."""
    n, h, w = x.shape
    r, c = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    pts = np.stack([r, c, np.ones_like(r)])                       # (3, H, W)
    src = np.einsum("nij,jhw->inhw", matrices, pts)              # (2, N, H, W)
    batch = np.broadcast_to(np.arange(n, dtype=np.float64)[:, None, None], (n, h, w))
    # the batch coordinate is an integer: interpolation along it weighs that image 1 and its neighbours 0
    return _scipy().map_coordinates(x, np.stack([batch, *src]), order=order, mode="constant", cval=0.0)


def _about_centre(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """(N, 2, 2) linear maps -> (N, 2, 3) affine maps that keep the image centre fixed."""
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    return np.concatenate([a, (centre - a @ centre)[..., None]], axis=2)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return _scipy().gaussian_filter(x, sigma=(0, sigma, sigma), mode="nearest", truncate=4.0)


def _strokes(segments: np.ndarray, valid: np.ndarray, h: int, w: int, width: float = 1.45) -> np.ndarray:
    """(N, H, W) intensity of anti-aliased line segments (N, S, 4: r0, c0, r1, c1): 1 on a segment, falling
    linearly to 0 at `width` pixels (MNIST-C's profile reaches 0 at 1.45 too), the brightest segment per pixel."""
    r, c = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    out = np.zeros((len(segments), h, w))
    for start in range(0, len(segments), 256):  # chunks keep the (N, S, H, W) distances small
        s = segments[start:start + 256, :, :, None, None]
        a_r, a_c, d_r, d_c = s[:, :, 0], s[:, :, 1], s[:, :, 2] - s[:, :, 0], s[:, :, 3] - s[:, :, 1]
        t = np.clip(((r - a_r) * d_r + (c - a_c) * d_c) / np.maximum(d_r ** 2 + d_c ** 2, 1e-12), 0, 1)
        dist = np.hypot(r - a_r - t * d_r, c - a_c - t * d_c)
        ink = np.clip(1 - dist / width, 0, 1) * valid[start:start + 256, :, None, None]
        out[start:start + 256] = ink.max(axis=1, initial=0)
    return out


# ------------------------------------------------------------------------------------------------ corruptions
# Each takes images x (N, H, W) in [0, 1] (float64), the severity 1..5 and the images' random streams; returns the
# corrupted images (clipped to [0, 1] by the caller).


def shot_noise(x, s, rng):
    photons = [60, 25, 12, 5, 3][s - 1]  # at full white: fewer photons, more noise
    return _poisson(x * photons, rng.uniform(*x.shape[1:])) / photons


def impulse_noise(x, s, rng):
    amount = [0.03, 0.06, 0.09, 0.17, 0.27][s - 1]  # the share of pixels set to black or white
    hit, salt = rng.uniform(*x.shape[1:]) < amount, rng.uniform(*x.shape[1:]) < 0.5
    return np.where(hit, salt.astype(np.float64), x)


def glass_blur(x, s, rng):
    sigma, delta, rounds = [(0.4, 1, 1), (0.5, 1, 2), (0.6, 1, 3), (0.7, 2, 2), (0.8, 2, 3)][s - 1]
    n, h, w = x.shape
    x = _blur(x, sigma)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    for _ in range(rounds):  # half the pixels take a neighbour's value (MNIST-C swaps pixels one by one)
        move = rng.uniform(h, w) < 0.5
        dr, dc = (rng.integers(-delta, delta + 1, h, w) * move for _ in range(2))
        x = x[np.arange(n)[:, None, None], np.clip(rows + dr, 0, h - 1), np.clip(cols + dc, 0, w - 1)]
        x = _blur(x, sigma)
    return x


def motion_blur(x, s, rng):
    sigma = [0.75, 1.25, 1.75, 2.25, 3.0][s - 1]  # a one-sided Gaussian trail, as ImageMagick's motion blur
    angle = np.deg2rad(rng.uniform(1)[:, 0] * 90 - 45)
    taps = np.arange(int(math.ceil(3 * sigma)) + 1)
    weights = np.exp(-taps ** 2 / (2 * sigma ** 2))
    out = np.zeros_like(x)
    for t, wt in zip(taps, weights / weights.sum()):
        shift = np.stack([t * np.sin(angle), t * np.cos(angle)], axis=1)
        out += wt * _warp(x, np.concatenate([np.broadcast_to(np.eye(2), (len(x), 2, 2)), shift[..., None]], 2))
    return out


def shear(x, s, rng):
    k = [0.2, 0.4, 0.6, 0.8, 1.0][s - 1] * rng.signs(1)[:, 0]  # horizontal shear, either way
    a = np.zeros((len(x), 2, 2))
    a[:, 0, 0] = a[:, 1, 1] = 1
    a[:, 1, 0] = k
    return _warp(x, _about_centre(a, *x.shape[1:]))


def scale(x, s, rng):
    f = [0.9, 0.8, 0.7, 0.6, 0.5][s - 1]  # shrink about the centre
    return _warp(x, _about_centre(np.broadcast_to(np.eye(2) / f, (len(x), 2, 2)), *x.shape[1:]))


def rotate(x, s, rng):
    t = [0.2, 0.4, 0.6, 0.8, 1.0][s - 1] * rng.signs(1)[:, 0]  # radians, either way
    a = np.stack([np.stack([np.cos(t), -np.sin(t)], 1), np.stack([np.sin(t), np.cos(t)], 1)], 1)
    return _warp(x, _about_centre(a, *x.shape[1:]))


def brightness(x, s, rng):
    return x + [0.1, 0.2, 0.3, 0.4, 0.5][s - 1]  # MNIST-C adds to HSV's value: for grey images, to the pixel


def contrast(x, s, rng):
    c = [0.75, 0.5, 0.4, 0.3, 0.15][s - 1]
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) * c + mean


def translate(x, s, rng):
    shift = [1, 2, 3, 4, 5][s - 1] * rng.signs(2)  # whole pixels in both directions: no interpolation
    return _warp(x, np.concatenate([np.broadcast_to(np.eye(2), (len(x), 2, 2)), -shift[..., None]], 2))


def stripe(x, s, rng):
    width = [1, 3, 5, 7, 9][s - 1]  # MNIST-C inverts 7 columns on each side
    x = x.copy()
    x[:, :, :width] = 1 - x[:, :, :width]
    x[:, :, -width:] = 1 - x[:, :, -width:]
    return x


def _plasma(rng, n: int, size: int = 32, decay: float = 3.0) -> np.ndarray:
    """(n, size, size) diamond-square fractal in [0, 1], one per image (ImageNet-C's fog, vectorised)."""
    m = np.zeros((n, size, size))
    step, wibble = size, 100.0

    def noisy_mean(total):
        return total / 4 + wibble * (rng.uniform(*total.shape[1:]) * 2 - 1)

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        square = corners + np.roll(corners, -1, axis=1)
        square = square + np.roll(square, -1, axis=2)
        m[:, half::step, half::step] = noisy_mean(square)
        centres, corners = m[:, half::step, half::step], m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = noisy_mean(centres + np.roll(centres, 1, axis=1) + corners
                                               + np.roll(corners, -1, axis=2))
        m[:, half::step, 0::step] = noisy_mean(centres + np.roll(centres, 1, axis=2) + corners
                                               + np.roll(corners, -1, axis=1))
        step, wibble = half, wibble / decay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / m.max(axis=(1, 2), keepdims=True)


def fog(x, s, rng):
    strength, decay = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1.0, 2), (1.5, 1.75)][s - 1]
    h, w = x.shape[1:]
    top = x.max(axis=(1, 2), keepdims=True)
    x = x + strength * _plasma(rng, len(x), max(32, 1 << (max(h, w) - 1).bit_length()), decay)[:, :h, :w]
    return x * top / (top + strength)


def spatter(x, s, rng):
    # MNIST-C's liquid layer (normal, mean 0.65, std 0.3, blurred) with one blur and rising wetness: spots cover
    # about 5, 10, 15, 20 and 27 % of the image; MNIST-C's table is not monotone in coverage. Spots are mud (63/255).
    threshold = [0.72, 0.70, 0.69, 0.68, 0.67][s - 1]
    liquid = _blur(0.65 + 0.3 * rng.normal(*x.shape[1:]), 2.0)
    mask = _blur((liquid > threshold).astype(np.float64), 0.6)
    mask[mask < 0.8] = 0
    return x * (1 - mask) + 63 / 255 * mask


def dotted_line(x, s, rng):
    n, h, w = x.shape
    ends = rng.integers(0, h - 1, s, 2).astype(np.float64)  # s lines from the left edge to the right one
    segments = np.stack([ends[..., 0], np.zeros((n, s)), ends[..., 1], np.full((n, s), w - 1.0)], axis=2)
    dashes = (np.arange(w) // 2) % 2 == 1  # 2 columns on, 2 off, as MNIST-C
    return x + _strokes(segments, np.ones((n, s)), h, w) * dashes


def zigzag(x, s, rng):
    n, h, w = x.shape
    c0, c1, half, amp = 2.0, 25.0, 2.0, 2.0  # MNIST-C's: from column 2 to 25, teeth 2 long and 2 high
    rows = rng.integers(0, h - 1, s).astype(np.float64)
    theta = np.arctan((rng.integers(-5, 5, s) / (c1 - c0)))
    length = (c1 - c0) / np.cos(theta)
    teeth = int((c1 - c0) / math.cos(math.atan(5 / (c1 - c0))) // (2 * half)) + 2
    along = np.minimum(np.concatenate([[0.0], (2 * np.arange(teeth) + 1) * half])[None, None, :],
                       length[..., None])  # (N, s, P): arc positions, the last ones clipped to the end
    across = np.concatenate([[0.0], amp * (-1.0) ** np.arange(teeth)])[None, None, :] * (along < length[..., None])
    cs = c0 + along * np.cos(theta)[..., None] - across * np.sin(theta)[..., None]
    rs = rows[..., None] + along * np.sin(theta)[..., None] + across * np.cos(theta)[..., None]
    seg = np.stack([rs[..., :-1], cs[..., :-1], rs[..., 1:], cs[..., 1:]], axis=-1)  # (N, s, P-1, 4)
    valid = along[..., 1:] > along[..., :-1]
    return x + _strokes(seg.reshape(n, -1, 4), valid.reshape(n, -1), h, w)


CORRUPTIONS = ("shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate", "brightness",
               "contrast", "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag")
_FUNCTIONS = {name: globals()[name] for name in CORRUPTIONS}


def corrupt(images, name: str, severity: int, indices=None, seed: int = SEED) -> np.ndarray:
    """Corrupted copies of uint8 images (N, H, W) or (N, 1, H, W), the same shape and dtype. `indices`: each
    image's index in its split (default 0..N-1): an image's bytes depend on it, never on the other images."""
    if name not in _FUNCTIONS:
        raise ConfigError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}.")
    if severity not in SEVERITIES:
        raise ConfigError(f"severity must be one of {SEVERITIES}, got {severity!r}.")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[1] != 1):
        raise DataError(f"corruptions take grey uint8 images (N, H, W) or (N, 1, H, W), got {images.dtype} "
                        f"{images.shape}.")
    if tuple(images.shape[-2:]) != SIZE:
        raise DataError(f"the corruptions are made for {SIZE[0]}x{SIZE[1]} images (MNIST-C's geometry), got "
                        f"{images.shape[-2]}x{images.shape[-1]}.")
    indices = np.arange(len(images)) if indices is None else np.asarray(indices)
    x = images.reshape(len(images), *SIZE).astype(np.float64) / 255
    out = _FUNCTIONS[name](x, severity, _Streams(indices, name, severity, seed))
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8).reshape(images.shape)


# ------------------------------------------------------------------------------------------------ cache and dataset


def digest(array: np.ndarray) -> str:
    """sha256 of an array's shape and C-order bytes (not of a file format, which numpy versions may change)."""
    h = hashlib.sha256(json.dumps(list(array.shape)).encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def subset_indices(total: int, n: int | None, seed: int = 0) -> np.ndarray:
    """The first n of the fixed test permutation, sorted: the images `rocl_zoo.evaluate --n-examples n --seed seed`
    attacks (rocl_zoo.linear.as_tensors's rule); all of them when n is None, 0 or >= total."""
    if not n or n >= total:
        return np.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values.numpy()


class CorruptedSet:
    """The corrupted copies of an image set (uint8 images (N, 1, H, W), labels) for each type and severity.

    folder: where each type's (5, N, H, W) array of the whole set is cached, as <type>.npy with <type>.json (its
    sha256 and what it was made from); None: no cache. select: the images wanted (indices into the set; default
    all): read from a valid cache when there is one, else generated alone, which gives the same bytes.
    """

    def __init__(self, images, labels, *, folder=None, select=None, seed: int = SEED, progress: bool = False):
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 1:
            raise DataError(f"the corruptions are made for grey images: expected uint8 (N, 1, H, W), got "
                            f"{images.dtype} {tuple(images.shape)}.")
        self.base, self.labels_all = images.numpy(), torch.as_tensor(labels).long()
        self.folder = Path(folder) if folder else None
        self.select = np.arange(len(images)) if select is None else np.asarray(select)
        self.seed, self.progress = seed, progress
        self.source = digest(self.base)
        self.generation_time_s = 0.0
        self.generated: list[str] = []  # types generated here (not read from the cache)

    @property
    def whole(self) -> bool:
        return len(self.select) == len(self.base)

    @property
    def clean(self) -> torch.Tensor:
        return torch.from_numpy(self.base[self.select])

    @property
    def labels(self) -> torch.Tensor:
        return self.labels_all[torch.from_numpy(self.select)]

    def _paths(self, name: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.npy", self.folder / f"{name}.json"

    def _cached(self, name: str) -> np.ndarray | None:
        """The whole set's array of one type from the cache, or None when it is missing, stale or corrupt."""
        if self.folder is None:
            return None
        data, meta = self._paths(name)
        if not data.is_file() and not meta.is_file():
            return None
        try:
            record = json.loads(meta.read_text())
            array = np.load(data, allow_pickle=False)
        except (OSError, ValueError) as e:
            warnings.warn(f"corruption cache {data} is unreadable ({e}): regenerating it", stacklevel=3)
            return None
        expected = {"version": VERSION, "seed": self.seed, "source_sha256": self.source, "corruption": name}
        if any(record.get(k) != v for k, v in expected.items()):
            return None  # made from other images or by another version: not an error, just not ours
        if array.dtype != np.uint8 or digest(array) != record.get("sha256"):
            warnings.warn(f"corruption cache {data} fails its sha256 check: regenerating it", stacklevel=3)
            return None
        return array

    def _generate(self, name: str, indices: np.ndarray) -> np.ndarray:
        t0 = time.time()
        if self.progress and len(indices) > 1000:  # the whole split takes minutes, once: say why it waits
            from tqdm.auto import tqdm

            tqdm.write(f"generating {name} x {len(SEVERITIES)} severities for {len(indices):,} images"
                       + (f" (cached in {self.folder})" if self.folder else ""))
        images = self.base[indices, 0]
        out = np.stack([corrupt(images, name, s, indices, self.seed) for s in SEVERITIES])
        self.generation_time_s += time.time() - t0
        self.generated.append(name)
        return out

    def _store(self, name: str, array: np.ndarray) -> None:
        from .utils import atomic_write, write_json

        data, meta = self._paths(name)
        with atomic_write(data) as f:
            np.save(f, array, allow_pickle=False)
        sha = digest(array)
        write_json(meta, {"corruption": name, "version": VERSION, "seed": self.seed, "shape": list(array.shape),
                          "sha256": sha, "source_sha256": self.source})
        reference = REFERENCE_SHA256.get(name)
        if reference and self.seed == SEED and len(array[0]) == 10000 and sha != reference:
            warnings.warn(f"{name}: the generated images differ from the reference ones (sha256 {sha[:12]} != "
                          f"{reference[:12]}): this numpy/scipy corrupts differently, so accuracies are not "
                          f"comparable with the zoo's", stacklevel=3)

    def images(self, name: str) -> np.ndarray:
        """uint8 (severities, selected images, 1, H, W) of one corruption type."""
        array = self._cached(name)
        if array is None and (self.whole or self.folder is None):
            array = self._generate(name, np.arange(len(self.base)) if self.whole else self.select)
            if self.whole and self.folder is not None:
                self._store(name, array)
            return array[:, :, None]
        if array is None:  # a subset and no valid cache: generate the subset alone (the same bytes)
            return self._generate(name, self.select)[:, :, None]
        return array[:, self.select, None] if not self.whole else array[:, :, None]

    def dataset(self, name: str, severity: int):
        """One type at one severity as a `rocl_zoo.data.ImageTensorDataset` (items: [0, 1] image, label)."""
        from .data import ImageTensorDataset

        if severity not in SEVERITIES:
            raise ConfigError(f"severity must be one of {SEVERITIES}, got {severity!r}.")
        images = torch.from_numpy(np.ascontiguousarray(self.images(name)[severity - 1]))
        return ImageTensorDataset(images, self.labels, [str(i) for i in range(int(self.labels_all.max()) + 1)],
                                  f"{name}-{severity}")


def cache_folder(dataset: str, split: str, root=None) -> Path:
    """<data root>/corruptions/<dataset>-<split>/v<VERSION>: the cache of a split's corrupted copies."""
    from .data import default_root

    base = Path(root).expanduser() if root else default_root()
    return base / "corruptions" / f"{dataset}-{split}" / f"v{VERSION}"


def load_corrupted(dataset: str = "fashion_mnist", split: str = "test", *, n: int | None = None, seed: int = 0,
                   root=None, download: bool = False, cache: bool = True, progress: bool = False) -> CorruptedSet:
    """The corrupted copies of a dataset split (read with `rocl_zoo.data.load_dataset`: Debian's Fashion-MNIST where
    installed), cached under the data root. n: the first n of the fixed test permutation (`seed`), as
    `rocl_zoo.evaluate --n-examples` picks them (None or 0: all)."""
    from .data import load_dataset

    base = load_dataset(dataset, split, root=root, download=download)
    if tuple(base.input_size) != (1, *SIZE):
        raise DataError(f"the corruptions threat model is made for 1x{SIZE[0]}x{SIZE[1]} grey images (MNIST-C's "
                        f"types); {dataset} has {'x'.join(map(str, base.input_size))} images.")
    return CorruptedSet(base.images, base.labels, folder=cache_folder(dataset, split, root) if cache else None,
                        select=subset_indices(len(base), n, seed), progress=progress)


# ------------------------------------------------------------------------------------------------ evaluation


def parse_names(spec) -> list[str]:
    """'all', None or a comma-separated list (or a list) of types -> the types, in CORRUPTIONS order."""
    if spec is None or spec == "all":
        return list(CORRUPTIONS)
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [s for s in names if s not in CORRUPTIONS]
    if unknown or not names:
        raise ConfigError(f"unknown corruption(s) {', '.join(unknown) or '(none given)'}; known: "
                          f"{', '.join(CORRUPTIONS)} (or all).")
    return [c for c in CORRUPTIONS if c in names]


def entry_name(name: str, severity: int) -> str:
    """A type at a severity as the results file's `attacks` block names it: shot_noise-3."""
    return f"{name}-{severity}"


def evaluate_corruptions(model, cset: CorruptedSet, *, corruptions=None, batch_size: int = 256,
                         progress: bool = False, meta: dict | None = None, resume=None) -> dict:
    """Accuracy on the clean images and on every type at every severity, and their mean (the mean corruption
    accuracy, RobustBench's `corruptions_acc`), as a results dict (schema rocl_zoo.eval/2, percent).

    resume: a file that keeps every finished (type, severity) until the whole evaluation is done (see
    `rocl_zoo.evaluate.EvalProgress`): the same call after an interruption picks up there.
    """
    from tqdm.auto import tqdm

    from .evaluate import EvalProgress, correct_under, evaluation_fingerprint

    names = parse_names(corruptions)
    device = next(model.parameters()).device
    x, y = cset.clean.float().div(255), cset.labels
    settings = {"suite": THREAT, "version": VERSION, "seed": cset.seed, "corruptions": names,
                "indices": digest(cset.select), "device": device.type}
    log = EvalProgress(resume, evaluation_fingerprint(model, x, y, settings), progress=progress) if resume else None
    resumed = len(log.batches) if log else 0
    t_start, attacks, sha = time.time(), {}, {}

    def measure(key: str, images: torch.Tensor, cfg: dict) -> None:
        t0, correct = time.time(), log.get(key) if log else None
        if correct is None:
            correct = correct_under(model, images, y, {"name": key, "attack": "clean"}, batch_size=batch_size,
                                    device=device)
            if log:
                log.put(key, correct)
        attacks[key] = {"config": cfg, "acc": 100 * correct.float().mean().item(),
                        "wall_time_s": round(time.time() - t0, 3)}

    measure("clean", x, {"name": "clean", "attack": "clean"})
    bar = tqdm(total=len(names) * len(SEVERITIES), desc="corruptions", disable=not progress or None)
    for name in names:
        bar.set_postfix_str(name)
        images = cset.images(name)  # (severities, n, 1, H, W) uint8: cached, or generated once
        sha[name] = digest(images[:, :, 0])  # the cached array's shape: comparable with REFERENCE_SHA256
        for s in SEVERITIES:
            key = entry_name(name, s)
            measure(key, torch.from_numpy(images[s - 1]).float().div(255),
                    {"name": key, "attack": "corruption", "corruption": name, "severity": s, "threat_model": THREAT})
            bar.update()
    bar.close()
    out = _results(model, cset, attacks, names, sha, meta, resumed=resumed, wall=time.time() - t_start)
    if log:
        log.remove()
    return out


def _results(model, cset, attacks: dict, names: list, sha: dict, meta: dict | None, resumed: int, wall: float) -> dict:
    """The results dict: RobustBench's keys (clean_acc, corruptions_acc), every entry, the means by type and
    severity, and what the images were (set version, seed, sha256 of each type's images)."""
    from . import __version__
    from .precision import describe
    from .results import SCHEMA
    from .utils import hardware_name

    def mean(keys):
        return sum(attacks[k]["acc"] for k in keys) / len(keys)

    every = [entry_name(c, s) for c in names for s in SEVERITIES]
    mca = mean(every)
    attacks[THREAT] = {"config": {"name": THREAT, "attack": THREAT, "threat_model": THREAT, "corruptions": names,
                                  "severities": list(SEVERITIES), "over": f"mean of {len(every)} accuracies"},
                       "acc": mca}
    if not resumed:  # the suite's wall time, for cost estimates (`training.reproduce`); a resumed one has none
        attacks[THREAT]["wall_time_s"] = round(sum(attacks[k]["wall_time_s"] for k in every), 3)
    meta = dict(meta or {})
    device = next(model.parameters()).device
    whole = cset.whole and cset.seed == SEED and len(cset.base) == 10000 and meta.get("dataset") == "fashion_mnist"
    out = {
        "schema": SCHEMA, "model": meta.pop("model", None),
        "architecture": (getattr(model, "pretrained_cfg", None) or {}).get("architecture"),
        "dataset": meta.pop("dataset", None), "threat_model": THREAT, "eps": None, "eps_str": None,
        "clean_acc": round(attacks["clean"]["acc"], 2), "corruptions_acc": round(mca, 2),
        "autoattack_acc": None, "pgd_acc": None, "robust_acc": None,
        "attacks": attacks, "n_examples": len(cset.select), "seed": meta.pop("seed", 0),
        "corruptions": {
            "set": SET_NAME, "version": VERSION, "seed": cset.seed, "types": names, "severities": list(SEVERITIES),
            "by_type": {c: round(mean([entry_name(c, s) for s in SEVERITIES]), 2) for c in names},
            "by_severity": {str(s): round(mean([entry_name(c, s) for c in names]), 2) for s in SEVERITIES},
            "images_sha256": sha, "generation_time_s": round(cset.generation_time_s, 3),
            **({"matches_reference": all(REFERENCE_SHA256.get(c) == sha[c] for c in names)} if whole else {})},
        **meta, "rocl_zoo_version": __version__, "hardware": hardware_name(device), **describe("fp32", device),
        "torch": torch.__version__, "wall_time_s": round(wall, 3),
    }
    if resumed:
        out["resumed_batches"] = resumed
    return out


# ------------------------------------------------------------------------------------------------ command line


def _refuse_lp_options(args) -> None:
    """`rocl_zoo.evaluate --threat-model corruptions` takes no attack, budget or head options: say which were given."""
    from .evaluate import DEFAULT_ATTACKS

    given = [flag for flag, on in (("--attacks", args.attacks != DEFAULT_ATTACKS), ("--eps", args.eps is not None),
                                   ("--norm", args.norm != "linf"), ("--transfer-from", bool(args.transfer_from)),
                                   ("--sanity", args.sanity), ("--autoattack-examples", args.autoattack_examples),
                                   ("--table", bool(args.table)))
             if on]
    if given:
        raise ConfigError(f"{', '.join(given)} belong(s) to the Linf / L2 threat models; --threat-model corruptions "
                          f"measures accuracy on corrupted images (choose types with --corruptions).")
    if args.protocol != "none":
        raise ConfigError("--threat-model corruptions evaluates a classifier as it is: train its head with "
                          f"--protocol {args.protocol} --save-classifier DIR first, then evaluate DIR.")
    if args.n_examples < 0 or args.batch_size < 1:
        raise ConfigError("--n-examples must be >= 0 and --batch-size >= 1.")
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise ConfigError("--threat-model corruptions runs in one process (it is cheap); run it without torchrun.")


def run_cli(args) -> dict:
    """`python -m rocl_zoo.evaluate MODEL --threat-model corruptions`: measure, then write --out (or print)."""
    from .evaluate import _load_model, _model_dataset
    from .utils import resolve_device, write_json

    if not args.source:
        raise ConfigError("give a model SOURCE (zoo name, hf-hub:ORG/REPO or folder).")
    _refuse_lp_options(args)
    names = parse_names(getattr(args, "corruptions", None))
    progress = not args.quiet
    model = _load_model(args.source, resolve_device(args.device))
    dataset = args.dataset or _model_dataset(model)
    if not dataset:
        raise ConfigError(f"{args.source} does not record its dataset; pass --dataset NAME.")
    if getattr(model, "num_classes", 1) == 0:
        raise ConfigError(f"{args.source} is an encoder without a classifier head; evaluate a classifier (e.g. one "
                          f"saved by --protocol linear --save-classifier DIR).")
    cset = load_corrupted(dataset, args.split, n=args.n_examples or None, seed=args.seed, root=args.data_root,
                          download=args.download, progress=progress)
    size = tuple((getattr(model, "pretrained_cfg", None) or {}).get("input_size") or ())
    if size and size != (1, *SIZE):
        raise DataError(f"{args.source} takes {'x'.join(map(str, size))} images; the corrupted set is 1x28x28.")
    protocol = args.protocol_label or "none"
    meta = {"model": args.name or args.source, "source": args.source, "dataset": dataset, "split": args.split,
            "protocol": protocol, "seed": args.seed,
            "protocol_config": {"protocol": protocol, **({"head_trained_before": True} if args.protocol_label else {})}}
    result = evaluate_corruptions(model, cset, corruptions=names, batch_size=args.batch_size, progress=progress,
                                  meta=meta, resume=args.out and f"{args.out}.partial")
    if args.out:
        write_json(args.out, result)
        if progress:
            print(f"mean corruption accuracy {result['corruptions_acc']:.2f} % (clean {result['clean_acc']:.2f} %) "
                  f"on {result['n_examples']} images; wrote {args.out}", file=sys.stderr)
    else:
        print(json.dumps(result, indent=2))
    return result


# ------------------------------------------------------------------------------------------------ readers


def is_corruptions(res: dict) -> bool:
    """Whether a results dict measured the corruptions threat model."""
    return res.get("threat_model") == THREAT


def result_metrics(res: dict) -> list[dict]:
    """A corruptions file's metrics for a model card's model-index (`rocl_zoo.export.result_metrics`'s format):
    clean accuracy and the mean corruption accuracy; the card's table has the rest."""
    block = res.get("corruptions") or {}
    over = f"{len(block.get('types', []))} types x {len(block.get('severities', []))} severities"
    out = []
    if res.get("clean_acc") is not None:
        out.append({"config": "clean", "name": "Clean accuracy", "value": res["clean_acc"], "attack": "clean",
                    "kind": "clean", "settings": {}})
    if res.get("corruptions_acc") is not None:
        out.append({"config": THREAT, "name": f"Mean corruption accuracy ({over})", "value": res["corruptions_acc"],
                    "attack": THREAT, "kind": THREAT, "settings": {"over": over, "version": block.get("version")}})
    return out


def card_lines(fname: str, res: dict, dataset_name: str) -> list[str]:
    """A model card's section for a corruptions results file: the mean in one line, then type x severity."""
    block, attacks = res.get("corruptions") or {}, res.get("attacks") or {}
    types, sevs = block.get("types") or [], block.get("severities") or []
    lines = [f"### Common corruptions (`{fname}`)", "",
             f"- Mean corruption accuracy: {res.get('corruptions_acc', float('nan')):.2f} % over {len(types)} "
             f"corruption types x {len(sevs)} severities (clean {res.get('clean_acc', float('nan')):.2f} %)",
             f"- Dataset: {dataset_name}, split `{res.get('split', 'test')}`, n_examples = {res.get('n_examples')}",
             f"- Corrupted images: MNIST-C's types (Mu & Gilmer 2019) at 5 severities, made by `rocl_zoo.corruptions` "
             f"(version {block.get('version')}, seed {block.get('seed')}; each type's sha256 in the results file)"]
    for key, label in (("protocol", "Protocol"), ("hardware", "Hardware")):
        if res.get(key) is not None:
            lines.append(f"- {label}: {res[key]}")
    lines += ["", "| Corruption | " + " | ".join(f"severity {s}" for s in sevs) + " | Mean |",
              "|---|" + "---:|" * (len(sevs) + 1)]
    for c in types:
        accs = [(attacks.get(entry_name(c, s)) or {}).get("acc") for s in sevs]
        lines.append(f"| {c} | " + " | ".join("–" if a is None else f"{a:.2f}" for a in accs)
                     + f" | {(block.get('by_type') or {}).get(c, float('nan')):.2f} |")
    by_sev = block.get("by_severity") or {}
    lines += ["| **mean** | " + " | ".join(f"{by_sev.get(str(s), float('nan')):.2f}" for s in sevs)
              + f" | **{res.get('corruptions_acc', float('nan')):.2f}** |", ""]
    return lines
