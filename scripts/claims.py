"""The paper's claims, checked one by one against the results files (rendered into the README).

    python scripts/claims.py            # print the claims table from results/

Each claim compares numbers from results files written by `python -m rocl_zoo.evaluate` or
`python -m rocl_zoo.finetune`, looked up by the model name, protocol, dataset and threat model they record. The
rule that makes a claim "reproduced" is written next to it, fixed before the numbers came in; a claim whose
files are missing says which ones, and what makes them.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROCL, SIMCLR, AT = "cnn4_rocl.fmnist", "cnn4_rocl.fmnist_simclr", "cnn4_rocl.fmnist_at"
TRADES = "cnn4_rocl.fmnist_trades"
ROCL_AT = "cnn4_rocl.fmnist_rocl_at"  # the shipped RoCL+AT classifier: `finetune-at` results of ROCL, as it is
# where RoCL+AT's numbers live: rocl_zoo.finetune's results (under the encoder), or the zoo entry re-evaluated
ROCL_AT_SOURCES = [(ROCL, "finetune-at"), (ROCL_AT, "none")]
SIMCLR_AT = "cnn4_rocl.fmnist_simclr_at"  # the same fine-tuning of the SimCLR encoder
SIMCLR_AT_SOURCES = [(SIMCLR, "finetune-at"), (SIMCLR_AT, "none")]
EPS, EPS_L2 = 0.1, 1.5  # Fashion-MNIST's l-inf budget; the unseen l2 budget (the l-inf ball's corner is 2.8)


@dataclass
class Number:
    acc: float  # %
    n: int

    def __str__(self) -> str:
        return f"{self.acc:.1f}"


def lookup(results, model, attack, *, protocol=None, dataset="fashion_mnist", threat="Linf", eps=EPS,
           transfer_from=None) -> Number | None:
    """The accuracy under `attack` (a results-file attack name, or "autoattack") of the named model, from the
    matching results file with the most examples. `protocol`: one name or a tuple of them (the shipped SLF
    classifier evaluated as it is records "none", its linear evaluation "linear")."""
    protocols = (protocol,) if isinstance(protocol, str) else protocol
    best = None
    for r in results:
        if (r.get("model"), r.get("dataset")) != (model, dataset) or (protocols and r.get("protocol") not in protocols):
            continue
        for name, a in r.get("attacks", {}).items():
            c = a["config"]
            if c["attack"] != "clean" and (c.get("threat_model") != threat or abs(c.get("eps", -1) - eps) > 1e-9):
                continue
            if c.get("transfer_from") != transfer_from:
                continue
            n = a.get("n_examples", r["n_examples"])  # AutoAttack may have run on a subset
            if name.split("@")[0] == attack and (best is None or n > best.n):
                best = Number(100 * a["acc"], n)
    return best


def most_examples(*numbers: Number | None) -> Number | None:
    """The number measured on the most examples (the first of equals); None if none was measured."""
    return max((n for n in numbers if n), key=lambda n: n.n, default=None)


def lookup_any(results, sources, attack, **kw) -> Number | None:
    """`lookup` over several (model, protocol) sources of the same weights: the one on the most examples."""
    return most_examples(*(lookup(results, m, attack, protocol=p, **kw) for m, p in sources))


@dataclass
class Claim:
    text: str
    rule: str
    compare: list  # [(label, Number | None, how to make it)]
    holds: callable  # numbers -> bool
    also: list = field(default_factory=list)  # [(label, Number | None)]: AutoAttack beside PGD, not in the rule

    def row(self) -> str:
        nums = [n for _, n, _ in self.compare]
        missing = [how for _, n, how in self.compare if n is None]
        shown = "; ".join(f"{label} {n} (n={n.n})" for label, n, _ in self.compare if n is not None)
        also = [f"{label} {n} (n={n.n})" for label, n in self.also if n is not None]
        if also:
            shown += "; AutoAttack: " + ", ".join(also)
        if missing:
            verdict = "not measured yet: needs " + "; ".join(dict.fromkeys(missing))
        else:
            verdict = "**reproduced**" if self.holds(*[n.acc for n in nums]) else "**not reproduced**"
        return f"| {self.text} | {self.rule} | {shown or '–'} | {verdict} |"


def claims(results) -> list[Claim]:
    def get(model, attack="pgd20", **kw):
        return lookup(results, model, attack, **kw)

    slf = ("linear", "none")
    rocl_lin = get(ROCL, protocol=slf)
    rocl_rlin = get(ROCL, protocol="robust-linear")
    rocl_best = max((n for n in (rocl_lin, rocl_rlin) if n), key=lambda n: n.acc, default=None)
    at = get(AT, protocol="none")

    def rocl_at(attack="pgd20"):
        return lookup_any(results, ROCL_AT_SOURCES, attack)

    train_simclr = "`bash scripts/zoo_fmnist.sh simclr`"
    train_at = "`bash scripts/zoo_fmnist.sh at`"
    transfer = "`bash scripts/zoo_fmnist.sh transfer` (after simclr and at)"
    claims_out = [
        Claim("RoCL is far more robust than SimCLR", "RoCL PGD-20 >= SimCLR PGD-20 + 10 points (both linear eval)",
              [("RoCL", rocl_lin, "`bash scripts/zoo_fmnist.sh rocl`"),
               ("SimCLR", get(SIMCLR, protocol=slf), train_simclr)],
              lambda r, s: r >= s + 10,
              [("RoCL", get(ROCL, "autoattack", protocol=slf)), ("SimCLR", get(SIMCLR, "autoattack", protocol=slf))]),
        Claim("RoCL comes close to supervised adversarial training without labels",
              "best RoCL linear protocol PGD-20 >= PGD-AT PGD-20 - 5 points",
              [("RoCL", rocl_best, "`bash scripts/zoo_fmnist.sh rocl`"), ("PGD-AT", at, train_at)],
              lambda r, a: r >= a - 5,
              [("RoCL SLF", get(ROCL, "autoattack", protocol=slf)),
               ("RoCL ALF", get(ROCL, "autoattack", protocol="robust-linear")),
               ("PGD-AT", get(AT, "autoattack", protocol="none"))]),
        Claim("RoCL + adversarial fine-tuning beats adversarial training",
              "RoCL+AT (PGD-AT fine-tuning of the RoCL encoder) PGD-20 > PGD-AT PGD-20",
              [("RoCL+AT", rocl_at(), "`bash scripts/zoo_fmnist.sh rocl_at`"), ("PGD-AT", at, train_at)],
              lambda r, a: r > a,
              [("RoCL+AT", rocl_at("autoattack")), ("PGD-AT", get(AT, "autoattack", protocol="none"))]),
        Claim("RoCL resists black-box attacks better",
              "RoCL accuracy >= PGD-AT accuracy under PGD-20 transferred from the SimCLR classifier",
              [("RoCL", get(ROCL, "transfer-pgd20", protocol=slf, transfer_from=SIMCLR), transfer),
               ("PGD-AT", get(AT, "transfer-pgd20", protocol="none", transfer_from=SIMCLR), transfer)],
              lambda r, a: r >= a),
        Claim("RoCL resists an unseen threat (l2) better",
              f"RoCL PGD-20 l2 accuracy >= PGD-AT's at l2 eps {EPS_L2} (both trained for l-inf 0.1)",
              [("RoCL", get(ROCL, "pgd20-l2", protocol=slf, threat="L2", eps=EPS_L2),
                "`bash scripts/zoo_fmnist.sh rocl`"),
               ("PGD-AT", get(AT, "pgd20-l2", protocol="none", threat="L2", eps=EPS_L2), train_at)],
              lambda r, a: r >= a),
        Claim("RoCL transfers robustness better",
              "digits, PGD-AT fine-tuning: RoCL encoder PGD-20 >= PGD-AT encoder PGD-20",
              [("RoCL", get(ROCL, dataset="digits", protocol="finetune-at"),
                "`bash scripts/finetune_digits_example.sh`"),
               ("PGD-AT", get(AT, dataset="digits", protocol="finetune-at"),
                f"`bash scripts/finetune_digits_example.sh {AT}`")],
              lambda r, a: r >= a,
              [("RoCL", get(ROCL, "autoattack", dataset="digits", protocol="finetune-at")),
               ("PGD-AT", get(AT, "autoattack", dataset="digits", protocol="finetune-at"))]),
    ]
    return claims_out


# The summary: one row per model and protocol, the same lookups as the claims. (label, [(model, protocol), ...]):
# a shipped classifier evaluated as it is records protocol "none" beside the run that made its head.
SUMMARY_ROWS = [
    ("RoCL, linear eval (SLF)", [(ROCL, ("linear", "none"))]),
    ("RoCL, robust linear eval (ALF)", [(ROCL, "robust-linear")]),
    ("RoCL+AT (PGD-AT fine-tuning)", ROCL_AT_SOURCES),
    ("SimCLR, linear eval (SLF)", [(SIMCLR, ("linear", "none"))]),
    ("SimCLR, robust linear eval (ALF)", [(SIMCLR, "robust-linear")]),
    ("SimCLR+AT (PGD-AT fine-tuning)", SIMCLR_AT_SOURCES),
    ("PGD-AT (supervised)", [(AT, "none")]),
    ("TRADES (supervised)", [(TRADES, "none")]),
]
# (column, attack, lookup options)
SUMMARY_COLUMNS = [
    ("Clean", "clean", {}),
    ("PGD-20", "pgd20", {}),
    ("CW", "cw", {}),
    ("AutoAttack", "autoattack", {}),
    ("PGD-20, 8/255", "pgd20", {"eps": 8 / 255}),
    (f"PGD-20, l2 {EPS_L2}", "pgd20-l2", {"threat": "L2", "eps": EPS_L2}),
    ("black-box from SimCLR", "transfer-pgd20", {"transfer_from": SIMCLR}),
]


def summary_markdown(results) -> str:
    """Every Fashion-MNIST model at a glance: each cell from the results file with the most examples."""
    head = "| Model | " + " | ".join(c for c, _, _ in SUMMARY_COLUMNS) + " |"
    lines = [head, "|---|" + "---:|" * len(SUMMARY_COLUMNS)]
    for label, sources in SUMMARY_ROWS:
        cells = []
        for _, attack, kw in SUMMARY_COLUMNS:
            n = lookup_any(results, sources, attack, **kw)
            cells.append("–" if n is None else f"{n.acc:.1f} <sub>n={n.n:,}</sub>")
        if any(c != "–" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def claims_markdown(results) -> str:
    lines = ["| Claim (RoCL paper) | Rule | Numbers (% accuracy, l-inf 0.1 unless said) | Verdict |",
             "|---|---|---|---|"]
    lines += [c.row() for c in claims(results)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from rocl_zoo.evaluate import load_results

    sys.stdout.write(claims_markdown(load_results(ROOT / "results")))
