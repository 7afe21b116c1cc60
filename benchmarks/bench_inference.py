"""ONNX Runtime against PyTorch eager: inference images/s at batch 1 and 256 on the zoo's architectures.

    python benchmarks/bench_inference.py [--archs cnn4_rocl resnet18_rocl] [--batches 1 256] [--budget 2]

Each architecture is exported with rocl_zoo.export.export_onnx (the path `python -m rocl_zoo.export --onnx`
takes) and run by rocl_zoo.onnx.OnnxClassifier on the CPU provider. PyTorch and ONNX Runtime run in alternating
blocks of calls (about 0.1 s each) in one process on the same inputs, so background load hits both alike and the
ratio is the number to read.
Each (architecture, batch) gets about --budget seconds (at least one timed call of each after a warm-up call;
calls slower than 2 s are timed once without a warm-up); a batch whose PyTorch call would take longer than
--skip-slower-than seconds (estimated from batch 1) is skipped and says so. Goal: ONNX Runtime at least 3x
faster at batch 1.
Results are printed and written to benchmarks/results/bench_inference.txt.

Threads: both engines run single-threaded by default. On this shared 2-core machine, 2-thread OpenMP runs
collapse whenever another process holds a core (measured: ResNet-18, batch 1, 1.2-1.6 s per call with 2 torch
threads against 47-64 ms with 1, same minute); one thread each gives stable, comparable numbers. Use
--threads 2 on an idle machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import rocl_zoo  # noqa: E402
from rocl_zoo.export import export_onnx  # noqa: E402
from rocl_zoo.onnx import OnnxClassifier  # noqa: E402
from report import RESULTS, Report  # noqa: E402

ARCHS = ["cnn4_rocl", "cnn4w_rocl", "resnet18_rocl", "resnet50_rocl", "wrn34_10_rocl"]


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def flops_per_image(model, input_size) -> float:
    """Floating-point operations of one forward pass (2 per multiply-add), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.rand(1, *input_size))
    return float(counter.get_total_flops())


def measure(model, clf, batch: int, budget: float) -> tuple[float, float, int]:
    """Median seconds per call for PyTorch and ONNX Runtime, in alternating blocks of calls; and the number of timed
    calls of each."""
    c, h, w = clf.input_size
    x = torch.rand(batch, c, h, w)
    xn = x.numpy()

    def run_torch():
        with torch.inference_mode():
            model(x)

    def run_ort():
        clf.session.run(None, {clf.input_name: xn})

    first_t, first_o = _time(run_torch), _time(run_ort)  # warm-up (allocations, kernel choice)
    if max(first_t, first_o) > 2.0:  # too slow to afford a separate warm-up: the first call is the sample
        return first_t, first_o, 1
    # Blocks of ~0.1 s: load changes hit both engines alike, and each engine runs back to back as a serving loop
    # does. Alternating single calls let each engine evict the other's weights from the caches, which slowed both
    # (cnn4_rocl, batch 1: ONNX Runtime 1.34 ms per call alternating, 0.99 ms back to back).
    block = max(1, int(0.1 / max(first_t, first_o)))
    ts, os_ = [], []
    start = time.perf_counter()
    while not ts or (time.perf_counter() - start < budget and len(ts) < 200):
        ts += [_time(run_torch) for _ in range(block)]
        os_ += [_time(run_ort) for _ in range(block)]
    return statistics.median(ts), statistics.median(os_), len(ts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", default=ARCHS)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 256])
    p.add_argument("--budget", type=float, default=2.0, help="seconds per (architecture, batch) (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and ONNX Runtime intra-op threads (default: %(default)s; see the module docstring)")
    p.add_argument("--skip-slower-than", type=float, default=30.0, metavar="S",
                   help="skip a batch whose PyTorch call would take more than S seconds, estimated from batch 1 "
                        "(0: never skip; default: %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_inference.txt",
                   help="where to write the table (default: %(default)s)")
    args = p.parse_args(argv)

    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    report = Report("ONNX Runtime vs PyTorch eager, inference (untrained weights; speed does not depend on them)")
    say = report.say
    say(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {args.threads} threads each")
    say(f"{'architecture':<15} {'input':<10} {'batch':>5} {'torch img/s':>12} {'onnx img/s':>12} {'ratio':>7} {'calls':>6}"
        f" {'torch GFLOP/s':>14} {'onnx GFLOP/s':>13} {'3x needs':>9}")
    needs, best_onnx = {}, 0.0  # batch-1 GFLOP/s that 3x would take; ONNX Runtime's best rate in this run
    with tempfile.TemporaryDirectory(prefix="rocl_bench_") as tmp:
        for arch in args.archs:
            model = rocl_zoo.create_model(arch).eval()
            path = export_onnx(model, Path(tmp) / f"{arch}.onnx")
            clf = OnnxClassifier(path, providers=["CPUExecutionProvider"], session_options=opts)
            per_image, flops = None, flops_per_image(model, clf.input_size)
            for batch in sorted(args.batches):
                estimate = per_image * batch if per_image else 0.0
                if args.skip_slower_than and estimate > args.skip_slower_than:
                    say(f"{arch:<15} {'x'.join(map(str, clf.input_size)):<10} {batch:>5} skipped: about "
                        f"{estimate:.0f} s per PyTorch call here (--skip-slower-than 0 runs it)")
                    continue
                t_torch, t_ort, n = measure(model, clf, batch, args.budget)
                per_image = per_image or t_torch / batch
                gf_torch, gf_onnx = batch * flops / t_torch / 1e9, batch * flops / t_ort / 1e9
                say(f"{arch:<15} {'x'.join(map(str, clf.input_size)):<10} {batch:>5} {batch / t_torch:>12.1f} "
                    f"{batch / t_ort:>12.1f} {t_torch / t_ort:>6.2f}x {n:>6} {gf_torch:>14.1f} {gf_onnx:>13.1f} "
                    f"{3 * gf_torch:>9.1f}")
                best_onnx = max(best_onnx, gf_onnx)
                if batch == 1:
                    needs[arch] = 3 * gf_torch
            path.unlink()
    report.save(args.out, "ratio = ONNX Runtime images/s / PyTorch images/s (median call times, alternating blocks "
                "of calls); GFLOP/s = images/s x the forward pass's FLOPs (torch.utils.flop_counter); '3x needs' = "
                "the GFLOP/s an engine must sustain to be 3x PyTorch. Goal: >= 3x at batch 1. At batch 1, 3x needs "
                f"more than ONNX Runtime's best rate in this run ({best_onnx:.1f} GFLOP/s, any model) for: "
                f"{', '.join(a for a, v in needs.items() if v > best_onnx) or 'none'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
