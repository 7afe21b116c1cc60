"""Extract the demo's bundled Fashion-MNIST examples: the first N test images of each class, as 28x28 PNGs.

    python rocl_zoo/assets/make_examples.py [--root /usr/share/datasets/fashion-mnist] [--per-class 5]

Writes `fmnist_<index>_<class>.png` next to this file and `fashion_mnist.json`, the index the demo reads
(file -> test-set index, label, class name, sha256 of the PNG, so the demo recognises an example by content even
after Gradio copies it into its cache). Run once; the outputs are committed. The files sit directly in
`assets/` because the package data glob is `assets/*`.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array: a big-endian header of dims, then uint8 data."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file.")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def slug(name: str) -> str:
    return name.lower().replace("/", "_").replace(" ", "_").replace("-", "_")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    images = read_idx(args.root / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(args.root / "t10k-labels-idx1-ubyte.gz")
    index = {}
    for label in range(len(CLASSES)):
        for i in np.flatnonzero(labels == label)[:args.per_class]:
            name = f"fmnist_{i:05d}_{slug(CLASSES[label])}.png"
            Image.fromarray(images[i]).save(args.out / name, optimize=True)
            index[name] = {"split": "test", "index": int(i), "label": int(label), "class": CLASSES[label],
                           "sha256": hashlib.sha256((args.out / name).read_bytes()).hexdigest()}
    (args.out / "fashion_mnist.json").write_text(json.dumps(
        {"dataset": "fashion_mnist", "classes": list(CLASSES), "source": "Fashion-MNIST test set "
         "(Xiao et al. 2017, MIT licence)", "files": dict(sorted(index.items()))}, indent=1) + "\n")
    print(f"wrote {len(index)} images to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
