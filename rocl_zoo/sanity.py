"""Gradient-masking checks: the signs that an attack's number overstates robustness (Carlini et al. 2019's list).

Each check returns {"name", "ok" (True, False, or None when skipped), "message", "values"}; `run_sanity_checks` runs
them all on one subset and lists those that fired. Accuracies here are fractions, as their tolerances are.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from .attack_suite import correct_under, fraction, parse_attack
from .threat import eps_str

def _tol(n: int) -> float:
    """Absolute accuracy tolerance for paired comparisons on n examples: 2 points or 2 examples."""
    return max(0.02, 2.0 / max(n, 1))


def _check(name: str, ok, message: str, **values) -> dict:
    return {"name": name, "ok": ok, "message": message, "values": values}


def _acc(model, x, y, cfg, batch_size, seed, source_model=None) -> float:
    return fraction(correct_under(model, x, y, cfg, batch_size=batch_size, seed=seed, source_model=source_model))


def check_eps_monotone(model, x, y, *, eps: float, norm: str, steps: int = 20, factors=(0.25, 0.5, 1.0, 2.0),
                       batch_size: int = 256, seed: int = 0) -> dict:
    """PGD accuracy must not rise as eps grows (beyond sampling noise)."""
    accs = {}
    for f in factors:
        cfg = parse_attack(f"pgd{steps}@{eps * f!r}", eps * f, norm)
        accs[eps_str(eps * f)] = _acc(model, x, y, cfg, batch_size, seed)
    values = list(accs.values())
    tol = _tol(len(y))
    rises = [(a, b) for a, b in zip(values, values[1:]) if b > a + tol]
    return _check("eps_monotone", not rises,
                  "accuracy does not rise as eps grows" if not rises else
                  "accuracy ROSE as eps grew: the attack is not following the loss (gradient masking?)",
                  accuracy_by_eps=accs, tolerance=tol)


def large_eps(norm: str, x: torch.Tensor) -> float:
    """A budget that reaches a mid-grey image from any input: l-inf 0.5, l2 0.5 * sqrt(dim)."""
    return 0.5 if norm == "linf" else 0.5 * math.sqrt(x[0].numel())


def check_large_eps(model, x, y, *, norm: str, num_classes: int, steps: int = 20, batch_size: int = 256,
                    seed: int = 0) -> dict:
    """At a very large eps, PGD *without* random start must drive accuracy to chance or below.

    No random start on purpose: at such budgets random noise alone often fools a model, which would hide
    gradients that are zero or useless.
    """
    e = large_eps(norm, x)
    cfg = {**parse_attack(f"pgd{steps}@{e!r}", e, norm), "random_start": False}
    acc = _acc(model, x, y, cfg, batch_size, seed)
    chance = 1.0 / num_classes
    limit = chance + max(0.05, 2.0 / max(len(y), 1))
    return _check("large_eps_chance", acc <= limit,
                  f"at eps {eps_str(e)} PGD reaches chance" if acc <= limit else
                  f"at eps {eps_str(e)} PGD leaves {acc:.1%} accuracy (chance {chance:.1%}): gradients do not lead "
                  f"the attack (gradient masking, or a bug)", eps=e, accuracy=acc, chance=chance, limit=limit)


def check_more_steps(model, x, y, *, eps: float, norm: str, base_acc: float | None = None, steps: int = 20,
                     more_steps: int = 50, restarts: int = 2, batch_size: int = 256, seed: int = 0) -> dict:
    """More steps and restarts must not give a higher robust accuracy than PGD-`steps`."""
    base_cfg = parse_attack(f"pgd{steps}", eps, norm)
    if base_acc is None:
        base_acc = _acc(model, x, y, base_cfg, batch_size, seed)
    more_cfg = {**parse_attack(f"pgd{more_steps}x{restarts}", eps, norm), "alpha": base_cfg["alpha"]}
    more_acc = _acc(model, x, y, more_cfg, batch_size, seed + 1)
    tol = _tol(len(y))
    ok = more_acc <= base_acc + tol
    return _check("more_steps_restarts", ok,
                  "more steps and restarts do not raise robust accuracy" if ok else
                  f"PGD-{more_steps} x {restarts} restarts gives HIGHER accuracy than PGD-{steps}: the attack is "
                  f"unstable (gradient masking?)", base=f"pgd{steps}", base_acc=base_acc,
                  more=f"pgd{more_steps}x{restarts}", more_acc=more_acc, tolerance=tol)


def check_black_box(white_box_acc: float, black_box_acc: float | None, n: int, source: str | None = None) -> dict:
    """A black-box (transfer) attack must not beat the white-box one."""
    if black_box_acc is None:
        return _check("black_box_not_stronger", None, "skipped: no --transfer-from source")
    tol = _tol(n)
    ok = black_box_acc >= white_box_acc - tol
    return _check("black_box_not_stronger", ok,
                  "black-box accuracy is not below white-box" if ok else
                  "black-box (transfer) accuracy is BELOW white-box: the white-box gradients are misleading "
                  "(gradient masking)", white_box_acc=white_box_acc, black_box_acc=black_box_acc, source=source,
                  tolerance=tol)


def check_autoattack(pgd_acc: float | None, aa_acc: float | None, n: int, gap_warning: float = 0.10) -> dict:
    """AutoAttack must not be above PGD; PGD far above AutoAttack is the classic sign of masked gradients."""
    if pgd_acc is None or aa_acc is None:
        return _check("autoattack_vs_pgd", None, "skipped: needs both a PGD attack and autoattack")
    tol = _tol(n)
    if aa_acc > pgd_acc + tol:
        return _check("autoattack_vs_pgd", False, "AutoAttack accuracy is ABOVE PGD's: an evaluation bug",
                      pgd_acc=pgd_acc, autoattack_acc=aa_acc, tolerance=tol)
    if pgd_acc - aa_acc > gap_warning:
        return _check("autoattack_vs_pgd", False,
                      f"PGD is {pgd_acc - aa_acc:.1%} above AutoAttack: gradient-based PGD is being misled "
                      f"(gradient masking)", pgd_acc=pgd_acc, autoattack_acc=aa_acc, gap_warning=gap_warning)
    return _check("autoattack_vs_pgd", True, "AutoAttack is not above PGD", pgd_acc=pgd_acc, autoattack_acc=aa_acc,
                  tolerance=tol)


def run_sanity_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                      num_classes: int, pgd_acc: float | None = None, autoattack_acc: float | None = None,
                      best_pgd_acc: float | None = None, source_model: nn.Module | None = None,
                      source_name: str | None = None, steps: int = 20,
                      batch_size: int = 256, seed: int = 0, progress: bool = False) -> dict:
    """All gradient-masking checks on (x, y). Returns {"passed", "flags": [names that fired], "checks": [...]}.

    pgd_acc / autoattack_acc: accuracies already measured on these same examples (else PGD is run here);
    best_pgd_acc: the strongest PGD-type attack's (e.g. CW) for the AutoAttack comparison (default pgd_acc).
    source_model: a model to transfer PGD examples from (the black-box check); skipped without one.
    """
    n = len(y)
    base_cfg = parse_attack(f"pgd{steps}", eps, norm)
    if pgd_acc is None:
        pgd_acc = _acc(model, x, y, base_cfg, batch_size, seed)
    todo = ["eps", "large", "steps", "black", "aa"]
    checks = []
    for what in tqdm(todo, desc="sanity checks", disable=not progress or None, leave=False):
        if what == "eps":
            checks.append(check_eps_monotone(model, x, y, eps=eps, norm=norm, steps=steps, batch_size=batch_size,
                                             seed=seed))
        elif what == "large":
            checks.append(check_large_eps(model, x, y, norm=norm, num_classes=num_classes, steps=steps,
                                          batch_size=batch_size, seed=seed))
        elif what == "steps":
            checks.append(check_more_steps(model, x, y, eps=eps, norm=norm, base_acc=pgd_acc, steps=steps,
                                           batch_size=batch_size, seed=seed))
        elif what == "black":
            bb = None if source_model is None else _acc(model, x, y, base_cfg, batch_size, seed, source_model)
            checks.append(check_black_box(pgd_acc, bb, n, source_name))
        else:
            best = pgd_acc if best_pgd_acc is None else min(pgd_acc, best_pgd_acc)
            checks.append(check_autoattack(best, autoattack_acc, n))
    flags = [c["name"] for c in checks if c["ok"] is False]
    return {"passed": not flags, "flags": flags, "n_examples": n, "checks": checks}
