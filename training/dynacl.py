"""DynACL (Luo et al., ICLR 2023): adversarial contrastive learning whose augmentations anneal from strong to weak.

    python -m training.dynacl --recipe fmnist_dynacl --out runs/fmnist_dynacl

What the authors' code does, step by step (rocl_zoo.steps.dynacl_step):
  1. two views of the batch at augmentation strength s: RandomResizedCrop scale (1 - 0.9 s, 1), colour jitter
     (0.4, 0.4, 0.4, 0.1) x s with probability 0.8 s, grayscale 0.2 s, flip 0.5. s = 1 - (r - 1) / E, r the last
     epoch (1-based) where the data were reloaded: every `reload_every` epochs;
  2. the first view through the online network, the second through its momentum copy (EMA 0.99 of the online
     weights, no gradient); each network is encoder + ACL's 3-layer projector with dual BN (clean / adversarial);
  3. PGD-`attack_steps` on both views at once, maximising their NT-Xent (eval mode, adversarial BN);
  4. loss [(2 - w) NT-Xent(clean pair) + w NT-Xent(adversarial pair)] / 2, w = min(1 + (e // R) (R / E) 2/3, 2).
The released encoder is the momentum network's, with its adversarial BN, as the authors evaluate it (`encoder/`);
`encoder_clean/` has its clean BN, whose features DynACL++'s pseudo-labels cluster (recipe fmnist_dynacl_pp,
training/pseudo.py); with a held-out curve, `best/` and `best_clean/` are the pair of the best epoch. One process only.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import timm
import torch
from torch import nn

import rocl_zoo.models  # noqa: F401  (registers the architectures)
from rocl_zoo import loop as L
from rocl_zoo import steps as S
from rocl_zoo.data import RoclAugment
from rocl_zoo.errors import ConfigError
from rocl_zoo.models import AclProjectionHead
from rocl_zoo.models.dual_bn import dual_bn, single_bn

from . import common as C
from . import heldout as H
from .pretrain import lr_schedule, make_optimizer

KINDS = ("dynacl",)


def strength(epoch: int, epochs: int, every: int) -> float:
    """The augmentation strength of 1-based `epoch`: set at each reload (epochs 1, 1 + every, ...) to
    1 - (reload epoch - 1) / epochs, kept until the next."""
    return 1 - ((epoch - 1) // every) * every / epochs


def adv_weight(epoch: int, epochs: int, every: int, swap: float = 2 / 3) -> float:
    """The adversarial term's weight w of 1-based `epoch`: 1 + (epoch // every) (every / epochs) swap, at most 2."""
    return min(1 + (epoch // every) * (every / epochs) * swap, 2.0)


def augment(size, s: float) -> RoclAugment:
    """SimCLR's augmentations at strength s (s = 1: ACL's, crop scale from 0.1; s = 0: crops of the whole image
    and flips only)."""
    return RoclAugment(size, scale=(1 - 0.9 * s, 1.0), jitter=tuple(v * s for v in (0.4, 0.4, 0.4, 0.1)),
                       p_jitter=0.8 * s, p_grey=0.2 * s)


class MomentumPair(nn.Module):
    """The online network and its momentum copy, each encoder + ACL projector with dual BN."""

    def __init__(self, encoder: nn.Module, ema: float):
        super().__init__()
        self.online = dual_bn(nn.Sequential(encoder, AclProjectionHead(encoder.num_features)))
        self.momentum = copy.deepcopy(self.online).requires_grad_(False)
        self.ema = ema

    @torch.no_grad()
    def update(self) -> None:
        """momentum <- ema momentum + (1 - ema) online, weights only (each network keeps its own BN statistics)."""
        for q, k in zip(self.online.parameters(), self.momentum.parameters()):
            k.mul_(self.ema).add_(q.detach(), alpha=1 - self.ema)

    def released(self, route: str = "adv") -> nn.Module:
        """The encoder DynACL evaluates: the momentum network's, with its adversarial BN (DynACL++ clusters the
        clean-BN one's features), as a plain architecture."""
        return single_bn(copy.deepcopy(self.momentum[0]), route).eval()


def make_step(setup: C.RunSetup, pair: MomentumPair, seed: int):
    """The batch of step s, its two views at the epoch's strength, the DynACL step, then the momentum update."""
    recipe, ds, B = setup.recipe, setup.ds, setup.recipe.batch_size
    augs: dict[float, RoclAugment] = {}

    def step_fn(step, g):
        epoch = step // setup.steps_per_epoch + 1
        s = strength(epoch, recipe.epochs, recipe.reload_every)
        aug = augs.setdefault(s, augment(ds.input_size[1:], s))
        x = ds.images[L.batch_indices(len(ds), B, seed, step, setup.steps_per_epoch)].to(setup.dist.device)
        x1, x2 = (C.to_device(aug.apply(x, aug.sample(B, g)), setup) for _ in range(2))
        noise = torch.rand((2 * B, *ds.input_size), generator=g).to(x1)
        out = S.dynacl_step(pair.online, pair.momentum, x1, x2, noise, eps=recipe.eps, alpha=recipe.alpha,
                            steps=recipe.attack_steps, weight=adv_weight(epoch, recipe.epochs, recipe.reload_every,
                                                                         recipe.adv_swap),
                            temperature=recipe.temperature, amp=setup.amp)
        pair.update()
        out.logs["strength"] = s
        return out

    return step_fn


def train(args) -> Path:
    setup = C.start_run(args, KINDS)
    if setup.dist.world > 1:
        raise ConfigError("DynACL runs in one process here (its momentum network and dual BN are not split "
                          "across processes); start it without torchrun.")
    torch.manual_seed(args.seed)
    recipe, info = setup.recipe, setup.info
    encoder = timm.create_model(recipe.arch, num_classes=0, in_chans=info.input_size[0], mean=info.mean, std=info.std)
    pair, _ = C.prepare(MomentumPair(encoder, recipe.ema), setup)

    def export(folder="encoder"):
        keys = ("temperature", "reload_every", "adv_swap", "ema")
        # DynACL++'s pseudo-labels come from the clean-BN twin's features: encoder_clean/, best_clean/
        C.export_model(pair.released("clean").state_dict(), setup, f"{folder}_clean", 0, keys)
        return C.export_model(pair.released().state_dict(), setup, folder, 0, keys)

    curve = None if setup.held is None else H.tracker(
        setup, setup.held, lambda: H.probe(pair.released(), setup.ds, recipe), lambda: export("best"))
    return C.fit(args, setup, pair, pair, make_optimizer(pair, recipe), make_step(setup, pair, args.seed),
                 lr_schedule(setup), export, curve)


def main(argv=None) -> int:
    return C.main("python -m training.dynacl", __doc__, train, KINDS, argv)


if __name__ == "__main__":
    sys.exit(main())
