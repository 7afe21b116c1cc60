"""The bf16-against-fp32 table from scripts/precision_ab.sh's results, with its verdict.

    python scripts/precision_ab.py            # prints the markdown table and verdicts, writes them to
                                              # results/precision-ab/README.md, and copies each finished run's
                                              # config.json and metrics.jsonl next to its results file

bf16 passes for a recipe when its clean and PGD-20 accuracy fall inside the two fp32 seeds' range, or within
1 point of the nearer fp32 seed.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rocl_zoo.results import read, write_index  # noqa: E402

RESULTS = ROOT / "results" / "precision-ab"
RUNS = ROOT / "runs" / "precision-ab"
RUN_NAMES = [f"{kind}-{amp}-seed{seed}" for kind in ("at", "rocl") for amp, seed in (("off", 0), ("off", 1),
                                                                                      ("bf16", 0))]
METRICS = ("clean_acc", "pgd_acc")


def keep_training_records() -> None:
    """The finished runs' config.json and metrics.jsonl, beside their results (runs/ is not committed)."""
    for name in RUN_NAMES:
        if not any((RUNS / name / folder / "model.safetensors").is_file() for folder in ("model", "encoder")):
            continue  # still training
        for f in ("config.json", "metrics.jsonl"):
            src = RUNS / name / f
            if src.is_file():
                (RESULTS / f"{name}-training").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, RESULTS / f"{name}-training" / f)


def training_record(name: str) -> dict:
    """Precision, CPU and the epoch's training wall time, from the run's committed records."""
    folder = RESULTS / f"{name}-training"
    if not (folder / "metrics.jsonl").is_file():
        return {}
    config = json.loads((folder / "config.json").read_text())
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]
    epochs = [x for x in lines if x.get("record") == "epoch"]
    return dict(precision=config.get("precision"), hardware=config.get("hardware"),
                time_s=sum(e["time_s"] for e in epochs))


def verdict(bf16: float, fp32: list[float]) -> bool:
    lo, hi = min(fp32), max(fp32)
    return lo <= bf16 <= hi or min(abs(bf16 - lo), abs(bf16 - hi)) <= 1.0


def main() -> int:
    keep_training_records()
    rows = ["| Run | Precision | Clean (%) | PGD-20 (%) | n | Training wall time (s) |", "|---|---|---:|---:|---:|---:|"]
    results = {}
    for name in RUN_NAMES:
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            rows.append(f"| {name} | – | pending | pending | – | – |")
            continue
        r = read(path).data
        results[name] = r
        t = training_record(name)
        time_s = f"{t['time_s']:.0f}" if t.get("time_s") else "–"
        rows.append(f"| {name} | {t.get('precision', '–')} | {r['clean_acc']:.2f} | {r['pgd_acc']:.2f} | "
                    f"{r['n_examples']} | {time_s} |")
    lines = ["# bf16 against fp32: one epoch each, the same seed", "",
             "Made by `bash scripts/precision_ab.sh`, tabled by `python scripts/precision_ab.py`. Clean and PGD-20 "
             "(l-inf 0.1, 20 steps of 0.01, fp32) on all 10,000 Fashion-MNIST test images; RoCL's encoders read out "
             "with the standard linear evaluation (SLF, 150 epochs). The wall times ran on a machine shared with other "
             "work and paused for benchmarks: they are no speed measurement (benchmarks/ has those).", "", *rows]
    for kind in ("at", "rocl"):
        names = [f"{kind}-off-seed0", f"{kind}-off-seed1", f"{kind}-bf16-seed0"]
        if not all(n in results for n in names):
            lines += ["", f"{kind}: incomplete ({', '.join(n for n in names if n not in results)} pending)"]
            continue
        for m in METRICS:
            fp32 = [results[n][m] for n in names[:2]]
            bf16 = results[names[2]][m]
            ok = verdict(bf16, fp32)
            lines += ["", f"{kind} {m}: fp32 seeds {fp32[0]:.2f} / {fp32[1]:.2f} (spread "
                          f"{abs(fp32[0] - fp32[1]):.2f}), bf16 {bf16:.2f}: "
                          f"{'inside the spread or within 1 point' if ok else 'OUTSIDE'}"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    (RESULTS / "README.md").write_text(text)
    write_index(RESULTS.parent)  # the runs add results files: results/index.json lists them
    return 0


if __name__ == "__main__":
    sys.exit(main())
