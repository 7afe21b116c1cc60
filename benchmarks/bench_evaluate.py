"""Evaluation scaled out with torchrun, measured side by side in one run: the same `rocl_zoo.evaluate` command in
one process (all threads) and in N processes (`torchrun --nproc_per_node=N`, threads split between them), wall
time and speed-up, and a check that both wrote the same numbers.

    python benchmarks/bench_evaluate.py                                # cnn4_rocl.fmnist_at, PGD-20, 1,000 images
    python benchmarks/bench_evaluate.py --model cnn4_rocl.fmnist --attacks clean,pgd20 --n-examples 2000 --procs 2
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cnn4_rocl.fmnist_at")
    p.add_argument("--attacks", default="clean,pgd20")
    p.add_argument("--n-examples", type=int, default=1000)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads in all (default: the cores)")
    a = p.parse_args(argv)
    evaluate = ["-m", "rocl_zoo.evaluate", a.model, "--attacks", a.attacks, "--n-examples", str(a.n_examples),
                "--quiet"]
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        per_proc = max(a.threads // a.procs, 1)
        one = run([sys.executable, *evaluate, "--threads", str(a.threads), "--out", f"{tmp}/one.json"], a.threads)
        many = run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={a.procs}",
                    "--master_addr=127.0.0.1", f"--master_port={port}", *evaluate, "--threads", str(per_proc),
                    "--out", f"{tmp}/many.json"], per_proc)
        r1, rn = (json.loads(Path(f"{tmp}/{f}.json").read_text()) for f in ("one", "many"))
    from rocl_zoo.utils import hardware_name

    same = all(r1[k] == rn[k] for k in ("clean_acc", "pgd_acc", "robust_acc"))
    print(f"# bench_evaluate: {a.model}, {a.attacks}, {a.n_examples} test images; {hardware_name()}")
    print(f"1 process x {a.threads} threads: {one:7.1f} s")
    print(f"{a.procs} processes x {per_proc} threads: {many:7.1f} s   speed-up {one / many:.2f}x   "
          f"same numbers: {'yes' if same else 'NO'} (clean {rn['clean_acc']}, PGD {rn['pgd_acc']})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
