"""PGD-20 evaluation throughput: rocl_zoo.attacks.pgd against torchattacks.PGD, same model, data and settings.

    python benchmarks/bench_attacks.py                  # cnn4_rocl 28x28 and resnet18_rocl 32x32
    python benchmarks/bench_attacks.py --device cuda --batch-size 256

Both attacks: l-inf, eps 8/255, step eps/10, 20 steps, uniform random start, cross-entropy, model in eval mode,
gradients w.r.t. the input. Columns:
  ours        rocl_zoo.attacks.pgd as the library calls it by default: keeps, per example, the worst iterate (one
              extra forward pass and a little bookkeeping per step); the same work as torchattacks otherwise.
  ours-last   keep_best=False: returns the last iterate, exactly torchattacks' semantics.
  torchattacks  torchattacks.PGD.
  ours-early  what `python -m rocl_zoo.evaluate` runs: keep-best + early stop (fooled examples leave the batch).
              Labels are the model's own predictions so every example starts correct; the gain depends on how
              robust the model is (a random-init model falls in a few steps), so no ratio is taken from it.
Each attack runs `--repeats` times, interleaved, after a warm-up run; cells are images/s, best / median; ratios
are ours / torchattacks of the medians.

torchattacks is a benchmark-only dependency (it pins requests~=2.25.1): install it beside, never into, the
runtime environment, e.g. `pip install --no-deps --target /tmp/ta torchattacks` and pass `--torchattacks-path
/tmp/ta` (or set PYTHONPATH).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def bench(fn, sync) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="cnn4_rocl:1:28:128,resnet18_rocl:3:32:16",
                   help="comma-separated arch:channels:size:batch (default %(default)s)")
    p.add_argument("--batch-size", type=int, help="override every model's batch size")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per attack (default 3)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    p.add_argument("--torchattacks-path", help="folder holding the torchattacks package (pip --target)")
    return p


def import_torchattacks(path: str | None):
    """torchattacks if importable (from `path` too), else None with a line on how to install it beside us."""
    if path:
        sys.path.append(path)
    try:
        import torchattacks
    except ImportError:
        print("torchattacks is not importable: install it for the benchmark only, e.g.\n"
              "  pip install --no-deps --target /tmp/ta torchattacks   # then --torchattacks-path /tmp/ta\n"
              "(never into the runtime environment: it pins requests~=2.25.1). Timing ours alone.\n")
        return None
    return torchattacks


def attack_rates(model, x, y, args, torchattacks, sync) -> dict[str, tuple[float, float]]:
    """Images/s (best, median) of each attack on (x, y), timed interleaved after one warm-up run each."""
    from rocl_zoo.attacks import pgd

    eps, alpha, steps = args.eps, args.eps / 10, args.steps
    runs = {"ours": lambda: pgd(model, x, y, eps, alpha=alpha, steps=steps, random_start=True),
            "ours-last": lambda: pgd(model, x, y, eps, alpha=alpha, steps=steps, random_start=True,
                                     keep_best=False)}
    if torchattacks is not None:
        ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
        runs["torchattacks"] = lambda: ta(x, y)
    runs["ours-early"] = lambda: pgd(model, x, y, eps, alpha=alpha, steps=steps, random_start=True,
                                     early_stop=True)
    for fn in runs.values():  # warm-up: allocator, kernels, lazy init
        bench(fn, sync)
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for k, fn in runs.items():
            times[k].append(bench(fn, sync))
    return {k: (len(x) / min(v), len(x) / statistics.median(v)) for k, v in times.items()}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    sys.path.insert(0, ".")
    import timm

    import rocl_zoo  # noqa: F401  (registers the architectures)
    from rocl_zoo.utils import hardware_name, resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    torchattacks = import_torchattacks(args.torchattacks_path)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"hardware: {hardware_name(device)}")
    print(f"torch {torch.__version__}, torchattacks {getattr(torchattacks, '__version__', 'n/a')}")
    print(f"PGD-{args.steps} l-inf eps {args.eps:.5f} step {args.eps / 10:.5f}, random start, CE loss, eval mode; "
          f"{args.repeats} interleaved timed runs after a warm-up; images/s best / median\n")
    header = (f"{'model':<15}{'input':>9}{'batch':>6}{'ours':>15}{'ours-last':>15}{'torchattacks':>15}"
              f"{'ratio':>7}{'ratio-last':>11}{'ours-early':>15}")
    print(header)
    print("-" * len(header))
    for spec in args.models.split(","):
        arch, c, s, b = spec.split(":")
        c, s, b = int(c), int(s), args.batch_size or int(b)
        torch.manual_seed(0)
        model = timm.create_model(arch, num_classes=10, in_chans=c).to(device).eval()
        x = torch.rand(b, c, s, s, device=device)
        with torch.no_grad():
            y = model(x).argmax(1)  # every example starts correctly classified
        rate = attack_rates(model, x, y, args, torchattacks, sync)
        cell = lambda k: f"{rate[k][0]:.1f} / {rate[k][1]:.1f}" if k in rate else "n/a"  # noqa: E731
        ratio = lambda k: f"{rate[k][1] / rate['torchattacks'][1]:.2f}x" if "torchattacks" in rate else "n/a"  # noqa
        print(f"{arch:<15}{f'{c}x{s}x{s}':>9}{b:>6}{cell('ours'):>15}{cell('ours-last'):>15}"
              f"{cell('torchattacks'):>15}{ratio('ours'):>7}{ratio('ours-last'):>11}{cell('ours-early'):>15}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
