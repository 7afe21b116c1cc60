"""Serving: throughput and p50/p95 latency of the LitServe server with and without batching, and of
rocl_zoo.predict called in process one image at a time, at 1, 8 and 32 concurrent clients.

    python benchmarks/bench_serve.py [--model cnn4_rocl.fmnist_at] [--clients 1 8 32] [--seconds 3] [--rounds 2]

Two servers (`python -m rocl_zoo.serve`, --backend torch unless given, 1 torch thread each) run at once:
`--max-batch-size 32` (batched, --batch-timeout 0: a batch takes what queued while the previous one ran) and
`--max-batch-size 1` (unbatched serving, the reference). An idle server blocks on its queue, so it
does not slow the other; blocks of --seconds alternate between the two (and the in-process calls), --rounds times,
so that background load hits all alike and the ratio is the number to read. Clients are threads of this process,
each a keep-alive HTTP connection that posts one Fashion-MNIST test image (28x28 PNG, base64 in JSON) for its
top-5, back to back (a closed loop). rocl_zoo.predict gets the same file, one call per image, in this process.
On a CPU with native bf16 a third server runs batched with `--amp bf16` (bf16 autocast), against the same fp32
unbatched reference. Goal: batched serving >= 3x the unbatched server's throughput at 32 clients.
Results are printed and written to benchmarks/results/bench_serve.txt.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import rocl_zoo  # noqa: E402
from rocl_zoo.serve import launched  # noqa: E402
from report import RESULTS, Report  # noqa: E402

IMAGE = ROOT / "rocl_zoo" / "assets" / "fmnist_00000_ankle_boot.png"


def load_test(url: str, body: bytes, clients: int, seconds: float) -> tuple[list, float]:
    """Per-request latencies of `clients` closed-loop clients for `seconds`, and the wall time they took."""
    host, port = url.split("//")[1].split(":")
    stop = time.perf_counter() + seconds
    latencies, errors = [], []

    def client():
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        mine = []
        try:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
                mine.append(time.perf_counter() - t)
        except Exception as e:  # reported after the block
            errors.append(e)
        finally:
            conn.close()
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed, e.g. {errors[0]}")
    return latencies, time.perf_counter() - t0


def in_process(model, seconds: float) -> tuple[list, float]:
    """Latencies of rocl_zoo.predict on the image file, one call after another, for `seconds`."""
    latencies, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        rocl_zoo.predict(model, IMAGE, topk=5)
        latencies.append(time.perf_counter() - t)
    return latencies, time.perf_counter() - t0


def forward(model, batch: int, seconds: float) -> tuple[list, float]:
    """Per-image seconds of the model's forward alone on a batch of `batch` images, calls back to back."""
    x = torch.rand(batch, *model.pretrained_cfg["input_size"])
    latencies, t0 = [], time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - t0 < seconds:
            t = time.perf_counter()
            model(x)
            latencies += [(time.perf_counter() - t) / batch] * batch
    return latencies, time.perf_counter() - t0


def row(name: str, clients: int, runs: list, ref: float | None) -> tuple[str, float]:
    lat = sorted(x for lats, _ in runs for x in lats)
    rate = len(lat) / sum(wall for _, wall in runs)
    p50, p95 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(0.95 * len(lat)))]
    ratio = f"{rate / ref:>6.2f}x" if ref else f"{'':>7}"
    return (f"{name:<34} {clients:>7} {rate:>9.1f} {1000 * p50:>8.2f} {1000 * p95:>8.2f} {ratio} {len(lat):>8}",
            rate)


UNBATCHED, BATCHED = "server, unbatched (max batch 1)", "server, batched (max batch 32)"
BATCHED_BF16 = "server, batched, --amp bf16"


def measure(args, model, body: bytes) -> dict:
    """{(setting, clients): [(latencies, wall seconds) per block]}, the settings' blocks alternating."""
    import contextlib

    from rocl_zoo.precision import cpu_has_native_bf16

    common = ["--model", args.model, "--backend", args.backend, "--threads", "1", "--device", "cpu"]
    batched_args = common + ["--max-batch-size", "32", "--batch-timeout", args.batch_timeout]
    bf16 = args.backend == "torch" and cpu_has_native_bf16()
    with launched(batched_args) as batched, launched(common + ["--max-batch-size", "1"]) as unbatched, \
            (launched(batched_args + ["--amp", "bf16"]) if bf16 else contextlib.nullcontext()) as batched_bf16:
        servers = {UNBATCHED: unbatched, BATCHED: batched, **({BATCHED_BF16: batched_bf16} if bf16 else {})}
        for url in servers.values():
            load_test(url, body, 4, 0.5)  # warm-up: connections, first forward passes
        in_process(model, 0.5)
        runs = {("in process", 1): [], ("forward", 1): [], ("forward", 32): []}
        runs |= {(name, c): [] for c in args.clients for name in servers}
        for _ in range(args.rounds):
            runs["in process", 1].append(in_process(model, args.seconds))
            for b in (1, 32):
                runs["forward", b].append(forward(model, b, args.seconds / 2))
            for c in args.clients:
                for name, url in servers.items():
                    runs[name, c].append(load_test(url, body, c, args.seconds))
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cnn4_rocl.fmnist_at", help="zoo name or folder (default: %(default)s)")
    p.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32], help="concurrent clients (default: 1 8 32)")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per measured block (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="blocks per (setting, clients) (default: %(default)s)")
    p.add_argument("--batch-timeout", type=float, default=0.0,
                   help="the batched server's --batch-timeout (default: %(default)s)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="both servers' --backend (default: %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_serve.txt",
                   help="where to write the table (default: %(default)s)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    report = Report(f"Serving {args.model} ({args.backend} backend, batched server's --batch-timeout "
                    f"{args.batch_timeout:g}): LitServe server batched vs unbatched vs rocl_zoo.predict in process")
    say = report.say
    body = json.dumps({"image": base64.b64encode(IMAGE.read_bytes()).decode(), "topk": 5}).encode()
    runs = measure(args, rocl_zoo.load(args.model), body)
    say(f"{'setting':<34} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'ratio':>7} {'requests':>8}")
    say(row("rocl_zoo.predict, in process", 1, runs["in process", 1], None)[0])
    line, ref = row("model forward only, batch 1", 1, runs["forward", 1], None)
    say(line)
    say(row("model forward only, batch 32", 1, runs["forward", 32], ref)[0])
    ratios = {}
    for c in args.clients:
        line, ref = row(UNBATCHED, c, runs[UNBATCHED, c], None)
        say(line)
        line, rate = row(BATCHED, c, runs[BATCHED, c], ref)
        say(line)
        ratios[c] = rate / ref
        if (BATCHED_BF16, c) in runs:
            line, rate = row(BATCHED_BF16, c, runs[BATCHED_BF16, c], ref)
            say(line)
            ratios[c, "bf16"] = rate / ref
    bf16 = (f", {ratios[32, 'bf16']:.2f}x batched in bf16 ({'met' if ratios[32, 'bf16'] >= 3 else 'not met'})"
            if (32, "bf16") in ratios else "")
    report.save(args.out, "ratio = batched req/s / unbatched req/s at the same clients (forward rows: batch 32 / "
                "batch 1 images/s, the most batching can save in compute; latencies there are per image); one image "
                f"per request; {args.rounds} blocks of {args.seconds:g} s each, alternating. Goal: >= 3x at 32 "
                f"clients: {ratios.get(32, float('nan')):.2f}x in fp32 "
                f"({'met' if ratios.get(32, 0) >= 3 else 'not met'}){bf16}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
