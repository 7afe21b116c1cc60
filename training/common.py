"""What pretraining and the supervised baselines share: processes, LARS, the LR schedules, the command line,
the run's set-up and the export of its model. The loop, the run folder and exact resume are the library's
(rocl_zoo.loop); the steps are rocl_zoo.steps.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from rocl_zoo import precision
from rocl_zoo.cli import add_runtime_args, run
from rocl_zoo.distributed import Dist
from rocl_zoo.errors import ConfigError
from rocl_zoo.loop import RunFolder, train_loop, trained_precision
from rocl_zoo.precision import SETTINGS
from rocl_zoo.utils import hardware_name


# --------------------------------------------------------------------------------------------- processes


def gather_with_grad(z: torch.Tensor, world: int, rank: int) -> torch.Tensor:
    """all_gather along dim 0 that keeps the autograd graph of the local part (the other ranks' rows are
    constants). Each rank then holds the whole batch; gradients reach only its own rows."""
    if world == 1:
        return z
    parts = [torch.empty_like(z) for _ in range(world)]
    dist.all_gather(parts, z.detach().contiguous())
    parts[rank] = z
    return torch.cat(parts)


class DistBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose train-mode statistics come from every rank (sum, sum of squares and count all-reduced
    with autograd), for CPU process groups: torch's SyncBatchNorm runs on GPUs only. Eval mode is plain BN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        xf = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device)
        stats = all_reduce(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        shape = (1, c, 1, 1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """SyncBatchNorm on GPUs; DistBatchNorm2d (same state_dict keys) on the CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and type(child) is nn.BatchNorm2d:
            new = DistBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return module


# ------------------------------------------------------------------------------------- optimiser, schedule


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) over SGD with momentum, as torchlars wraps SGD in the original code.

    For a parameter w with gradient g in a group with lars=True: d = (g + wd w) * trust_coef ||w|| /
    (||g|| + wd ||w|| + eps) (1 when a norm is 0); groups with lars=False take d = g + wd w. Then SGD momentum:
    buf = momentum buf + d, w -= lr buf.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coef: float = 0.001, eps: float = 1e-8):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coef=trust_coef,
                                      eps=eps, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            wd, m = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=wd) if wd else p.grad.clone()
                if group["lars"]:
                    w_norm, g_norm = p.norm(), p.grad.norm()
                    trust = group["trust_coef"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                    d.mul_(torch.where((w_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust)))
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d
                else:
                    state["momentum_buffer"].mul_(m).add_(d)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])


def param_groups(model: nn.Module, weight_decay: float, exclude_bn_bias: bool) -> list[dict]:
    """Weights in one group; with exclude_bn_bias, BN parameters and biases (1-d tensors) in a group with no
    weight decay and no LARS adaptation."""
    if not exclude_bn_bias:
        return [dict(params=[p for p in model.parameters() if p.requires_grad], weight_decay=weight_decay)]
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    plain = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [dict(params=decay, weight_decay=weight_decay), dict(params=plain, weight_decay=0.0, lars=False)]


def warmup_cosine_lr(step: int, total_steps: int, steps_per_epoch: int, lr: float, warmup_epochs: float,
                     multiplier: float) -> float:
    """The original's GradualWarmupScheduler + CosineAnnealing, per step: linear from lr to lr * multiplier over
    warmup_epochs, then cosine from lr * multiplier to 0 at the end."""
    warm = int(round(warmup_epochs * steps_per_epoch))
    peak = lr * multiplier
    if step < warm:
        return lr + (peak - lr) * step / warm
    rest = max(total_steps - warm, 1)
    return 0.5 * peak * (1 + math.cos(math.pi * min(step - warm, rest) / rest))


# ---------------------------------------------------------------------------------------------- command line


def add_common_args(p) -> None:
    p.add_argument("--recipe", help="a recipe name (see --list-recipes)")
    p.add_argument("--list-recipes", action="store_true", help="print the recipes and exit")
    p.add_argument("--download", action="store_true", help="download the dataset if missing (needs a network)")
    p.add_argument("--out", default=None, help="run folder (default runs/<recipe>)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="global batch size")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in total (the LR "
                   "schedule still follows --epochs, so a later --resume continues the same run)")
    p.add_argument("--subset", type=int, default=None, help="train on a fixed random subset of N images")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start again in an --out that holds a run")
    p.add_argument("--seed", type=int, default=0)
    add_runtime_args(p)
    p.add_argument("--amp", choices=SETTINGS, default=None, help="training precision: auto (bf16 on CUDA and on CPUs "
                   "with native bf16, fp32 elsewhere; the recipe's default), bf16 or off (fp32)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a recipe field")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def resolve_recipe(args, kinds):
    """The named recipe with the command line's overrides: --epochs/--batch-size/--subset, then every --set."""
    from .recipes import apply_overrides, get_recipe

    recipe = get_recipe(args.recipe, kinds)
    for flag in ("epochs", "batch_size", "subset", "amp"):
        if getattr(args, flag) is not None:
            args.set.insert(0, f"{flag}={getattr(args, flag)}")
    return apply_overrides(recipe, args.set)


def main(prog: str, doc: str, train, kinds, argv=None) -> int:
    """The command line both training entry points share: parse, list recipes or train, report errors."""
    import argparse

    from .recipes import describe

    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    args = p.parse_args(argv)
    if args.list_recipes:
        print(describe(kinds))
        return 0
    if not args.recipe:
        p.error("--recipe is required (see --list-recipes)")

    def body(args):
        print(f"run folder: {train(args)}")

    return run(body, args)


@dataclass
class RunSetup:
    """What a training entry point knows before it builds its model: settings, processes, data, step counts."""
    recipe: object
    dist: Dist
    run: RunFolder
    config: dict
    ds: object                      # rocl_zoo.data.ImageTensorDataset
    info: object                    # rocl_zoo.data.DatasetInfo
    local: int                      # this process's share of the global batch
    steps_per_epoch: int
    total: int                      # steps of the whole recipe (the LR schedule's length)
    stop: int                       # where this invocation stops (--max-steps)
    precision: str                  # bf16 | fp32
    ckpt: dict | None               # the checkpoint to resume from
    held: object = None             # the held-out images (recipe.holdout), or None

    def amp(self):
        return precision.autocast(self.precision, self.dist.device)

    def rows(self) -> slice:
        """This process's rows of the global batch."""
        return slice(self.dist.rank * self.local, (self.dist.rank + 1) * self.local)


def start_run(args, kinds) -> RunSetup:
    """Resolve the recipe and the precision, start the processes, load the data, count the steps, and open the run
    folder (shared by both trainers)."""
    from rocl_zoo.data import DatasetInfo, dataset_info, load_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = resolve_recipe(args, kinds)
    dist = Dist(args.device)
    if recipe.batch_size % dist.world:
        raise ConfigError(f"batch size {recipe.batch_size} does not split over {dist.world} processes.")
    prec = precision.resolve(recipe.amp, dist.device)
    config = {**recipe.to_dict(), "seed": args.seed, "world_size": dist.world, "device": str(dist.device),
              **precision.describe(prec, dist.device), "hardware": hardware_name(dist.device),
              "max_steps": args.max_steps, "data_root": args.data_root, "command": " ".join(sys.argv)}
    ds = load_dataset(recipe.dataset, "train", root=args.data_root, download=args.download,
                      subset=recipe.subset or None)
    held = None
    if recipe.holdout:
        from .heldout import split

        ds, held = split(ds, recipe.holdout, args.seed)
    if recipe.dataset.startswith("imagefolder:"):  # no table entry: statistics of [0, 1] images
        c = ds.input_size[0]
        info = DatasetInfo(recipe.dataset, ds.input_size, tuple(ds.classes), (0.5,) * c, (0.5,) * c)
    else:
        info = dataset_info(recipe.dataset)
    steps_per_epoch = len(ds) // recipe.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(ds)} images are fewer than one batch of {recipe.batch_size}; lower --batch-size.")
    total = recipe.epochs * steps_per_epoch
    stop = min(total, args.max_steps) if args.max_steps else total
    config.update(steps_per_epoch=steps_per_epoch, total_steps=total, n_train=len(ds))
    run = RunFolder(args.out or Path("runs") / recipe.name, dist.main)
    ckpt = run.start(config, resume=args.resume, overwrite=getattr(args, "overwrite", False))
    return RunSetup(recipe, dist, run, config, ds, info, recipe.batch_size // dist.world, steps_per_epoch, total,
                    stop, prec, ckpt, held)


def prepare(net: nn.Module, setup: RunSetup) -> tuple[nn.Module, nn.Module]:
    """(net on the device, channels_last, SyncBN under DDP; the module the training forward goes through: a DDP
    wrapper of net, or net). channels_last measured faster on CUDA and on the CPU for every zoo architecture."""
    device, world = setup.dist.device, setup.dist.world
    if world > 1:
        net = convert_sync_batchnorm(net, device)
    net = place(net, setup)
    if world == 1:
        return net, net
    return net, nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def place(module: nn.Module, setup: RunSetup) -> nn.Module:
    """A module on the run's device, channels_last unless the recipe says false."""
    fmt = torch.channels_last if setup.recipe.channels_last != "false" else torch.contiguous_format
    return module.to(setup.dist.device, memory_format=fmt)


def to_device(x: torch.Tensor, setup: RunSetup) -> torch.Tensor:
    x = x.to(setup.dist.device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if setup.recipe.channels_last != "false" else x


def fit(args, setup: RunSetup, net: nn.Module, model: nn.Module, opt, step_fn, lr_at, export,
        on_epoch_end=None) -> Path:
    """Train `net` through the zoo's loop with the recipe's settings; when the schedule is done, `export()` on the
    main process; then close the process group. What training.pretrain and training.supervised share after
    building their model and step. on_epoch_end: the held-out curve's tracker (training/heldout.py), if any."""
    recipe, dist = setup.recipe, setup.dist
    net.train()
    train_loop(net, opt, step_fn, steps_per_epoch=setup.steps_per_epoch, total=setup.total, stop=setup.stop,
               seed=args.seed, lr_at=lr_at, run=setup.run, ckpt=setup.ckpt, config=setup.config,
               log_every=recipe.log_every, ckpt_every=recipe.ckpt_every, progress=not args.quiet, desc=recipe.name,
               barrier=dist.barrier, any_rank=dist.any_rank, main=dist.main, precision=setup.precision,
               on_epoch_end=on_epoch_end)
    if setup.stop == setup.total and dist.main:
        export()
    dist.barrier()
    dist.close()
    return setup.run.path


# Settings every exported model records in its config (plus the method's own, passed by each trainer).
EXPORTED_SETTINGS = ("kind", "epochs", "batch_size", "eps", "alpha", "attack_steps", "seed", "world_size",
                     "total_steps", "precision", "cpu_native_bf16")


def export_model(state: dict, setup: RunSetup, folder: str, num_classes: int, keys=()) -> Path:
    """Trained weights as a Hub folder in the run (`rocl_zoo.load(run / folder)`): a fresh model of the recipe's
    architecture (plain BN even when trained with SyncBN), the dataset's input size and labels, and the training
    settings of EXPORTED_SETTINGS and `keys` in its config."""
    import timm

    from rocl_zoo.hub import save_pretrained

    recipe, info = setup.recipe, setup.info
    model = timm.create_model(recipe.arch, num_classes=num_classes, in_chans=info.input_size[0], mean=info.mean,
                              std=info.std)
    model.load_state_dict(state)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": tuple(info.input_size),
                            "label_names": tuple(setup.ds.classes)}
    extra = {"training": {**{k: setup.config[k] for k in (*EXPORTED_SETTINGS, *keys)},
                          "precision": trained_precision(setup.run.epochs(), setup.precision)}}
    return save_pretrained(model.eval(), setup.run.path / folder, dataset=recipe.dataset, recipe=recipe.name,
                           extra=extra)
