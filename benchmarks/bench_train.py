"""RoCL training-step benchmark: images/s, peak memory, and the step's overhead over the passes it needs.

    python benchmarks/bench_train.py                   # cnn4_rocl and resnet18_rocl on the CPU
    python benchmarks/bench_train.py --device cuda --batch 256 --arch resnet18_rocl

For each architecture it times, interleaved and repeated (the minimum counts, which filters out other load):
- step: one full RoCL training step as training.pretrain runs it (augment, attack, 3B forward/backward,
  loss, LARS step);
- parts: the passes the method needs, each timed on its own: the target view's no-grad eval forward (B), k
  eval-mode attack steps (forward + input-only backward, B), the train-mode forward/backward of the 3B batch;
- overhead = step / sum(parts) (goal <= 1.15);
- original: the original code's step (every attack step runs forward/backward with parameter gradients on the
  2B batch of attacked and target views; a separate train-mode regulariser pass on 2B), with its speed-up.
Peak memory: CUDA max_memory_allocated, or on the CPU the process's peak resident set size.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import rocl_zoo.models  # noqa: E402,F401
from rocl_zoo.attacks import attack_mode, instance_attack  # noqa: E402
from rocl_zoo.data import DATASETS, RoclAugment  # noqa: E402
from rocl_zoo.losses import nt_xent, rocl_loss  # noqa: E402
from rocl_zoo.utils import hardware_name, resolve_device  # noqa: E402
from training import common as C  # noqa: E402
from training.pretrain import build  # noqa: E402
from training.recipes import get_recipe  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(arch: str, dataset: str, batch: int, k: int, reps: int, device: torch.device) -> dict:
    recipe = get_recipe("fmnist_rocl" if dataset == "fashion_mnist" else "cifar10_resnet18_rocl")
    recipe.arch = arch
    info = DATASETS[dataset]
    torch.manual_seed(0)
    net = build(recipe, info).to(device, memory_format=torch.channels_last).train()
    opt = C.LARS(C.param_groups(net, 1e-6, True), lr=0.1, trust_coef=0.001)
    images = (torch.rand(batch, *info.input_size) * 255).to(torch.uint8).to(device)
    aug = RoclAugment(info.input_size[1:])
    amp = lambda: C.autocast("auto", device)  # noqa: E731
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    x1, x2 = cl(aug(images, g)), cl(aug(images, g))
    eps, alpha = recipe.eps, recipe.alpha

    def step():
        a, b = cl(aug(images, g)), cl(aug(images, g))
        with amp():
            x_adv = instance_attack(net, a, b, eps=eps, alpha=alpha, steps=k, detach_other_side=True)
            z = net(torch.cat([a, b, x_adv])).float()
        loss = rocl_loss(z, 0.5, 256, True)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def target_pass():
        with attack_mode(net), torch.no_grad(), amp():
            net(x2)

    def attack_steps():
        with attack_mode(net), amp():
            for _ in range(k):
                x = x1.clone().requires_grad_(True)
                torch.autograd.grad(net(x).float().sum(), x)

    def train_pass():
        with amp():
            z = net(torch.cat([x1, x2, x1])).float()
        z.sum().backward()
        opt.zero_grad(set_to_none=True)

    def original_step():  # the original implementation's passes, same batch and k
        a, b = cl(aug(images, g)), cl(aug(images, g))
        x_adv = (a + torch.empty_like(a).uniform_(-eps, eps)).clamp(0, 1)
        net.eval()
        with amp():
            for _ in range(k):
                x_adv.requires_grad_(True)
                zz = net(torch.cat([x_adv, b])).float()
                loss = nt_xent(*zz.chunk(2), detach_other_side=True)
                grad = torch.autograd.grad(loss, [x_adv, *net.parameters()])[0]  # the original's loss.backward()
                x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), a - eps), a + eps).clamp(0, 1)
        net.train()
        with amp():
            z_reg = net(torch.cat([x_adv, b])).float()
            z = net(torch.cat([a, b, x_adv])).float()
        loss = rocl_loss(z, 0.5, 256, True, z_reg=z_reg.chunk(2))[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fns = dict(step=step, target=target_pass, attack=attack_steps, train=train_pass, original=original_step)
    times = {name: [] for name in fns}
    for name, fn in fns.items():  # warm-up
        fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t)
    best = {name: min(v) for name, v in times.items()}
    parts = best["target"] + best["attack"] + best["train"]
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return dict(arch=arch, batch=batch, k=k, step_s=best["step"], images_per_s=batch / best["step"],
                parts_s=parts, overhead=best["step"] / parts, original_s=best["original"],
                speedup=best["original"] / best["step"], peak_mb=peak,
                detail={n: round(v, 4) for n, v in best.items()})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--arch", action="append", help="cnn4_rocl, resnet18_rocl (default both)")
    p.add_argument("--batch", type=int, default=None, help="default 128 (cnn4) / 32 (ResNet-18) on CPU, 256 on CUDA")
    p.add_argument("--k", type=int, default=7)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    print(f"# bench_train: RoCL step (k={a.k}), {hardware_name(device)}, torch {torch.__version__}, "
          f"channels_last, amp={'bf16' if device.type == 'cuda' else 'off'}; min of {a.reps} interleaved runs")
    print(f"{'arch':14s} {'batch':>5s} {'step s':>8s} {'img/s':>8s} {'parts s':>8s} {'overhead':>8s} "
          f"{'orig s':>8s} {'speedup':>7s} {'peak MB':>8s}")
    for arch in a.arch or ["cnn4_rocl", "resnet18_rocl"]:
        dataset = "fashion_mnist" if arch.startswith("cnn4") else "cifar10"
        batch = a.batch or (256 if device.type == "cuda" else (128 if arch.startswith("cnn4") else 32))
        r = bench(arch, dataset, batch, a.k, a.reps, device)
        print(f"{arch:14s} {batch:5d} {r['step_s']:8.3f} {r['images_per_s']:8.1f} {r['parts_s']:8.3f} "
              f"{r['overhead']:8.3f} {r['original_s']:8.3f} {r['speedup']:6.2f}x {r['peak_mb']:8.0f}")
        print(f"#   parts (s): {r['detail']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
