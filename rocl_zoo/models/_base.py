"""Pieces every architecture family shares: in-model normalisation and timm's classifier interface."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError

# Inputs are [0, 1]; this default maps them to about [-1, 1]. Zoo entries carry their dataset's statistics.
DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.5


def per_channel(values: float | Sequence[float] | None, in_chans: int, default: float, what: str) -> list[float]:
    """Expand a scalar or a 1-value sequence to one value per channel; refuse a length that fits no channel count."""
    if values is None:
        values = default
    if isinstance(values, (int, float)):
        return [float(values)] * in_chans
    values = [float(v) for v in values]
    if len(values) == 1:
        return values * in_chans
    if len(values) != in_chans:
        raise ConfigError(f"{what} has {len(values)} values but the model has in_chans={in_chans}; give one value or {in_chans}.")
    return values


class Normalize(nn.Module):
    """(x - mean) / std inside the model, so the model takes [0, 1] images and eps stays in pixel space.

    mean and std are persistent buffers: the weights file carries the preprocessing the model was trained with.
    """

    def __init__(self, in_chans: int, mean=None, std=None):
        super().__init__()
        mean = per_channel(mean, in_chans, DEFAULT_MEAN, "mean")
        std = per_channel(std, in_chans, DEFAULT_STD, "std")
        if min(std) <= 0:
            raise ConfigError(f"std must be positive, got {std}.")
        self.register_buffer("mean", torch.tensor(mean).view(1, in_chans, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, in_chans, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class ClassifierBase(nn.Module):
    """timm's head interface over `forward_features`: global average pool, then an optional linear layer.

    Subclasses register their children in forward order (normalize first), so timm's `features_only=True`
    wrapper, which runs the children one by one, computes the same thing as `forward_features`.
    """

    num_features: int
    num_classes: int

    def _init_head(self, num_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        self.num_features = self.head_hidden_size = num_features
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        if global_pool != "avg":
            raise ConfigError(f"only global_pool='avg' is supported, got {global_pool!r}.")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def check_in_chans(in_chans: int) -> int:
    if in_chans not in (1, 3):
        raise ConfigError(f"in_chans must be 1 (grey) or 3 (RGB), got {in_chans}.")
    return in_chans


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convolutions, unit BN, zero-mean small linear layers: the usual ResNet start."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
