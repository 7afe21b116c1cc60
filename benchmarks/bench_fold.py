"""Evaluation on the BatchNorm-folded, channels_last copy against the model as it is, side by side in one run:
the same `rocl_zoo.evaluate.evaluate` call with fold_bn=True and False, interleaved, on shipped models and Fashion-MNIST
test images; wall time per run, the ratio, and whether both measured the same accuracies.

    python benchmarks/bench_fold.py                       # cnn4_rocl.fmnist_at (PGD-20 and APGD), resnet18_rocl.fmnist
    python benchmarks/bench_fold.py --threads 2 --repeats 3

Results are printed and written to benchmarks/results/bench_fold.txt.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from report import RESULTS, Report

CASES = (("cnn4_rocl.fmnist_at", "clean,pgd20", 500), ("cnn4_rocl.fmnist_at", "clean,apgd", 200),
         ("resnet18_rocl.fmnist", "clean,pgd20", 64))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each variant (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the matrix runs)")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_fold.txt",
                   help="where to write the table (default: %(default)s)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    import rocl_zoo
    from rocl_zoo.data import load_dataset
    from rocl_zoo.evaluate import evaluate
    from rocl_zoo.linear import as_tensors

    test = load_dataset("fashion_mnist", "test")
    report = Report(f"bench_fold: evaluate() with BatchNorm folded (fx) and channels_last against as it is, fp32, "
                    f"{a.repeats} interleaved runs each, median seconds, torch {torch.__version__}")
    report.say(f"{'model':<22} {'attacks':<12} {'images':>6} {'folded':>8} {'as is':>8} {'ratio':>6}  same accuracies")
    ok = True
    for name, attacks, n in CASES:
        model = rocl_zoo.load(name)
        x, y = as_tensors(test, n, 0)
        times, accs = {True: [], False: []}, {}
        for _ in range(a.repeats):
            for fold in (True, False):
                t = time.perf_counter()
                r = evaluate(model, x, y, attacks=attacks, eps=0.1, progress=False, fold_bn=fold)
                times[fold].append(time.perf_counter() - t)
                accs[fold] = {k: v["acc"] for k, v in r["attacks"].items()}
        folded, plain = statistics.median(times[True]), statistics.median(times[False])
        same = all(abs(accs[True][k] - accs[False][k]) <= 100 / n for k in accs[True])  # one image at most
        ok &= same
        report.say(f"{name:<22} {attacks:<12} {n:>6} {folded:>8.1f} {plain:>8.1f} {plain / folded:>5.2f}x  "
                   f"{'yes' if same else 'NO'} {accs[True]}")
    report.save(a.out, f"ratio = as is / folded; same accuracies: {'yes' if ok else 'NO'}.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
