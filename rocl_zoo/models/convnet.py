"""A small convolutional family that trains on a 2-core CPU: four 3x3 conv layers, BN, ReLU, max-pools.

Built for 28x28 inputs (Fashion-MNIST) and fine at 32x32. `cnn4_rocl` has widths 32-64-128-256 (256-d
features, 0.39M parameters, 44M multiply-adds at 28x28); `cnn4w_rocl` doubles them (512-d features, the RoCL
projector's input size, 1.56M parameters, 174M multiply-adds). For scale, the CIFAR ResNet-18 costs 555M
multiply-adds at 32x32 (counted with torch.utils.flop_counter; see tests/test_models.py).
"""
from __future__ import annotations

import torch
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ._cfg import Tag, pretrained_cfgs
from ._base import ClassifierBase, Normalize, check_in_chans, init_weights

__all__ = ["ConvNet"]


def conv_bn_relu(in_chs: int, out_chs: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(in_chs, out_chs, 3, 1, 1, bias=False), nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ConvNet(ClassifierBase):
    feature_stages = (("normalize", "stem"), ("stage1",), ("stage2",), ("stage3",))

    def __init__(self, widths=(32, 64, 128, 256), num_classes: int = 10, in_chans: int = 1, mean=None, std=None,
                 drop_rate: float = 0.0, global_pool: str = "avg", **kwargs):
        super().__init__()
        check_in_chans(in_chans)
        self.in_chans = in_chans
        self.normalize = Normalize(in_chans, mean, std)
        self.stem = conv_bn_relu(in_chans, widths[0], pool=False)
        self.stage1 = conv_bn_relu(widths[0], widths[1], pool=True)
        self.stage2 = conv_bn_relu(widths[1], widths[2], pool=True)
        self.stage3 = conv_bn_relu(widths[2], widths[3], pool=True)
        self.feature_info = [dict(num_chs=w, reduction=r, module=m)
                             for w, r, m in zip(widths, (1, 2, 4, 8), ("stem", "stage1", "stage2", "stage3"))]
        self._init_head(widths[3], num_classes, drop_rate, global_pool)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage3(self.stage2(self.stage1(self.stem(self.normalize(x)))))


def _create(variant: str, pretrained: bool, widths, **kwargs) -> ConvNet:
    return build_model_with_cfg(ConvNet, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3)),
                                widths=widths, **kwargs)


TAGS = {
    "cnn4_rocl.fmnist": Tag("fashion_mnist", "fmnist_rocl", "RoCL encoder (no labels) + linear head, Fashion-MNIST",
                            default=True),
    "cnn4_rocl.fmnist_simclr": Tag("fashion_mnist", "fmnist_simclr",
                                   "SimCLR encoder + linear head, Fashion-MNIST: the non-robust baseline"),
    "cnn4_rocl.fmnist_rocl_ip": Tag("fashion_mnist", None, "RoCL-IP encoder (A-InfoNCE's inferior positives; no "
                                    "labels) + linear head, Fashion-MNIST"),
    "cnn4_rocl.fmnist_deacl": Tag("fashion_mnist", None, "DeACL encoder (no labels; distilled from the SimCLR encoder "
                                  "under attack) + linear head, Fashion-MNIST"),
    "cnn4_rocl.fmnist_dynacl": Tag("fashion_mnist", None, "DynACL encoder (no labels; annealed augmentations, dual BN) "
                                   "+ linear head, Fashion-MNIST"),
    "cnn4_rocl.fmnist_dynacl_pp": Tag("fashion_mnist", None, "DynACL++ encoder (DynACL, then TRADES on k-means "
                                      "pseudo-labels: no labels) + linear head, Fashion-MNIST"),
    "cnn4_rocl.fmnist_at": Tag("fashion_mnist", "fmnist_at", "Supervised PGD adversarial training, Fashion-MNIST"),
    "cnn4_rocl.fmnist_trades": Tag("fashion_mnist", "fmnist_trades", "Supervised TRADES, Fashion-MNIST"),
    "cnn4_rocl.fmnist_rocl_at": Tag("fashion_mnist", None, "RoCL+AT: the RoCL encoder fine-tuned with PGD-AT (python "
                                    "-m rocl_zoo.finetune --mode at), Fashion-MNIST"),
    "cnn4_rocl.fmnist_simclr_at": Tag("fashion_mnist", None, "SimCLR+AT: the SimCLR encoder fine-tuned with PGD-AT, "
                                      "RoCL+AT's budget, Fashion-MNIST"),
    "cnn4_rocl.fmnist_dynacl_at": Tag("fashion_mnist", None, "DynACL+AT: the DynACL encoder fine-tuned with PGD-AT, "
                                      "RoCL+AT's budget, Fashion-MNIST"),
    "cnn4w_rocl.fmnist": Tag("fashion_mnist", "fmnist_rocl_wide",
                             "RoCL encoder + linear head, Fashion-MNIST, double-width CNN", default=True),
}
# Three 2x2 max-pools, which floor: 28x28 -> 3x3.
default_cfgs = generate_default_cfgs(pretrained_cfgs(TAGS, first_conv="stem.0", pool_size=lambda s: s // 8))


@register_model
def cnn4_rocl(pretrained: bool = False, **kwargs) -> ConvNet:
    """Four-conv CNN, widths 32-64-128-256: the zoo's CPU-trainable encoder for 28x28 images (256-d features)."""
    return _create("cnn4_rocl", pretrained, (32, 64, 128, 256), **kwargs)


@register_model
def cnn4w_rocl(pretrained: bool = False, **kwargs) -> ConvNet:
    """Four-conv CNN at double width, 64-128-256-512 (512-d features)."""
    return _create("cnn4w_rocl", pretrained, (64, 128, 256, 512), **kwargs)
