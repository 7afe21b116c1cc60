"""Pieces every architecture family shares: in-model normalisation and timm's classifier interface.

No `from __future__ import annotations` here: TorchScript and FX read these modules' annotations as real types
(string annotations give "Unknown type annotation: 'int'" when scripting, and `_torch_Tensor_` after FX tracing).
"""

from typing import List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models._features import feature_take_indices
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


def _pool_and_fc(num_features: int, num_classes: int, global_pool: Optional[str]) -> Tuple[nn.Module, nn.Module]:
    """Global pooling ('avg', or '' for none: the unpooled map) and the linear classifier (Identity for 0 classes)."""
    global_pool = "avg" if global_pool is None else global_pool
    if global_pool not in ("avg", ""):
        raise ConfigError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}.")
    if not global_pool and num_classes > 0:
        raise ConfigError("global_pool='' (no pooling) needs num_classes=0: the classifier takes pooled features.")
    pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))  # no parameters or buffers
    fc = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()
    return pool, fc


class ClassifierBase(nn.Module):
    """timm's head interface over `forward_features`: global average pool, then an optional linear layer.

    Subclasses register their children in forward order (normalize first), so timm's `features_only=True`
    wrapper, which runs the children one by one, computes the same thing as `forward_features`. They list in
    `feature_stages` the children that run between one feature map of `feature_info` and the next, for
    `forward_intermediates` and `prune_intermediate_layers`.
    """

    feature_stages: Tuple[Tuple[str, ...], ...] = ()

    def _init_head(self, num_features: int, num_classes: int, drop_rate: float = 0.0,
                   global_pool: Optional[str] = "avg") -> None:
        self.num_features = self.head_hidden_size = num_features
        self.num_classes = num_classes
        self.drop_rate = float(drop_rate)
        self.global_pool, self.fc = _pool_and_fc(num_features, num_classes, global_pool)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A fresh classifier for `num_classes` (0: none); `global_pool` 'avg', '' (unpooled) or None (keep)."""
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        device = next(self.parameters()).device  # a model on the GPU keeps its new head there
        self.global_pool, self.fc = _pool_and_fc(self.num_features, num_classes, global_pool)
        self.fc.to(device)
        self.num_classes = num_classes

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's intermediate-feature API: the maps of `feature_info` (all, the last n, or the given indices).

        Returns (final features as `forward_features` gives them, intermediates), or only the intermediates.
        `norm` is accepted for timm's interface; these models have no separate final norm to apply.
        """
        if output_fmt != "NCHW":
            raise ConfigError(f"output_fmt must be 'NCHW', got {output_fmt!r}.")
        take_indices, max_index = feature_take_indices(len(self.feature_stages), indices)
        stages = self.feature_stages[:max_index + 1] if stop_early or intermediates_only else self.feature_stages
        intermediates = []
        for i, names in enumerate(stages):
            for name in names:
                x = getattr(self, name)(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last wanted feature map (and the head); returns the absolute indices kept."""
        take_indices, max_index = feature_take_indices(len(self.feature_stages), indices)
        for names in self.feature_stages[max_index + 1:]:
            for name in names:
                setattr(self, name, nn.Identity())
        prune_end = max_index < len(self.feature_stages) - 1
        if prune_end:  # the features now end at the last kept map; a head sized for the old ones must go
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

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
