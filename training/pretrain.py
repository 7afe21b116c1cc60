"""RoCL (and SimCLR) pretraining: one readable loop.

    python -m training.pretrain --recipe fmnist_rocl --out runs/fmnist_rocl
    python -m training.pretrain --recipe fmnist_rocl --out runs/fmnist_rocl --resume
    torchrun --nproc_per_node=2 -m training.pretrain --recipe cifar10_resnet18_rocl --out runs/c10 --device cuda

One step of RoCL (DESIGN.md section 1), for a global batch of N images split over the processes:
  1. two augmented views t(x), t'(x) (parameters drawn for the whole global batch, each process takes its rows);
  2. the instance-wise attack t(x)_adv = PGD maximising NT-Xent(t(x)_adv, t'(x)) in eval mode, with the
     target embedded once without gradient and input-only gradients (rocl_zoo.attacks.instance_attack);
  3. one train-mode forward of the 3 views through encoder + projector (one BN, SyncBN across processes);
  4. projections gathered from every process (the local part keeps its gradient), RoCL loss = 3-view NT-Xent
     + (1/lambda) NT-Xent(t(x)_adv, t'(x)); 5. backward, LARS step, LR from the warm-up + cosine schedule.
SimCLR is the same loop without step 2. The run folder holds config.json, metrics.jsonl, checkpoints/last.pt
and, at the end, encoder/ in the zoo's Hub layout (`rocl_zoo.load(run / "encoder")`).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import timm
import torch
from torch import nn

import rocl_zoo.models  # noqa: F401  (registers the architectures)
from rocl_zoo.attacks import instance_attack
from rocl_zoo.data import RoclAugment
from rocl_zoo.losses import rocl_loss, simclr_loss
from rocl_zoo.models import ProjectionHead

from . import common as C

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


def train(args) -> Path:
    setup = C.start_run(args, KINDS)
    recipe, dist, run, config, ds, info, local = (setup.recipe, setup.dist, setup.run, setup.config, setup.ds,
                                                  setup.info, setup.local)
    device, world, rank = dist.device, dist.world, dist.rank
    steps_per_epoch, total, stop = setup.steps_per_epoch, setup.total, setup.stop

    torch.manual_seed(args.seed)
    net = build(recipe, info)
    if world > 1:
        net = C.convert_sync_batchnorm(net, device)
    channels_last = C.use_channels_last(recipe.channels_last, device, recipe.arch)
    net = net.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if recipe.optimizer == "lars":
        opt = C.LARS(C.param_groups(net, recipe.weight_decay, recipe.lars_exclude_bn_bias), lr=recipe.lr,
                     momentum=recipe.momentum, trust_coef=recipe.trust_coef)
    else:
        opt = torch.optim.SGD(C.param_groups(net, recipe.weight_decay, False), lr=recipe.lr, momentum=recipe.momentum)

    ckpt = run.start(config, args.resume)
    step = 0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        C.set_rng_state(ckpt["rng"])
        step = ckpt["step"]
    model = net
    if world > 1:
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint():
        if dist.main:
            C.save_checkpoint(run.checkpoint, dict(step=step, model=net.state_dict(), optimizer=opt.state_dict(),
                                                   rng=C.rng_state(), config=config))
        dist.barrier()

    def gather(z):
        return C.gather_with_grad(z, world, rank)

    def attack_gather(z):  # detached embeddings from every rank, and where this rank's rows start
        return C.gather_with_grad(z, world, rank), rank * z.shape[0]

    images = ds.images.pin_memory() if device.type == "cuda" else ds.images
    _, H, W = ds.input_size
    aug = RoclAugment((H, W))
    rows = slice(rank * local, (rank + 1) * local)
    n_views = 3 if recipe.kind == "rocl" else 2
    meter, bar = C.Meter(), C.progress(stop, step, dist.main and not args.quiet, recipe.name)
    perm, perm_epoch = None, -1
    net.train()
    while step < stop:
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch != perm_epoch:
            perm, perm_epoch = C.epoch_permutation(len(ds), args.seed, epoch), epoch
        idx = perm[pos * recipe.batch_size:(pos + 1) * recipe.batch_size][rows]
        x = images[idx].to(device, non_blocking=True)
        g = C.step_generator(args.seed, step)
        p1, p2 = aug.sample(recipe.batch_size, g), aug.sample(recipe.batch_size, g)
        x1, x2 = aug.apply(x, aug.slice(p1, rows.start, rows.stop)), aug.apply(x, aug.slice(p2, rows.start, rows.stop))
        if channels_last:
            x1, x2 = x1.contiguous(memory_format=torch.channels_last), x2.contiguous(memory_format=torch.channels_last)
        lr = C.warmup_cosine_lr(step, total, steps_per_epoch, recipe.lr, recipe.warmup_epochs,
                                recipe.warmup_multiplier)
        for group in opt.param_groups:
            group["lr"] = lr

        views = [x1, x2]
        if recipe.kind == "rocl":
            noise = torch.rand((recipe.batch_size, *ds.input_size), generator=g)[rows]
            with C.autocast(recipe.amp, device):
                x_adv = instance_attack(net, x1, x2, eps=recipe.eps, alpha=recipe.alpha, steps=recipe.attack_steps,
                                        temperature=recipe.temperature, delta_init=(2 * noise - 1) * recipe.eps,
                                        detach_other_side=recipe.detach_other_side,
                                        gather=attack_gather if recipe.attack_negatives == "global" and world > 1
                                        else None)
            views.append(x_adv)
        with C.autocast(recipe.amp, device):
            z = model(torch.cat(views)).float()
        z_all = torch.cat([gather(v) for v in z.chunk(n_views)])  # [t(x) of all ranks; t'(x); adv]
        if recipe.kind == "rocl":
            z_reg = None
            if recipe.reg_pass == "separate" and recipe.lam:
                with C.autocast(recipe.amp, device):  # the original's own train-mode pass on the local 2N batch
                    z_sep = net(torch.cat([x_adv, x2])).float()
                z_reg = z_sep.chunk(2)
            loss, con, reg = rocl_loss(z_all, recipe.temperature, recipe.lam, recipe.detach_other_side, z_reg)
            # gradients reach only local rows of the gathered term: scale it by the world size so that DDP's
            # average gives the gradient of the global loss; a separate-pass regulariser is local: averaged.
            objective = con * world + reg if z_reg is not None else loss * world
        else:
            loss = con = simclr_loss(z_all, recipe.temperature, recipe.detach_other_side)
            reg = torch.zeros(())
            objective = loss * world
        opt.zero_grad(set_to_none=True)
        objective.backward()
        opt.step()
        step += 1
        meter.add(recipe.batch_size)
        bar.update(1)
        if step % recipe.log_every == 0 or step == stop:
            record = dict(step=step, epoch=round(step / steps_per_epoch, 4), loss=loss.item(), loss_contrastive=con.item(),
                          loss_reg=float(reg.detach()), lr=lr, images_per_s=round(meter.rate(), 2), time=time.time())
            run.log(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
        if step % recipe.ckpt_every == 0 or step == stop:
            checkpoint()
    bar.close()
    if step == total and dist.main:
        C.export_model(net.encoder.state_dict(), setup, "encoder", 0, ("temperature", "lam"))
    dist.barrier()
    dist.close()
    return run.path


def main(argv=None) -> int:
    return C.main("python -m training.pretrain", __doc__, train, KINDS, argv)


if __name__ == "__main__":
    sys.exit(main())
