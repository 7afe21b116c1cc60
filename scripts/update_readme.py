"""Regenerate the README blocks that come from code and results files (run after training or evaluation).

    python scripts/update_readme.py          # rewrite README.md in place
    python scripts/update_readme.py --check  # exit 1 if README.md is stale (the test suite runs this)
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def blocks() -> dict[str, str]:
    from rocl_zoo.results import of_shipped_weights, read_all, render_table
    from rocl_zoo.zoo import zoo_table_markdown

    from claims import claims_markdown, successor_claims_markdown, summary_markdown, targets_markdown
    from training.heldout import equal_compute_markdown, status_markdown
    from training.matrix import FINETUNED
    from training.matrix import markdown as matrix_markdown
    from training.reproduce import cost_markdown

    root = ROOT / "results"
    results = read_all(root) if root.is_dir() else []
    # the zoo's models only: experiments such as results/precision-ab have their own table and script; and of a
    # released entry, its shipped weights only (a new run measured before its release waits for it)
    results = of_shipped_weights([r for r in results if r.path.relative_to(root).parts[0] != "precision-ab"],
                                 FINETUNED)
    table = render_table(results).rstrip("\n") if results else "No results files yet."
    return {"zoo-table": zoo_table_markdown(), "matrix": matrix_markdown().rstrip("\n"),
            "protocol-cost": cost_markdown(root).rstrip("\n"), "results-table": table,
            "summary": summary_markdown(results).rstrip("\n"),
            "curves": status_markdown(root / "curves").rstrip("\n"),
            "equal-compute": equal_compute_markdown(root / "curves").rstrip("\n"),
            "claims": claims_markdown(results).rstrip("\n"),
            "successor-claims": successor_claims_markdown(results).rstrip("\n"),
            "targets": targets_markdown(results).rstrip("\n")}


def render(text: str) -> str:
    for name, body in blocks().items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- {name}:start --> ... <!-- {name}:end --> block")
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    old = readme.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print("README.md is stale: run `python scripts/update_readme.py`", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
