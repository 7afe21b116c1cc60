"""CIFAR ResNets (He et al. 2016) as RoCL uses them: 3x3 stride-1 stem, no max-pool, four stages.

`resnet18_rocl` is the paper's encoder (BasicBlocks [2, 2, 2, 2], 512-d features); `resnet50_rocl` uses
Bottlenecks [3, 4, 6, 3] (2048-d features).
"""
from __future__ import annotations

import torch
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ._cfg import Tag, pretrained_cfgs
from ._base import ClassifierBase, Normalize, check_in_chans, init_weights

__all__ = ["CifarResNet"]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class CifarResNet(ClassifierBase):
    """ResNet for small images. Children are registered in forward order for timm's feature extraction."""

    feature_stages = (("normalize", "conv1", "bn1", "act1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))

    def __init__(self, block=BasicBlock, layers=(2, 2, 2, 2), num_classes: int = 10, in_chans: int = 3,
                 mean=None, std=None, drop_rate: float = 0.0, global_pool: str = "avg", **kwargs):
        super().__init__()
        check_in_chans(in_chans)
        self.in_chans = in_chans
        self.normalize = Normalize(in_chans, mean, std)
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=64, reduction=1, module="act1")]
        in_planes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(block(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=in_planes, reduction=2 ** i, module=f"layer{i + 1}"))
        self._init_head(in_planes, num_classes, drop_rate, global_pool)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(self.normalize(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _create(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    return build_model_with_cfg(CifarResNet, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3, 4)),
                                **kwargs)


TAGS = {
    "resnet18_rocl.cifar10": Tag("cifar10", "cifar10_resnet18_rocl",
                                 "RoCL encoder + linear head, CIFAR-10 (the paper's setting)", default=True),
    "resnet18_rocl.cifar10_simclr": Tag("cifar10", "cifar10_resnet18_simclr", "SimCLR baseline, CIFAR-10"),
    "resnet18_rocl.fmnist": Tag("fashion_mnist", "fmnist_resnet18_rocl", "RoCL ResNet-18, Fashion-MNIST"),
    "resnet50_rocl.cifar10": Tag("cifar10", "cifar10_resnet50_rocl", "RoCL ResNet-50, CIFAR-10", default=True),
}
# Three stride-2 3x3 convolutions with padding 1, which round up: 28x28 -> 4x4.
default_cfgs = generate_default_cfgs(pretrained_cfgs(TAGS, first_conv="conv1", pool_size=lambda s: -(-s // 8)))


@register_model
def resnet18_rocl(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-18, the RoCL paper's encoder (11.2M parameters, 512-d features)."""
    return _create("resnet18_rocl", pretrained, block=BasicBlock, layers=(2, 2, 2, 2), **kwargs)


@register_model
def resnet50_rocl(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-50 with Bottleneck blocks (23.5M parameters, 2048-d features)."""
    return _create("resnet50_rocl", pretrained, block=Bottleneck, layers=(3, 4, 6, 3), **kwargs)
