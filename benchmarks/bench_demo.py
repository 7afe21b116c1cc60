"""The demo's latency: one PGD-10 attack on one image with the default model, and page-ready time after start.

    python benchmarks/bench_demo.py [--model cnn4_rocl.fmnist] [--repeats 20] [--no-browser]

Rows (median and best of --repeats, after a warm-up):
  attack only          rocl_zoo.attacks.pgd, l-inf eps 0.1, 10 steps, one 28x28 image: the compute itself.
  Demo.attack          what the /attack endpoint computes: decode the PNG, the attack, 8-bit quantisation, both
                       models' predictions before and after, the summary (app_logic, no server).
  /attack via client   gradio_client against a running `python app.py` (upload, queue, result PNGs, download).
Page ready: `python app.py` started as a subprocess until its URL answers HTTP 200 (imports, models, examples,
server), and until Chromium (Debian's, when present) shows the rendered page with its "Run attack" button.
Goal: the attack under 1 s on this CPU. The default zoo model falls back to the untrained architecture until its
weights are published: the latency is the architecture's, the same either way. The app runs one torch thread per
request (app.py --threads 1), and so does this benchmark. Results go to benchmarks/results/bench_demo.txt too.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from report import RESULTS, Report  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
EPS, STEPS = 0.1, 10


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median, best) seconds of fn() over `repeats` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def browser_ready(url: str, t0: float) -> float | None:
    """Seconds from t0 until Chromium shows the page's Run attack button (None without Chromium/Playwright)."""
    if not Path(CHROMIUM).is_file():
        return None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#run-attack", state="visible", timeout=120_000)
            return time.perf_counter() - t0
        finally:
            browser.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn4_rocl.fmnist")
    parser.add_argument("--baseline", default="cnn4_rocl.fmnist_simclr")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium page-ready measurement")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_demo.txt")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    import app_logic as L
    from rocl_zoo import attacks

    report = Report(f"bench_demo: PGD-10 (l-inf, eps {EPS}) on one 28x28 image, and page-ready time")
    demo = L.build_demo(args.model, args.baseline)
    robust = demo.models[L.ROBUST]
    example = str(demo.examples.gallery_examples()[0])
    x = demo._view(L.ROBUST, L.read_image(example))
    y = torch.tensor([9])
    rows = [("attack only (attacks.pgd)", *timed(lambda: attacks.pgd(robust.model, x, y, EPS, steps=STEPS),
                                                 args.repeats)),
            ("Demo.attack (endpoint compute)", *timed(lambda: demo.attack(example, "pgd_linf", EPS, STEPS),
                                                      args.repeats))]

    t0 = time.perf_counter()
    proc, url, http_ready = L.start_server(args.model, args.baseline, timeout=300.0)
    try:
        page_ready = None if args.no_browser else browser_ready(url, t0)
        from gradio_client import Client, handle_file

        client = Client(url, verbose=False)
        rows.append(("/attack via gradio_client", *timed(
            lambda: client.predict(handle_file(example), "pgd_linf", EPS, STEPS, "robust", api_name="/attack"),
            max(5, args.repeats // 4))))
    finally:
        L.stop_server(proc)

    untrained = " (untrained fallback: weights not published yet)" if robust.warning else ""
    report.say(f"torch {torch.__version__}; model: {args.model}{untrained}; baseline: {args.baseline}")
    report.say(f"{'measure':<34} {'median':>9} {'best':>9}")
    for name, med, best in rows:
        report.say(f"{name:<34} {med * 1000:>7.1f}ms {best * 1000:>7.1f}ms")
    report.say(f"{'page ready: server answers HTTP':<34} {http_ready:>8.2f}s")
    if page_ready is not None:
        report.say(f"{'page ready: rendered in Chromium':<34} {page_ready:>8.2f}s")
    verdict = "met" if max(r[1] for r in rows) < 1.0 else "NOT met"
    report.save(args.out, f"goal (PGD-10 attack on one image under 1 s, median, every row): {verdict}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
