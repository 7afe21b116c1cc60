"""What pretraining and the supervised baselines share: processes, the run folder, checkpoints that resume
exactly, LARS, the LR schedules, the data order and the progress bar.

Exact resume. Every random choice of step s comes from generators seeded with (seed, s) (augmentations, attack
starts) or (seed, epoch) (the data order, a permutation per epoch), so a run restarted from the checkpoint of
step s draws exactly what the uninterrupted run drew. Checkpoints also hold the model, the optimiser (momentum
buffers), the step (the LR schedule is a function of it) and the global torch RNG states.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from rocl_zoo import checkpoint
from rocl_zoo.checkpoint import rng_state, set_rng_state  # noqa: F401  (part of this module's interface)
from rocl_zoo.errors import ConfigError
from rocl_zoo.utils import atomic_write, resolve_device, write_json

CHECKPOINT_FORMAT = "rocl_zoo.train/1"


# --------------------------------------------------------------------------------------------- processes


class Dist:
    """The process group (torchrun sets RANK/WORLD_SIZE/LOCAL_RANK) or a single process."""

    def __init__(self, device: str = "auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.main = self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


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


# ------------------------------------------------------------------------------------------- randomness


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of one training step: augmentations and attack starts derive from (seed, step)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + 17) % (2 ** 63))


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch + 1))


# --------------------------------------------------------------------------------------------- run folder


class RunFolder:
    """<out>/config.json (resolved settings), metrics.jsonl (one line per logged step), checkpoints/last.pt,
    and the exported model folder (encoder/ or model/) in the zoo's Hub layout."""

    def __init__(self, out, main: bool = True):
        self.path = Path(out)
        self.main = main
        self.checkpoint = self.path / "checkpoints" / "last.pt"
        self.metrics = self.path / "metrics.jsonl"
        self.config = self.path / "config.json"

    def start(self, config: dict, resume: bool) -> dict | None:
        """Write config.json; with resume, load the last checkpoint (None when there is none yet)."""
        ckpt = None
        if resume and self.checkpoint.exists():
            ckpt = load_checkpoint(self.checkpoint)
            check_compatible(ckpt["config"], config)
        elif not resume and self.checkpoint.exists():
            raise ConfigError(f"{self.path} already holds a run (checkpoints/last.pt). Pass --resume to continue it "
                              "or choose another --out.")
        if self.main:
            write_json(self.config, config)
            if ckpt is not None:  # drop lines logged after the checkpoint: the resumed run logs them again
                self.truncate_metrics(ckpt["step"])
            elif self.metrics.exists():
                self.metrics.unlink()
        return ckpt

    def truncate_metrics(self, step: int) -> None:
        if not self.metrics.exists():
            return
        keep = [line for line in self.metrics.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        with atomic_write(self.metrics, "w") as f:
            f.write("".join(line + "\n" for line in keep))

    def log(self, record: dict) -> None:
        if self.main:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(record) + "\n")


RESUME_KEYS = ("name", "kind", "dataset", "arch", "batch_size", "epochs", "seed", "subset", "world_size", "lr",
               "warmup_epochs", "eps", "attack_steps")


def check_compatible(saved: dict, current: dict) -> None:
    diff = {k: (saved.get(k), current.get(k)) for k in RESUME_KEYS if saved.get(k) != current.get(k)}
    if diff:
        desc = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"--resume with different settings than the checkpoint ({desc}). Resume with the same "
                          "settings, or start a new run in another --out.")


def save_checkpoint(path, state: dict) -> None:
    checkpoint.save_checkpoint(path, state, format=CHECKPOINT_FORMAT)


def load_checkpoint(path) -> dict:
    return checkpoint.load_checkpoint(path, format=CHECKPOINT_FORMAT)


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


def multistep_lr(step: int, steps_per_epoch: int, lr: float, milestones) -> float:
    epoch = step / steps_per_epoch
    return lr * 0.1 ** sum(epoch >= m for m in milestones)


# ---------------------------------------------------------------------------------------------- runtime


def use_channels_last(setting: str, device: torch.device, arch: str) -> bool:
    """auto: yes. Measured faster on CUDA and on this CPU for ResNet-18 (DESIGN section 4) and for cnn4_rocl
    (fwd+bwd at batch 256: 3.5 s against 4.2 s contiguous). bf16 autocast on this CPU (no bf16 units) measured
    12x slower, so `amp=auto` means bf16 on CUDA only."""
    if setting != "auto":
        return setting == "true"
    return True


def autocast(setting: str, device: torch.device):
    if setting == "bf16" or (setting == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def progress(total: int, initial: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled or not sys.stderr.isatty() and
                not os.environ.get("ROCL_ZOO_PROGRESS"), desc=desc, unit="step", dynamic_ncols=True)


class Meter:
    """Images per second between log points."""

    def __init__(self):
        self.t, self.images = time.perf_counter(), 0

    def add(self, n: int):
        self.images += n

    def rate(self) -> float:
        now = time.perf_counter()
        r = self.images / max(now - self.t, 1e-9)
        self.t, self.images = now, 0
        return r


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def add_common_args(p) -> None:
    p.add_argument("--recipe", help="a recipe name (see --list-recipes)")
    p.add_argument("--list-recipes", action="store_true", help="print the recipes and exit")
    p.add_argument("--data-root", default=None, help="dataset folder (default $ROCL_ZOO_DATA or ~/.cache/rocl_zoo/data)")
    p.add_argument("--download", action="store_true", help="download the dataset if missing (needs a network)")
    p.add_argument("--out", default=None, help="run folder (default runs/<recipe>)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="global batch size")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in total (the LR "
                   "schedule still follows --epochs, so a later --resume continues the same run)")
    p.add_argument("--subset", type=int, default=None, help="train on a fixed random subset of N images")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a recipe field")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def resolve_recipe(args, kinds):
    """The named recipe with the command line's overrides: --epochs/--batch-size/--subset, then every --set."""
    from .recipes import apply_overrides, get_recipe

    recipe = get_recipe(args.recipe, kinds)
    for flag in ("epochs", "batch_size", "subset"):
        if getattr(args, flag) is not None:
            args.set.insert(0, f"{flag}={getattr(args, flag)}")
    return apply_overrides(recipe, args.set)


def main(prog: str, doc: str, train, kinds, argv=None) -> int:
    """The command line both training entry points share: parse, list recipes or train, report errors."""
    import argparse

    from rocl_zoo.errors import RoclZooError

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
    try:
        out = train(args)
    except RoclZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"run folder: {out}")
    return 0


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


def start_run(args, kinds) -> RunSetup:
    """Resolve the recipe, start the processes, load the data and count the steps (shared by both trainers)."""
    from rocl_zoo.data import DatasetInfo, dataset_info, load_dataset

    set_threads(args.threads)
    recipe = resolve_recipe(args, kinds)
    dist = Dist(args.device)
    if recipe.batch_size % dist.world:
        raise ConfigError(f"batch size {recipe.batch_size} does not split over {dist.world} processes.")
    config = {**recipe.to_dict(), "seed": args.seed, "world_size": dist.world, "device": str(dist.device),
              "max_steps": args.max_steps, "data_root": args.data_root, "command": " ".join(sys.argv)}
    ds = load_dataset(recipe.dataset, "train", root=args.data_root, download=args.download,
                      subset=recipe.subset or None)
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
    out = Path(args.out or Path("runs") / recipe.name)
    return RunSetup(recipe, dist, RunFolder(out, dist.main), config, ds, info, recipe.batch_size // dist.world,
                    steps_per_epoch, total, stop)


# Settings every exported model records in its config (plus the method's own, passed by each trainer).
EXPORTED_SETTINGS = ("kind", "epochs", "batch_size", "eps", "alpha", "attack_steps", "seed", "world_size",
                     "total_steps")


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
    extra = {"training": {k: setup.config[k] for k in (*EXPORTED_SETTINGS, *keys)}}
    return save_pretrained(model.eval(), setup.run.path / folder, dataset=recipe.dataset, recipe=recipe.name,
                           extra=extra)
