"""RoCL (and SimCLR) pretraining: one readable loop.

    python -m training.pretrain --recipe fmnist_rocl --out runs/fmnist_rocl
    python -m training.pretrain --recipe fmnist_rocl --out runs/fmnist_rocl --resume
    torchrun --nproc_per_node=2 -m training.pretrain --recipe cifar10_resnet18_rocl --out runs/c10 --device cuda

One step of RoCL, for a global batch of N images split over the processes:
  1. two augmented views t(x), t'(x) (parameters drawn for the whole global batch, each process takes its rows);
  2. rocl_zoo.steps.rocl_step: the instance-wise attack t(x)_adv in eval mode, one train-mode forward of the
     3 views through encoder + projector (one BN, SyncBN across processes), projections gathered from every
     process (the local part keeps its gradient), RoCL loss = 3-view NT-Xent + (1/lambda) NT-Xent(t(x)_adv, t'(x));
  3. rocl_zoo.loop: backward, LARS step, LR from the warm-up + cosine schedule, logs, checkpoints.
SimCLR is rocl_zoo.steps.simclr_step: no attack. Precision: `--amp auto` trains in bf16 autocast on CUDA and on
CPUs with native bf16, in fp32 elsewhere (rocl_zoo.precision). The run folder holds config.json, metrics.jsonl,
checkpoint.pt and, at the end, encoder/ in the zoo's Hub layout (`rocl_zoo.load(run / "encoder")`).
"""
from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch
from torch import nn
from torch.profiler import record_function

import rocl_zoo.models  # noqa: F401  (registers the architectures)
from rocl_zoo import loop as L
from rocl_zoo import steps as S
from rocl_zoo.data import RoclAugment
from rocl_zoo.models import ProjectionHead

from . import common as C
from . import heldout as H

KINDS = ("rocl", "simclr")


class ContrastiveNet(nn.Module):
    """Encoder (pooled features) + projector: what the attack and the loss see."""

    def __init__(self, encoder: nn.Module, projector: nn.Module):
        super().__init__()
        self.encoder, self.projector = encoder, projector

    def forward(self, x):
        return self.projector(self.encoder(x))


def build(recipe, info) -> ContrastiveNet:
    encoder = timm.create_model(recipe.arch, num_classes=0, in_chans=info.input_size[0], mean=info.mean,
                                std=info.std)
    return ContrastiveNet(encoder, ProjectionHead(encoder.num_features, recipe.proj_hidden, recipe.proj_out))


def make_optimizer(net: nn.Module, recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "lars":
        return C.LARS(C.param_groups(net, recipe.weight_decay, recipe.lars_exclude_bn_bias), lr=recipe.lr,
                      momentum=recipe.momentum, trust_coef=recipe.trust_coef)
    return torch.optim.SGD(C.param_groups(net, recipe.weight_decay, False), lr=recipe.lr, momentum=recipe.momentum)


def make_step(setup: C.RunSetup, net: nn.Module, model: nn.Module, seed: int):
    """The step function of the run: the batch of step s, its two views, then the SimCLR or RoCL step."""
    recipe, dist, ds = setup.recipe, setup.dist, setup.ds
    images = ds.images.pin_memory() if dist.device.type == "cuda" else ds.images
    aug, rows, B = RoclAugment(ds.input_size[1:]), setup.rows(), recipe.batch_size

    def gather(z):
        return C.gather_with_grad(z, dist.world, dist.rank)

    def attack_gather(z):  # detached embeddings from every rank, and where this rank's rows start
        return gather(z), dist.rank * z.shape[0]

    multi = dict(gather=gather, world=dist.world) if dist.world > 1 else {}
    common = dict(temperature=recipe.temperature, detach_other_side=recipe.detach_other_side, amp=setup.amp, **multi)
    global_negatives = recipe.attack_negatives == "global" and dist.world > 1

    def step_fn(step, g):
        """Two views of this process's rows (augmentations drawn for the whole global batch), then the step."""
        with record_function("data/augment"):
            x = images[L.batch_indices(len(ds), B, seed, step, setup.steps_per_epoch)[rows]]
            x = x.to(dist.device, non_blocking=True)
            p1, p2 = aug.sample(B, g), aug.sample(B, g)
            x1 = C.to_device(aug.apply(x, aug.slice(p1, rows.start, rows.stop)), setup)
            x2 = C.to_device(aug.apply(x, aug.slice(p2, rows.start, rows.stop)), setup)
        if recipe.kind == "simclr":
            return S.simclr_step(model, x1, x2, **common)
        noise = torch.rand((B, *ds.input_size), generator=g)[rows].to(x1)
        return S.rocl_step(model, x1, x2, noise, eps=recipe.eps, alpha=recipe.alpha, steps=recipe.attack_steps,
                           lam=recipe.lam, reg_pass=recipe.reg_pass, net=net,
                           attack_gather=attack_gather if global_negatives else None, **common)

    return step_fn


def lr_schedule(setup: C.RunSetup):
    r = setup.recipe
    return lambda step: C.warmup_cosine_lr(step, setup.total, setup.steps_per_epoch, r.lr, r.warmup_epochs,
                                           r.warmup_multiplier)


def train(args) -> Path:
    setup = C.start_run(args, KINDS)
    torch.manual_seed(args.seed)
    net, model = C.prepare(build(setup.recipe, setup.info), setup)
    def export(folder="encoder"):
        return C.export_model(net.encoder.state_dict(), setup, folder, 0, ("temperature", "lam"))

    curve = None if setup.held is None else H.tracker(
        setup, setup.held, lambda: H.probe(net.encoder, setup.ds, setup.recipe), lambda: export("best"))
    return C.fit(args, setup, net, model, make_optimizer(net, setup.recipe), make_step(setup, net, model, args.seed),
                 lr_schedule(setup), export, curve)


def main(argv=None) -> int:
    return C.main("python -m training.pretrain", __doc__, train, KINDS, argv)


if __name__ == "__main__":
    sys.exit(main())
