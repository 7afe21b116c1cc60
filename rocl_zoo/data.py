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
