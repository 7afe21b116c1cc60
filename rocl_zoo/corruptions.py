"""Common corruptions of 28x28 grey images (RobustBench's `corruptions` threat model): what each type does to an
image, at 5 severities. The cached set and accuracy on it: `rocl_zoo.corruption_eval`.

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
suite pins a checksum).
"""
from __future__ import annotations

import math
import zlib

import numpy as np

from .errors import ConfigError, DataError

VERSION = 1      # bump whenever any type's bytes change: the cache and the results files name it
SEED = 0
SEVERITIES = (1, 2, 3, 4, 5)
SIZE = (28, 28)  # the geometry of the lines and zigzags is MNIST-C's, for 28x28 images
SET_NAME = "MNIST-C types x 5 severities (rocl_zoo.corruptions)"


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
