"""The training steps of the zoo, one function each: SimCLR, RoCL, DeACL, DynACL, PGD-AT, TRADES, and the SLF and
ALF heads.

Every trainer (training.pretrain, training.supervised, rocl_zoo.finetune, rocl_zoo.linear) calls these, so one
method is one function wherever it trains. A step takes the model, one batch on the device and a generator for
its random draws (attack starts), runs the attack and the forward passes under `amp` (a context factory from
rocl_zoo.precision) and returns a StepOut; the loop (rocl_zoo.loop) backpropagates `objective` and steps the
optimiser. Attacks run the model in eval mode (BN running statistics) with input-only gradients; the training
forward runs in whatever mode the caller set (train mode, or eval for a frozen encoder's head).

`model` is what the training forward goes through (a DDP wrapper in multi-process runs); `net` is the bare module
the attack differentiates (default: `model`). The attack never goes through DDP: it would sync buffers and
gradients that an attack does not have.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from .attacks import attack_mode, attack_view, feature_attack, instance_attack, pair_attack, pgd, trades_attack
from .losses import deacl_loss, dynacl_loss, rocl_loss, simclr_loss, trades_loss
from .models.dual_bn import bn_route

NO_AMP = contextlib.nullcontext


@dataclass
class StepOut:
    objective: torch.Tensor                 # what the loop backpropagates
    loss: torch.Tensor                      # what it logs (detached)
    logits: torch.Tensor | None = None      # for the running accuracy of classifier steps
    x_adv: torch.Tensor | None = None       # the training attack's examples, when there is one
    logs: dict = field(default_factory=dict)  # further scalars to log (keys ending in _max: the loop keeps the max)
    batch_size: int = 0                     # images this step trained on (the global batch under DDP)
    labels: torch.Tensor | None = None      # the labels `logits` are scored against


def perturbation_logs(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> dict:
    """The training attack's perturbation size (l-inf or l2, per example): mean and max over the batch."""
    d = (x_adv.detach() - x).flatten(1).float()
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    return dict(adv_size_mean=float(size.mean()), adv_size_max=float(size.max()))


# --------------------------------------------------------------------------------------------- contrastive


def simclr_step(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, *, temperature: float = 0.5,
                detach_other_side: bool = True, gather: Callable | None = None, world: int = 1,
                amp: Callable = NO_AMP) -> StepOut:
    """SimCLR: NT-Xent over the two views of the (gathered) batch. The non-robust baseline."""
    with record_function("step/forward"), amp():
        z = model(torch.cat([x1, x2])).float()
    with record_function("step/loss"):
        if gather is not None:
            z = torch.cat([gather(v) for v in z.chunk(2)])
        loss = simclr_loss(z, temperature, detach_other_side)
    # gradients reach only the local rows of the gathered batch: times the world size, DDP's average is the
    # gradient of the global loss
    return StepOut(loss * world, loss.detach(), logs=dict(loss_contrastive=float(loss.detach()), loss_reg=0.0),
                   batch_size=len(x1) * world)


def rocl_step(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, noise: torch.Tensor, *, eps: float,
              alpha: float, steps: int, temperature: float = 0.5, lam: float = 256.0,
              detach_other_side: bool = True, reg_pass: str = "fused", net: nn.Module | None = None,
              gather: Callable | None = None, attack_gather: Callable | None = None, world: int = 1,
              view_weights: torch.Tensor | None = None, amp: Callable = NO_AMP) -> StepOut:
    """RoCL (Kim, Tack & Hwang, NeurIPS 2020): the instance-wise attack on t(x) against t'(x), then 3-view
    NT-Xent over [t(x); t'(x); t(x)_adv] + (1/lam) NT-Xent(t(x)_adv, t'(x)). view_weights: the 3-view term's
    weights (A-InfoNCE's inferior positives: rocl_zoo.losses.inferior_positive_weights).

    noise: uniform [0, 1) draws for the attack's random start, shaped like x1 (drawn by the caller for the whole
    global batch so that a DDP run starts where one process would). reg_pass="fused" takes the regulariser's
    embeddings from the 3N batch; "separate" runs the original's own train-mode pass over [t(x)_adv; t'(x)].
    """
    net = model if net is None else net
    with record_function("step/attack"), amp():
        x_adv = instance_attack(attack_view(net), x1, x2, eps=eps, alpha=alpha, steps=steps,
                                temperature=temperature, delta_init=(2 * noise - 1) * eps,
                                detach_other_side=detach_other_side, gather=attack_gather)
    with record_function("step/forward"), amp():
        z = model(torch.cat([x1, x2, x_adv])).float()
        z_reg = net(torch.cat([x_adv, x2])).float().chunk(2) if reg_pass == "separate" and lam else None
    with record_function("step/loss"):
        if gather is not None:
            z = torch.cat([gather(v) for v in z.chunk(3)])
        loss, con, reg = rocl_loss(z, temperature, lam, detach_other_side, z_reg, view_weights)
    # the gathered term is scaled by the world size (see simclr_step); a separate-pass regulariser is local
    objective = con * world + reg if z_reg is not None else loss * world
    logs = dict(loss_contrastive=float(con.detach()), loss_reg=float(reg.detach()))
    return StepOut(objective, loss.detach(), x_adv=x_adv, logs=logs, batch_size=len(x1) * world)


def deacl_step(model: nn.Module, x: torch.Tensor, teacher: nn.Module, noise: torch.Tensor, *, eps: float,
               alpha: float, steps: int, k: float = 2.0, net: nn.Module | None = None, world: int = 1,
               amp: Callable = NO_AMP) -> StepOut:
    """DeACL's stage 2 (Zhang et al., ECCV 2022): the frozen teacher's features t(x) of a weakly augmented batch,
    the feature attack that pushes the student's features away from them, then one train-mode forward of
    [x; x_adv] and -cos(s(x), t(x)) - k cos(s(x_adv), s(x)).

    model / net: the student (features out, no projector); teacher: the clean SSL encoder, in eval mode.
    noise: uniform [0, 1) draws for the attack's start, shaped like x (drawn for the whole global batch).
    """
    net = model if net is None else net
    with record_function("step/teacher"), torch.no_grad(), amp():
        target = teacher(x).float()
    with record_function("step/attack"), amp():
        x_adv = feature_attack(attack_view(net), x, target, eps=eps, alpha=alpha, steps=steps,
                               delta_init=(2 * noise - 1) * eps)
    with record_function("step/forward"), amp():
        s_clean, s_adv = model(torch.cat([x, x_adv])).float().chunk(2)
    with record_function("step/loss"):
        loss, distill, robust = deacl_loss(s_clean, s_adv, target, k)
    logs = dict(loss_distill=float(distill.detach()), loss_robust=float(robust.detach()),
                **perturbation_logs(x_adv, x, "linf"))
    return StepOut(loss, loss.detach(), x_adv=x_adv, logs=logs, batch_size=len(x) * world)


def dynacl_step(online: nn.Module, momentum: nn.Module, x1: torch.Tensor, x2: torch.Tensor, noise: torch.Tensor, *,
                eps: float, alpha: float, steps: int, weight: float, temperature: float = 0.5,
                amp: Callable = NO_AMP) -> StepOut:
    """DynACL (Luo et al., ICLR 2023), as its code does it: the first view through the online network, the second
    through the momentum network (no gradient to its weights); the pair attack in eval mode with the adversarial
    BN; then train-mode forwards of the adversarial pair (adversarial BN) and the clean pair (clean BN), and
    [(2 - w) NT-Xent(clean) + w NT-Xent(adversarial)] / 2. The caller moves the momentum network afterwards.

    online, momentum: encoder + projector with dual BN (rocl_zoo.models.dual_bn). noise: uniform [0, 1) draws
    shaped like cat([x1, x2]).
    """
    def embed(a, b):
        return online(a), momentum(b)

    with record_function("step/attack"), amp(), attack_mode(online), attack_mode(momentum), \
            bn_route(online, "adv"), bn_route(momentum, "adv"):
        a1, a2 = pair_attack(embed, x1, x2, eps=eps, alpha=alpha, steps=steps, temperature=temperature, noise=noise)
    with record_function("step/forward"), amp():
        with bn_route(online, "adv"), bn_route(momentum, "adv"):
            adv = (online(a1).float(), momentum(a2).float())
        with bn_route(online, "clean"), bn_route(momentum, "clean"):
            clean = (online(x1).float(), momentum(x2).float())
    with record_function("step/loss"):
        loss, c, a = dynacl_loss(clean, adv, weight, temperature)
    logs = dict(loss_clean=float(c.detach()), loss_adv=float(a.detach()), adv_weight=float(weight),
                **perturbation_logs(torch.cat([a1, a2]), torch.cat([x1, x2]), "linf"))
    return StepOut(loss, loss.detach(), x_adv=a1, logs=logs, batch_size=len(x1))


# --------------------------------------------------------------------------------------------- classifiers


def pgd_at_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int,
                norm: str = "linf", generator: torch.Generator | None = None, net: nn.Module | None = None,
                amp: Callable = NO_AMP) -> StepOut:
    """PGD-AT (Madry et al. 2018): cross-entropy on PGD examples (random start, the last iterate)."""
    with record_function("step/attack"), amp():
        x_adv = pgd(attack_view(model if net is None else net), x, y, eps, alpha=alpha, steps=steps, norm=norm,
                    random_start=True, keep_best=False, generator=generator)
    with record_function("step/forward"), amp():
        logits = model(x_adv).float()
    with record_function("step/loss"):
        loss = F.cross_entropy(logits, y)
    return StepOut(loss, loss.detach(), logits.detach(), x_adv, perturbation_logs(x_adv, x, norm), len(x), y)


def trades_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int,
                beta: float = 6.0, norm: str = "linf", generator: torch.Generator | None = None,
                net: nn.Module | None = None, amp: Callable = NO_AMP) -> StepOut:
    """TRADES (Zhang et al. 2019): CE(f(x), y) + beta KL(f(x) || f(x_adv)), the attack maximising the KL.

    Clean and adversarial images go through the model as one batch, so BN normalises both with the statistics of
    their mix, which its running statistics (what evaluation uses) also average. TRADES's code runs two passes,
    each normalised by its own batch: the model then learns to rely on adversarial batch statistics it never sees
    at evaluation. Trained that way (fmnist_trades, 20 epochs), the last epoch's APGD-CE accuracy was 49.4 % on 500
    test images, and 73.2 % with the same weights and BN statistics recomputed on PGD-10 images
    (scripts/bn_statistics.py)."""
    with record_function("step/attack"), amp():
        x_adv = trades_attack(attack_view(model if net is None else net), x, eps, alpha, steps, norm,
                              generator=generator)
    with record_function("step/forward"), amp():
        logits, logits_adv = model(torch.cat([x, x_adv])).float().split(len(x))
    with record_function("step/loss"):
        loss = trades_loss(logits, logits_adv, y, beta)
    logs = dict(train_adv_acc=float((logits_adv.argmax(1) == y).float().mean()), **perturbation_logs(x_adv, x, norm))
    return StepOut(loss, loss.detach(), logits.detach(), x_adv, logs, len(x), y)


# --------------------------------------------------------------------------------------------- linear heads


def slf_head_step(head: nn.Module, features: torch.Tensor, y: torch.Tensor) -> StepOut:
    """Standard linear evaluation: the head on a frozen encoder's features (computed once, un-augmented)."""
    logits = head(features)
    loss = F.cross_entropy(logits, y)
    return StepOut(loss, loss.detach(), logits.detach(), batch_size=len(y), labels=y)


def alf_head_step(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float,
                  steps: int, norm: str = "linf", generator: torch.Generator | None = None,
                  amp: Callable = NO_AMP) -> StepOut:
    """Robust linear evaluation (ALF / rLE): PGD through the frozen encoder and the current head, then the head
    on the frozen features of those examples. `classifier` is in eval mode with only its head trainable."""
    with record_function("step/attack"), amp():
        x_adv = pgd(attack_view(classifier), x, y, eps, alpha=alpha, steps=steps, norm=norm, random_start=True,
                    keep_best=False, generator=generator)
    with record_function("step/forward"), amp():
        with torch.no_grad():
            features = classifier.forward_head(classifier.forward_features(x_adv), pre_logits=True)
        logits = classifier.get_classifier()(features).float()
    with record_function("step/loss"):
        loss = F.cross_entropy(logits, y)
    return StepOut(loss, loss.detach(), logits.detach(), x_adv, perturbation_logs(x_adv, x, norm), len(x), y)
