"""The benchmarks' results file: the command line, the hardware and the load first, the lines as they are printed,
the total time and the load after, written atomically to benchmarks/results/."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rocl_zoo.utils import atomic_write, hardware_name  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class Report:
    """Print lines and keep them for the results file; `save` adds the total time and the load average."""

    def __init__(self, title: str, device: str = "cpu"):
        self.lines: list[str] = []
        self.start = time.perf_counter()
        self.say("# " + " ".join(["python", *sys.argv]))
        self.say(title)
        self.say(f"hardware: {hardware_name(device)}; load average before: {os.getloadavg()[0]:.1f}")

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def save(self, out: Path, summary: str = "") -> None:
        """Print `summary` with the total time and load average, then write every line to `out`."""
        self.say(f"{summary}{' ' if summary else ''}Total {time.perf_counter() - self.start:.0f} s, "
                 f"load average after: {os.getloadavg()[0]:.1f}.")
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(out, "w") as f:
            f.write("\n".join(self.lines) + "\n")
