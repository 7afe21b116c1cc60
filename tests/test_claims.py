"""scripts/claims.py: the README's claim verdicts follow the results files and the written rules."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import claims as C  # noqa: E402


def result(model, protocol, accs, *, dataset="fashion_mnist", threat="Linf", eps=0.1, n=1000, transfer_from=None):
    attacks = {"clean": {"config": {"name": "clean", "attack": "clean"}, "acc": 0.9}}
    for name, acc in accs.items():
        cfg = {"name": name, "attack": "pgd", "threat_model": threat, "eps": eps}
        if transfer_from:
            cfg["transfer_from"] = transfer_from
        attacks[name] = {"config": cfg, "acc": acc}
    return {"model": model, "protocol": protocol, "dataset": dataset, "n_examples": n, "attacks": attacks}


def verdicts(results):
    return [c.row().rsplit("|", 2)[-2].strip() for c in C.claims(results)]


def test_missing_files_name_the_command_that_makes_them():
    rows = verdicts([result(C.ROCL, "linear", {"pgd20": 0.45})])
    assert rows[0].startswith("not measured yet") and "zoo_fmnist.sh simclr" in rows[0]
    assert all(v.startswith("not measured yet") for v in rows)


def test_rules_decide_the_verdicts():
    results = [result(C.ROCL, "linear", {"pgd20": 0.45}), result(C.SIMCLR, "linear", {"pgd20": 0.40}),
               result(C.AT, "none", {"pgd20": 0.52}), result(C.ROCL, "robust-linear", {"pgd20": 0.48}),
               result(C.ROCL, "finetune-at", {"pgd20": 0.60})]
    v = verdicts(results)
    assert v[0] == "**not reproduced**"  # 45 < 40 + 10
    assert v[1] == "**reproduced**"      # the better protocol (robust-linear 48) is within 5 points of 52
    assert v[2] == "**reproduced**"      # 60 > 52
    results[1] = result(C.SIMCLR, "linear", {"pgd20": 0.02})
    results[3] = result(C.ROCL, "robust-linear", {"pgd20": 0.30})
    v = verdicts(results)
    assert v[0] == "**reproduced**" and v[1] == "**not reproduced**"


def test_lookup_prefers_more_examples_and_matches_threat_and_source():
    results = [result(C.ROCL, "none", {"pgd20": 0.40}, n=200), result(C.ROCL, "linear", {"pgd20": 0.45}, n=1000),
               result(C.ROCL, "none", {"pgd20-l2": 0.70}, threat="L2", eps=C.EPS_L2),
               result(C.ROCL, "none", {"transfer-pgd20": 0.80}, transfer_from=C.SIMCLR)]
    assert C.lookup(results, C.ROCL, "pgd20", protocol=("linear", "none")).acc == 45.0
    assert C.lookup(results, C.ROCL, "pgd20-l2", threat="L2", eps=C.EPS_L2).acc == 70.0
    assert C.lookup(results, C.ROCL, "pgd20-l2") is None  # l-inf 0.1 asked, only l2 measured
    assert C.lookup(results, C.ROCL, "transfer-pgd20", transfer_from=C.SIMCLR).acc == 80.0
    assert C.lookup(results, C.ROCL, "transfer-pgd20", transfer_from="other") is None


def test_autoattack_on_a_subset_counts_its_own_examples():
    full = result(C.ROCL, "finetune-at", {"pgd20": 0.60}, n=1000)
    full["attacks"]["autoattack"] = {"config": {"name": "autoattack", "attack": "autoattack", "threat_model": "Linf",
                                                "eps": 0.1}, "acc": 0.55, "n_examples": 100}
    alone = result(C.ROCL, "finetune-at", {"autoattack": 0.50}, n=200)
    got = C.lookup([full, alone], C.ROCL, "autoattack", protocol="finetune-at")
    assert (got.acc, got.n) == (50.0, 200)  # 200 images beat the 100 of the 1,000-image file's subset
    got = C.lookup([full], C.ROCL, "autoattack", protocol="finetune-at")
    assert (round(got.acc, 6), got.n) == (55.0, 100)
    row = next(c for c in C.claims([full, result(C.AT, "none", {"pgd20": 0.52})]) if "beats" in c.text).row()
    assert "AutoAttack: RoCL+AT 55.0 (n=100)" in row


def test_rocl_at_counts_the_shipped_classifier_evaluated_as_it_is():
    """RoCL+AT's numbers come from rocl_zoo.finetune (under the encoder's name) or from its zoo entry evaluated
    again (e.g. on the whole test split), whichever ran on more images."""
    results = [result(C.AT, "none", {"pgd20": 0.70}), result(C.ROCL, "finetune-at", {"pgd20": 0.75}, n=1000),
               result(C.ROCL_AT, "none", {"pgd20": 0.69}, n=10000)]
    row = next(c for c in C.claims(results) if "beats" in c.text).row()
    assert "RoCL+AT 69.0 (n=10000)" in row and row.endswith("**not reproduced** |")
    assert C.most_examples(None, None) is None


def test_summary_has_a_row_per_measured_model_with_each_cells_sample_size():
    results = [result(C.ROCL, "linear", {"pgd20": 0.45}), result(C.ROCL, "none", {"pgd20": 0.43}, n=10000),
               result(C.ROCL, "none", {"pgd20": 0.60}, eps=8 / 255, n=1000),
               result(C.AT, "none", {"pgd20-l2": 0.55}, threat="L2", eps=C.EPS_L2)]
    lines = C.summary_markdown(results).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| Model | Clean | PGD-20 |")  # RoCL SLF and PGD-AT only
    rocl = dict(zip(lines[0].split(" | "), lines[2].split(" | ")))
    assert rocl["PGD-20"] == "43.0 <sub>n=10,000</sub>"            # the file on the most images wins
    assert rocl["PGD-20, 8/255"] == "60.0 <sub>n=1,000</sub>" and rocl["CW"] == "–"
    assert "55.0 <sub>n=1,000</sub>" in lines[3] and lines[3].startswith("| PGD-AT")
