"""Training speed, measured side by side in one run: our RoCL step in fp32 and in bf16, the original
implementation's step, the passes the method needs, the FLOP rate each reaches against this machine's own peak,
and the trainers end to end.

    python benchmarks/bench_train.py                       # cnn4_rocl (batch 256) and resnet18_rocl (batch 64)
    python benchmarks/bench_train.py --arch cnn4_rocl --no-end-to-end
    python benchmarks/bench_train.py --device cuda --batch 256

- step: `training.pretrain`'s own step function (augment, instance-wise attack, 3B forward/backward, loss) and
  LARS update, run by the zoo's loop (rocl_zoo.loop.train_loop) for `--steps` steps; the median step counts;
- parts: what the method cannot avoid, timed alone in the same precision: the target view's no-grad forward (B),
  k attack steps (eval-mode forward + input-only backward, B, through the BN-folded network the step attacks),
  the 3B train-mode forward/backward;
  overhead = step / parts (goal <= 1.10);
- original: the original code's step in fp32 (every attack step differentiates the parameters too, on the 2B
  batch of attacked and target views; a separate train-mode pass for the regulariser); speed-up = original / ours
  (goal >= 6x in bf16);
- GFLOP/s: the needed passes' matmul/conv FLOPs (torch.utils.flop_counter) over the step's time, against the
  peak of a large matmul measured here in the same precision;
- end to end: `python -m training.pretrain --recipe fmnist_rocl` and `training.supervised --recipe fmnist_at`
  for a few steps, images/s from their own metrics.jsonl, against the shipped runs' rates (42 and 32.6 img/s,
  fp32; goals >= 3x and >= 2.5x).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from rocl_zoo import loop as L  # noqa: E402
from rocl_zoo import precision  # noqa: E402
from rocl_zoo.attacks import attack_mode  # noqa: E402
from rocl_zoo.losses import nt_xent, rocl_loss  # noqa: E402
from rocl_zoo.attacks import attack_view  # noqa: E402
from rocl_zoo.utils import hardware_name, resolve_device  # noqa: E402
from training import common as C  # noqa: E402
from training import pretrain  # noqa: E402

SHIPPED = {"fmnist_rocl": 42.0, "fmnist_at": 32.6}  # images/s of the shipped fp32 runs (their metrics.jsonl)
GOALS = {"fmnist_rocl": 3.0, "fmnist_at": 2.5}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, reps: int) -> float:
    """Median seconds of `reps` calls after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_gflops(dtype, device, n: int = 2048) -> float:
    """The best of 5 large matmuls: this machine's attainable peak in `dtype`."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def real_setup(arch: str, batch: int, k: int, amp: str, device: str, out: Path) -> C.RunSetup:
    """training.pretrain's own set-up for fmnist_rocl (CIFAR-sized random data for the ResNet)."""
    p = argparse.ArgumentParser()
    C.add_common_args(p)
    args = p.parse_args(["--recipe", "fmnist_rocl", "--out", str(out), "--amp", amp, "--device", device, "--quiet",
                         "--subset", str(4 * batch), "--batch-size", str(batch), "--set", f"arch={arch}",
                         "--set", f"attack_steps={k}", "--overwrite"])
    setup = C.start_run(args, pretrain.KINDS)
    if arch.startswith("resnet"):  # the paper's input, 3x32x32 (random images: CIFAR-10 is not on this machine)
        setup.ds.images = (torch.rand(len(setup.ds), 3, 32, 32) * 255).to(torch.uint8)
        setup.info = setup.info.__class__(setup.info.name, (3, 32, 32), setup.info.classes, (0.5,) * 3, (0.5,) * 3)
    return setup


def bench_ours(setup: C.RunSetup, steps: int) -> dict:
    """The real step run by the real loop; then the needed passes alone, and the step's FLOPs."""
    torch.manual_seed(0)
    net, model = C.prepare(pretrain.build(setup.recipe, setup.info), setup)
    opt = pretrain.make_optimizer(net, setup.recipe)
    step_fn = pretrain.make_step(setup, net, model, seed=0)
    net.train()
    times = []

    def timed_step(step, g):
        sync(setup.dist.device)
        times.append(time.perf_counter())
        return step_fn(step, g)

    L.train_loop(net, opt, timed_step, steps_per_epoch=setup.steps_per_epoch, total=steps + 2, seed=0,
                 lr_at=lambda s: 0.1, log_every=0, progress=False)
    sync(setup.dist.device)
    times.append(time.perf_counter())
    step_s = statistics.median(b - a for a, b in zip(times[1:], times[2:]))  # the first is warm-up

    r, B, amp = setup.recipe, setup.recipe.batch_size, setup.amp
    x1, x2 = (C.to_device(torch.rand(B, *setup.ds.input_size), setup) for _ in range(2))
    attacked = attack_view(net)  # eval-mode BN folded into the convolutions, as the step's attack runs

    def target():
        with attack_mode(attacked), torch.no_grad(), amp():
            attacked(x2)

    def attack():
        with attack_mode(attacked), amp():
            for _ in range(r.attack_steps):
                x = x1.clone().requires_grad_(True)
                torch.autograd.grad(attacked(x).float().sum(), x)

    def train():
        with amp():
            z = net(torch.cat([x1, x2, x1])).float()
        z.sum().backward()
        opt.zero_grad(set_to_none=True)

    def attack_step_with_backward():  # an attack step's FLOPs: the counter cannot watch autograd.grad
        with attack_mode(attacked), amp():
            x = x1.clone().requires_grad_(True)
            attacked(x).float().sum().backward()

    parts = sum(timed(f, setup.dist.device, 3) for f in (target, attack, train))
    flops = 0
    for fn, times_ in ((target, 1), (attack_step_with_backward, r.attack_steps), (train, 1)):
        with FlopCounterMode(display=False) as counter:
            fn()
        flops += counter.get_total_flops() * times_
    return dict(step_s=step_s, parts_s=parts, flops=flops)


def bench_original(setup: C.RunSetup, reps: int) -> float:
    """The original implementation's step, fp32: parameter gradients at every attack step, a separate
    regulariser pass."""
    torch.manual_seed(0)
    net, _ = C.prepare(pretrain.build(setup.recipe, setup.info), setup)
    opt = pretrain.make_optimizer(net, setup.recipe)
    r, B = setup.recipe, setup.recipe.batch_size
    a, b = (C.to_device(torch.rand(B, *setup.ds.input_size), setup) for _ in range(2))

    def step():
        x_adv = (a + torch.empty_like(a).uniform_(-r.eps, r.eps)).clamp(0, 1)
        net.eval()
        for _ in range(r.attack_steps):
            x_adv.requires_grad_(True)
            zz = net(torch.cat([x_adv, b]))
            loss = nt_xent(*zz.chunk(2), detach_other_side=True)
            grad = torch.autograd.grad(loss, [x_adv, *net.parameters()])[0]  # the original's loss.backward()
            x_adv = torch.min(torch.max(x_adv.detach() + r.alpha * grad.sign(), a - r.eps), a + r.eps).clamp(0, 1)
        net.train()
        z_reg = net(torch.cat([x_adv, b]))
        z = net(torch.cat([a, b, x_adv]))
        loss = rocl_loss(z, 0.5, 256, True, z_reg=z_reg.chunk(2))[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed(step, setup.dist.device, reps)


def end_to_end(entry: str, recipe: str, amp: str, steps: int, threads: int) -> float:
    """images/s of the trainer's own metrics.jsonl (median of its step records after the first)."""
    with tempfile.TemporaryDirectory() as tmp:
        log = 4
        cmd = [sys.executable, "-m", entry, "--recipe", recipe, "--out", tmp, "--amp", amp, "--max-steps",
               str(steps), "--threads", str(threads), "--quiet", "--set", f"log_every={log}"]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        lines = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        rates = [x["images_per_s"] for x in lines if x.get("record") == "step"][1:]
    return statistics.median(rates)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--arch", action="append", help="cnn4_rocl, resnet18_rocl (default both)")
    p.add_argument("--batch", type=int, default=None, help="default 256 (cnn4_rocl) / 64 (resnet18_rocl)")
    p.add_argument("--k", type=int, default=7, help="attack steps")
    p.add_argument("--steps", type=int, default=5, help="timed steps of our loop")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-end-to-end", action="store_true", help="skip the trainers' end-to-end runs")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    native = device.type == "cuda" or precision.cpu_has_native_bf16()
    print(f"# bench_train: {hardware_name(device)}, torch {torch.__version__}, native bf16: "
          f"{'yes' if native else 'no'}")
    peaks = {"fp32": peak_gflops(torch.float32, device)}
    if native:
        peaks["bf16"] = peak_gflops(torch.bfloat16, device)
    print("# peak (2048^3 matmul): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    print(f"{'arch':14s} {'batch':>5s} {'prec':>5s} {'step s':>8s} {'img/s':>7s} {'overhead':>8s} {'GFLOP/s':>8s} "
          f"{'% peak':>6s} {'vs orig':>7s}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in a.arch or ["cnn4_rocl", "resnet18_rocl"]:
            batch = a.batch or (256 if arch.startswith("cnn4") else 64)
            original = bench_original(real_setup(arch, batch, a.k, "off", str(device), Path(tmp) / "o"), 3)
            print(f"{arch:14s} {batch:5d} {'orig':>5s} {original:8.3f} {batch / original:7.1f}")
            for amp in ["off", "bf16"] if native else ["off"]:
                setup = real_setup(arch, batch, a.k, amp, str(device), Path(tmp) / amp)
                r = bench_ours(setup, a.steps)
                gflops = r["flops"] / r["step_s"] / 1e9
                print(f"{arch:14s} {batch:5d} {setup.precision:>5s} {r['step_s']:8.3f} {batch / r['step_s']:7.1f} "
                      f"{r['step_s'] / r['parts_s']:8.3f} {gflops:8.1f} {100 * gflops / peaks[setup.precision]:5.0f}% "
                      f"{original / r['step_s']:6.2f}x")
    if not a.no_end_to_end:
        print("# end to end: the trainer's own metrics.jsonl, against the shipped fp32 run")
        for entry, recipe in (("training.pretrain", "fmnist_rocl"), ("training.supervised", "fmnist_at")):
            for amp in ["off", "bf16"] if native else ["off"]:
                rate = end_to_end(entry, recipe, amp, 17, a.threads)
                print(f"{recipe:14s} {amp:>5s} {rate:8.1f} img/s  {rate / SHIPPED[recipe]:5.2f}x shipped "
                      f"({SHIPPED[recipe]} img/s; goal >= {GOALS[recipe]}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
