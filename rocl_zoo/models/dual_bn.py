"""Dual batch normalisation (ACL, Jiang et al. 2020; DynACL): one BN for clean images, one for adversarial ones.

`dual_bn(module)` swaps every BatchNorm of a module for a DualBatchNorm holding two copies of it; `bn_route(module,
"adv")` chooses which one runs; `single_bn(module, "adv")` folds the module back into plain BatchNorms, so the
exported encoder is the zoo's usual architecture (DynACL evaluates its adversarial BN).
"""
from __future__ import annotations

import contextlib
import copy

from torch import nn

ROUTES = ("clean", "adv")


class DualBatchNorm(nn.Module):
    """Two BatchNorms of the same shape; `route` says which one normalises."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.clean, self.adv = bn, copy.deepcopy(bn)
        self.route = "clean"

    def forward(self, x):
        return self.adv(x) if self.route == "adv" else self.clean(x)


def _swap(module: nn.Module, make) -> nn.Module:
    for name, child in module.named_children():
        replaced = make(child)
        if replaced is not None:
            setattr(module, name, replaced)
        else:
            _swap(child, make)
    return module


def dual_bn(module: nn.Module) -> nn.Module:
    """Every BatchNorm of `module` (in place) as a DualBatchNorm that starts as two copies of it."""
    return _swap(module, lambda m: DualBatchNorm(m) if isinstance(m, nn.modules.batchnorm._BatchNorm) else None)


def single_bn(module: nn.Module, route: str) -> nn.Module:
    """Every DualBatchNorm of `module` (in place) as its `route` BatchNorm."""
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    return _swap(module, lambda m: getattr(m, route) if isinstance(m, DualBatchNorm) else None)


@contextlib.contextmanager
def bn_route(module: nn.Module, route: str):
    """Run `module`'s DualBatchNorms with the `route` BN inside the block; the previous routes come back after."""
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    duals = [m for m in module.modules() if isinstance(m, DualBatchNorm)]
    before = [m.route for m in duals]
    for m in duals:
        m.route = route
    try:
        yield module
    finally:
        for m, r in zip(duals, before):
            m.route = r
