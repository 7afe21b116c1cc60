"""WideResNet-34-10 (Zagoruyko & Komodakis 2016), the adversarial-robustness field's standard CIFAR model.

Pre-activation blocks as in the TRADES and RobustBench code: depth 34 gives 5 blocks per group, widths
16, 160, 320, 640; a final BN-ReLU before pooling (640-d features).
"""
from __future__ import annotations

import torch
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..errors import ConfigError
from ._cfg import Tag, pretrained_cfgs
from ._base import ClassifierBase, Normalize, check_in_chans, init_weights

__all__ = ["WideResNet"]


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal = in_planes == out_planes and stride == 1
        # Identity rather than None when unused, so TorchScript can compile both branches of forward
        self.shortcut = nn.Identity() if self.equal else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x):
        o = self.act1(self.bn1(x))
        # The projection shortcut reads the pre-activated input, as in the reference WRN code.
        residual = x if self.equal else self.shortcut(o)
        out = self.conv2(self.act2(self.bn2(self.conv1(o))))
        return out + residual


class WideResNet(ClassifierBase):
    feature_stages = (("normalize", "conv1", "block1"), ("block2",), ("block3", "bn1", "act"))

    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10, in_chans: int = 3,
                 mean=None, std=None, drop_rate: float = 0.0, global_pool: str = "avg", **kwargs):
        super().__init__()
        if (depth - 4) % 6:
            raise ConfigError(f"WideResNet depth must be 6n+4 (e.g. 28, 34), got {depth}.")
        check_in_chans(in_chans)
        self.in_chans = in_chans
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.normalize = Normalize(in_chans, mean, std)
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.feature_info = []
        in_planes = widths[0]
        for g, (width, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            blocks = [PreActBlock(in_planes if i == 0 else width, width, stride if i == 0 else 1) for i in range(n)]
            in_planes = width
            self.add_module(f"block{g + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=width, reduction=2 ** g, module=f"block{g + 1}"))
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act = nn.ReLU(inplace=True)
        self.feature_info[-1] = dict(num_chs=in_planes, reduction=4, module="act")
        self._init_head(in_planes, num_classes, drop_rate, global_pool)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
        return self.act(self.bn1(x))


TAGS = {
    "wrn34_10_rocl.cifar10": Tag("cifar10", "cifar10_wrn34_10_rocl", "RoCL WideResNet-34-10, CIFAR-10", default=True),
}
# Two stride-2 3x3 convolutions with padding 1, which round up: 32x32 -> 8x8.
default_cfgs = generate_default_cfgs(pretrained_cfgs(TAGS, first_conv="conv1", pool_size=lambda s: -(-s // 4)))


@register_model
def wrn34_10_rocl(pretrained: bool = False, **kwargs) -> WideResNet:
    """WideResNet-34-10 (46.2M parameters, 640-d features), the standard model of robustness benchmarks."""
    return build_model_with_cfg(WideResNet, "wrn34_10_rocl", pretrained, feature_cfg=dict(out_indices=(0, 1, 2)),
                                depth=34, widen_factor=10, **kwargs)
