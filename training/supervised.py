"""Supervised adversarial-training baselines with the same data and architectures: PGD-AT and TRADES; and, with
`pseudo_labels`, DynACL++'s label-free TRADES on k-means pseudo-labels from `start` (training/pseudo.py).

    python -m training.supervised --recipe fmnist_at --out runs/fmnist_at
    python -m training.supervised --recipe fmnist_trades --out runs/fmnist_trades --resume

- PGD-AT (Madry et al. 2018), rocl_zoo.steps.pgd_at_step: cross-entropy on PGD examples (l-inf,
  `attack_steps` steps of `alpha`, random start, the last iterate) made with the model in eval mode.
- TRADES (Zhang et al. 2019), rocl_zoo.steps.trades_step: CE(f(x), y) + beta * KL(f(x) || f(x_adv)), x_adv
  maximising the KL term from x + 0.001 N(0, 1) with sign steps (as the TRADES code), beta = 6; clean and
  adversarial images in one forward pass (TRADES's code runs two: see trades_step for why not).
`rocl_zoo.finetune --mode at|trades` trains with the same two step functions.
SGD momentum 0.9, LR /10 at the recipe's milestones; augmentation: random crop (4-pixel zero padding, 2 at
28x28) and horizontal flip. Same run folder, checkpoints, exact resume and torchrun DDP as training.pretrain;
the result is a classifier in the zoo's Hub layout in <out>/model.
"""
from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch
from torch import nn
from torch.profiler import record_function

import rocl_zoo.models  # noqa: F401
from rocl_zoo import loop as L
from rocl_zoo import steps as S
from rocl_zoo.data import crop_flip, crop_pad

from . import common as C
from . import heldout as H
from . import pseudo as P

KINDS = ("at", "trades")


def build(recipe, info, num_classes: int) -> nn.Module:
    return timm.create_model(recipe.arch, num_classes=num_classes, in_chans=info.input_size[0], mean=info.mean,
                             std=info.std)


def make_optimizer(net: nn.Module, recipe) -> torch.optim.Optimizer:
    return torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


def make_step(setup: C.RunSetup, net: nn.Module, model: nn.Module, seed: int):
    """The step function of the run: crop and flip drawn for the whole global batch, this process's rows, then
    the PGD-AT or TRADES step."""
    recipe, dist, ds = setup.recipe, setup.dist, setup.ds
    rows, B = setup.rows(), recipe.batch_size
    pad = crop_pad(ds.input_size)
    attack = dict(eps=recipe.eps, alpha=recipe.alpha, steps=recipe.attack_steps, net=net, amp=setup.amp)

    def step_fn(step, g):
        with record_function("data/augment"):
            idx = L.batch_indices(len(ds), B, seed, step, setup.steps_per_epoch)
            x = C.to_device(crop_flip(ds.images[idx].float().div_(255), g, pad)[rows], setup)
            y = ds.labels[idx][rows].to(dist.device)
        if recipe.kind == "at":
            out = S.pgd_at_step(model, x, y, generator=g, **attack)
        else:
            out = S.trades_step(model, x, y, beta=recipe.trades_beta, generator=g, **attack)
        out.batch_size = B
        return out

    return step_fn


def lr_schedule(setup: C.RunSetup):
    r = setup.recipe
    return lambda step: L.multistep_lr(step, setup.steps_per_epoch, r.lr, r.lr_milestones)


def train(args) -> Path:
    setup = C.start_run(args, KINDS)
    torch.manual_seed(args.seed)
    recipe, labelled = setup.recipe, setup.ds
    if recipe.pseudo_labels:  # DynACL++: no true label trains anything from here on (training/pseudo.py)
        setup.ds = P.relabel(setup.ds, recipe.pseudo_labels, setup.run.path, args.seed, recipe.pseudo_clusters)
        if setup.ckpt is None:  # how good the clusters are, for the record: measured once, never trained on
            setup.run.log({"record": "pseudo_labels", "source": recipe.pseudo_labels, "clusters": len(setup.ds.classes),
                           **P.cluster_scores(setup.ds.labels, labelled.labels, len(labelled.classes))})
    classes = len(setup.ds.classes)
    net = build(recipe, setup.info, classes)
    if recipe.start and setup.ckpt is None:
        P.start_from(net, recipe.start, setup.ds, recipe.pseudo_probe_epochs, args.seed)
    net, model = C.prepare(net, setup)
    folder, num_classes = ("encoder", 0) if recipe.pseudo_labels else ("model", classes)

    def export(name=folder):
        state = net.state_dict()
        if not num_classes:  # the encoder: a head over clusters means nothing to a user
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        return C.export_model(state, setup, name, num_classes, ("trades_beta", "start", "pseudo_labels"))

    if setup.held is None:
        curve = None
    else:
        # with pseudo-labels the curve reads the encoder out as the zoo's heads do: a probe on the true labels
        classifier = (lambda: H.probe(P.encoder_of(net), labelled, recipe)) if recipe.pseudo_labels else (lambda: net)
        curve = H.tracker(setup, setup.held, classifier, lambda: export("best"))
    return C.fit(args, setup, net, model, make_optimizer(net, recipe), make_step(setup, net, model, args.seed),
                 lr_schedule(setup), export, curve)


def main(argv=None) -> int:
    return C.main("python -m training.supervised", __doc__, train, KINDS, argv)


if __name__ == "__main__":
    sys.exit(main())
