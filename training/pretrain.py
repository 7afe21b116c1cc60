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
SimCLR is rocl_zoo.steps.simclr_step: no attack. DeACL (rocl_zoo.steps.deacl_step) starts the student from a
frozen clean SSL teacher (`recipe.teacher`) and distils its features under a feature attack, on crop-and-flip
views, with no projector. Precision: `--amp auto` trains in bf16 autocast on CUDA and on
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
from rocl_zoo.data import RoclAugment, crop_flip, crop_pad
from rocl_zoo.losses import inferior_positive_weights
from rocl_zoo.models import ProjectionHead

from . import common as C
from . import heldout as H

KINDS = ("rocl", "simclr", "deacl")


class ContrastiveNet(nn.Module):
    """Encoder (pooled features) + projector: what the attack and the loss see."""

    def __init__(self, encoder: nn.Module, projector: nn.Module):
        super().__init__()
        self.encoder, self.projector = encoder, projector

    def forward(self, x):
        return self.projector(self.encoder(x))


def build(recipe, info, teacher: nn.Module | None = None) -> ContrastiveNet:
    """Encoder + projector; DeACL's student is a copy of the teacher with no projector."""
    encoder = timm.create_model(recipe.arch, num_classes=0, in_chans=info.input_size[0], mean=info.mean,
                                std=info.std)
    if teacher is not None:
        encoder.load_state_dict(teacher.state_dict())
        return ContrastiveNet(encoder, nn.Identity())
    return ContrastiveNet(encoder, ProjectionHead(encoder.num_features, recipe.proj_hidden, recipe.proj_out))


def load_teacher(recipe, info) -> nn.Module:
    """DeACL's teacher: the recipe's clean SSL encoder, verified, without its head, frozen in eval mode."""
    from rocl_zoo.errors import ConfigError
    from rocl_zoo.hub import architecture_of, load_encoder

    teacher = load_encoder(recipe.teacher)
    if architecture_of(teacher) != recipe.arch or teacher.in_chans != info.input_size[0]:
        raise ConfigError(f"teacher {recipe.teacher} is a {teacher.in_chans}-channel {architecture_of(teacher)}; "
                          f"recipe {recipe.name} trains a {info.input_size[0]}-channel {recipe.arch}.")
    return teacher.requires_grad_(False)


def make_optimizer(net: nn.Module, recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "lars":
        return C.LARS(C.param_groups(net, recipe.weight_decay, recipe.lars_exclude_bn_bias), lr=recipe.lr,
                      momentum=recipe.momentum, trust_coef=recipe.trust_coef)
    return torch.optim.SGD(C.param_groups(net, recipe.weight_decay, False), lr=recipe.lr, momentum=recipe.momentum)


def make_deacl_step(setup: C.RunSetup, net: nn.Module, model: nn.Module, teacher: nn.Module, seed: int):
    """DeACL's step function: crop and flip drawn for the whole global batch, this process's rows, the step."""
    recipe, ds, rows, B = setup.recipe, setup.ds, setup.rows(), setup.recipe.batch_size
    pad = crop_pad(ds.input_size)

    def step_fn(step, g):
        with record_function("data/augment"):
            idx = L.batch_indices(len(ds), B, seed, step, setup.steps_per_epoch)
            x = C.to_device(crop_flip(ds.images[idx].float().div_(255), g, pad)[rows], setup)
        noise = torch.rand((B, *ds.input_size), generator=g)[rows].to(x)
        return S.deacl_step(model, x, teacher, noise, eps=recipe.eps, alpha=recipe.alpha, steps=recipe.attack_steps,
                            k=recipe.deacl_k, net=net, world=setup.dist.world, amp=setup.amp)

    return step_fn


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
    weights = inferior_positive_weights(recipe.ip_degree, recipe.ip_adv_weight) if recipe.inferior_positives else None

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
                           attack_gather=attack_gather if global_negatives else None, view_weights=weights, **common)

    return step_fn


def lr_schedule(setup: C.RunSetup):
    r = setup.recipe
    return lambda step: C.warmup_cosine_lr(step, setup.total, setup.steps_per_epoch, r.lr, r.warmup_epochs,
                                           r.warmup_multiplier)


def train(args) -> Path:
    setup = C.start_run(args, KINDS)
    torch.manual_seed(args.seed)
    recipe = setup.recipe
    teacher = load_teacher(recipe, setup.info) if recipe.kind == "deacl" else None
    net, model = C.prepare(build(recipe, setup.info, teacher), setup)
    keys = ("teacher", "deacl_k") if teacher is not None else ("temperature", "lam", "inferior_positives", "ip_degree",
                                                                 "ip_adv_weight")

    def export(folder="encoder"):
        return C.export_model(net.encoder.state_dict(), setup, folder, 0, keys)

    curve = None if setup.held is None else H.tracker(
        setup, setup.held, lambda: H.probe(net.encoder, setup.ds, setup.recipe), lambda: export("best"))
    if teacher is not None:
        step_fn = make_deacl_step(setup, net, model, C.place(teacher, setup), args.seed)
    else:
        step_fn = make_step(setup, net, model, args.seed)
    return C.fit(args, setup, net, model, make_optimizer(net, recipe), step_fn, lr_schedule(setup), export, curve)


def main(argv=None) -> int:
    return C.main("python -m training.pretrain", __doc__, train, KINDS, argv)


if __name__ == "__main__":
    sys.exit(main())
