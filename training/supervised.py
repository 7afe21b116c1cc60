"""Supervised adversarial-training baselines with the same data and architectures: PGD-AT and TRADES.

    python -m training.supervised --recipe fmnist_at --out runs/fmnist_at
    python -m training.supervised --recipe fmnist_trades --out runs/fmnist_trades --resume

- PGD-AT (Madry et al. 2018): minimise cross-entropy on PGD examples (l-inf, `attack_steps` steps of `alpha`,
  random start, the last iterate) made by `rocl_zoo.attacks.pgd` with the model in eval mode.
- TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(f(x) || f(x_adv)), x_adv maximising the KL term from
  x + 0.001 N(0, 1) with sign steps (as the TRADES code), beta = 6.
SGD momentum 0.9, LR /10 at the recipe's milestones; augmentation: random crop (4-pixel zero padding, 2 at
28x28) and horizontal flip. Same run folder, checkpoints, exact resume and torchrun DDP as training.pretrain;
the result is a classifier in the zoo's Hub layout in <out>/model.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

import rocl_zoo.models  # noqa: F401
from rocl_zoo.attacks import pgd, trades_attack
from rocl_zoo.losses import trades_loss

from . import common as C

KINDS = ("at", "trades")


def crop_flip(x: torch.Tensor, g: torch.Generator, pad: int) -> torch.Tensor:
    """Random crop with zero padding `pad` and horizontal flip, per sample, as one exact integer-shift sampling."""
    B, _, H, W = x.shape
    dx = torch.randint(-pad, pad + 1, (B,), generator=g).float()
    dy = torch.randint(-pad, pad + 1, (B,), generator=g).float()
    flip = torch.where(torch.rand(B, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = flip, 2 * dx / W * flip
    theta[:, 1, 1], theta[:, 1, 2] = 1.0, 2 * dy / H
    theta = theta.to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def train(args) -> Path:
    setup = C.start_run(args, KINDS)
    recipe, dist, run, config, ds, info, local = (setup.recipe, setup.dist, setup.run, setup.config, setup.ds,
                                                  setup.info, setup.local)
    device, world, rank = dist.device, dist.world, dist.rank
    steps_per_epoch, total, stop = setup.steps_per_epoch, setup.total, setup.stop

    torch.manual_seed(args.seed)
    net = timm.create_model(recipe.arch, num_classes=len(ds.classes), in_chans=info.input_size[0], mean=info.mean,
                            std=info.std)
    if world > 1:
        net = C.convert_sync_batchnorm(net, device)
    channels_last = C.use_channels_last(recipe.channels_last, device, recipe.arch)
    net = net.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    opt = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    ckpt = run.start(config, args.resume)
    step = 0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        C.set_rng_state(ckpt["rng"])
        step = ckpt["step"]
    model = nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else net

    images, labels = ds.images, ds.labels
    rows = slice(rank * local, (rank + 1) * local)
    pad = 2 if ds.input_size[-1] <= 28 else 4
    meter, bar = C.Meter(), C.progress(stop, step, dist.main and not args.quiet, recipe.name)
    perm, perm_epoch = None, -1
    net.train()
    while step < stop:
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch != perm_epoch:
            perm, perm_epoch = C.epoch_permutation(len(ds), args.seed, epoch), epoch
        idx = perm[pos * recipe.batch_size:(pos + 1) * recipe.batch_size]
        g = C.step_generator(args.seed, step)
        x = crop_flip(images[idx].float().div_(255), g, pad)[rows].to(device)  # params for the global batch
        y = labels[idx][rows].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = C.multistep_lr(step, steps_per_epoch, recipe.lr, recipe.lr_milestones)
        for group in opt.param_groups:
            group["lr"] = lr
        with C.autocast(recipe.amp, device):
            if recipe.kind == "at":
                torch.manual_seed(C.step_generator(args.seed, step).initial_seed() + rank)  # pgd's random start
                x_adv = pgd(net, x, y, eps=recipe.eps, alpha=recipe.alpha, steps=recipe.attack_steps,
                            random_start=True, keep_best=False)
                loss = F.cross_entropy(model(x_adv).float(), y)
            else:
                x_adv = trades_attack(net, x, recipe.eps, recipe.alpha, recipe.attack_steps, generator=g)
                nat, adv = model(torch.cat([x, x_adv])).chunk(2)
                loss = trades_loss(nat, adv, y, recipe.trades_beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        meter.add(recipe.batch_size)
        bar.update(1)
        if step % recipe.log_every == 0 or step == stop:
            record = dict(step=step, epoch=round(step / steps_per_epoch, 4), loss=loss.item(), lr=lr,
                          images_per_s=round(meter.rate(), 2), time=time.time())
            run.log(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
        if step % recipe.ckpt_every == 0 or step == stop:
            if dist.main:
                C.save_checkpoint(run.checkpoint, dict(step=step, model=net.state_dict(), optimizer=opt.state_dict(),
                                                       rng=C.rng_state(), config=config))
            dist.barrier()
    bar.close()
    if step == total and dist.main:
        C.export_model(net.state_dict(), setup, "model", len(ds.classes), ("trades_beta",))
    dist.barrier()
    dist.close()
    return run.path


def main(argv=None) -> int:
    return C.main("python -m training.supervised", __doc__, train, KINDS, argv)


if __name__ == "__main__":
    sys.exit(main())
