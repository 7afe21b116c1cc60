"""Robustness evaluation: protocols, the attack suite, gradient-masking checks, results files and tables.

    python -m rocl_zoo.evaluate cnn4_rocl.fmnist --attacks clean,pgd20,autoattack --out results/x.json
    python -m rocl_zoo.evaluate ENCODER --protocol linear --epochs 20 --dataset fashion_mnist --sanity
    python -m rocl_zoo.evaluate --table results/
    torchrun --nproc_per_node=4 -m rocl_zoo.evaluate cnn4_rocl.fmnist --attacks clean,autoattack --n-examples 0 \
        --out results/x.json     # each process attacks every 4th batch; the merged file equals one process's

From Python: `evaluate(model, x, y, attacks=..., eps=..., norm=...)` returns the results dict;
`run_sanity_checks(...)` the gradient-masking checks; `render_table(results)` the markdown table.

A results file describes one model under one threat model (norm, eps). It carries RobustBench's keys
(clean_acc, autoattack_acc, eps, dataset, threat_model "Linf"/"L2", architecture) and ours: every attack's config,
accuracy and wall time, n_examples, seed, hardware, wall time and the sanity flags. Every accuracy is in percent
(schema `rocl_zoo.results.SCHEMA`; the sanity checks' own values stay fractions, as their tolerances are); where a
file belongs under results/ and how it is read back: `rocl_zoo.results`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import attacks as A
from . import cli
from .cli import add_runtime_args
from .distributed import Dist, merge, my_share, world_and_rank
from .errors import ConfigError, DataError
from .results import SCHEMA, Accuracy, Result, read_all
from .threat import DEFAULT_EPS, THREAT_MODELS, check_eps, default_eps, eps_str, eval_pgd_step, parse_eps

DEFAULT_ATTACKS = "clean,pgd20"

# --------------------------------------------------------------------------------------------- attack specs

_APGD = {"apgd-ce": ["apgd-ce"], "apgd": ["apgd-ce", "apgd-dlr"]}  # AutoAttack's stages run alone
MAX_STEPS, MAX_RESTARTS = 10_000, 100  # beyond these an attack is a typo that would run for days
_PGD_RE = re.compile(r"^pgd(?P<steps>\d+)(?:-(?P<norm>linf|l2))?(?:-(?P<loss>ce|cw))?(?:x(?P<restarts>\d+))?$")


def parse_attack(spec: str, eps: float, norm: str) -> dict:
    """One attack of --attacks -> its config.

    clean | fgsm | pgd<N>[-linf|-l2][-cw][x<R>] | cw | autoattack | apgd-ce | apgd, each with an optional @EPS
    (apgd: AutoAttack's two untargeted gradient attacks, APGD-CE then APGD-DLR, 100 iterations each).
    Without a norm suffix an attack uses the threat model (--norm, --eps); with another norm it is an "unseen"
    attack whose eps defaults to that norm's usual budget (l-inf 8/255, l2 0.5) unless @EPS gives one.
    PGD steps follow rocl_zoo.threat.eval_pgd_step: eps/10 in l-inf for N >= 20, else 2.5 eps / N; eps/5 in l2.
    """
    name, _, at = spec.strip().partition("@")
    name = name.lower()
    if not name:
        raise ConfigError("empty attack name in --attacks.")
    cfg: dict = {"name": spec.strip()}
    if name == "clean":
        return {**cfg, "attack": "clean"}
    if name == "cw":
        name = "pgd30-cw"
    m = _PGD_RE.match(name)
    if name == "fgsm":
        cfg.update(attack="fgsm", norm="linf", loss="ce")
    elif m:
        steps, restarts = int(m["steps"]), int(m["restarts"] or 1)
        if not (1 <= steps <= MAX_STEPS and 1 <= restarts <= MAX_RESTARTS):
            raise ConfigError(f"{spec}: PGD takes 1 to {MAX_STEPS:,} steps and 1 to {MAX_RESTARTS} restarts (pgd20, "
                              f"pgd100x5); got {steps} steps and {restarts} restarts.")
        cfg.update(attack="pgd", norm=m["norm"] or norm, steps=steps, restarts=restarts,
                   loss="margin" if m["loss"] == "cw" else "ce", random_start=True, keep_best=True, early_stop=True)
    elif name in ("autoattack", "aa"):
        cfg.update(attack="autoattack", norm=norm, version="standard")
    elif name in _APGD:
        cfg.update(attack="autoattack", norm=norm, version="custom", attacks=_APGD[name], iterations=100, restarts=1)
    else:
        raise ConfigError(f"unknown attack {spec!r}. Known: clean, fgsm, pgd<N>[-linf|-l2][-cw][x<R>] (e.g. pgd20, "
                          f"pgd20-l2, pgd100x5), cw, autoattack, apgd-ce, apgd; add @EPS to set a budget (pgd20-l2@1.0).")
    if at:
        cfg["eps"] = parse_eps(at)
    elif cfg["norm"] == norm:
        cfg["eps"] = eps
    else:
        cfg["eps"] = DEFAULT_EPS[cfg["norm"]]
    check_eps(cfg["eps"], cfg["norm"])
    if cfg["attack"] == "pgd":
        cfg["alpha"] = eval_pgd_step(cfg["eps"], cfg["steps"], cfg["norm"])
    cfg["threat_model"] = THREAT_MODELS[cfg["norm"]]
    return cfg


def run_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict, seed: int = 0,
               verbose: bool = False) -> torch.Tensor:
    """Adversarial images for one attack config (clean returns x); verbose: AutoAttack reports each stage."""
    torch.manual_seed(seed)
    kind = cfg["attack"]
    if kind == "clean":
        return x
    if kind == "fgsm":
        return A.fgsm(model, x, y, cfg["eps"], loss=cfg.get("loss", "ce"))
    if kind == "pgd":
        return A.pgd(model, x, y, cfg["eps"], alpha=cfg.get("alpha"), steps=cfg["steps"], norm=cfg["norm"],
                     random_start=cfg.get("random_start", True), restarts=cfg.get("restarts", 1),
                     loss=cfg.get("loss", "ce"), keep_best=cfg.get("keep_best", True),
                     early_stop=cfg.get("early_stop", True))  # accuracy is all we keep: stop fooled ones
    if kind == "autoattack":
        return A.autoattack(model, x, y, cfg["eps"], cfg["norm"], version=cfg.get("version", "standard"),
                            attacks=cfg.get("attacks"), batch_size=max(len(x), 1), seed=seed, verbose=verbose,
                            restarts=cfg.get("restarts", 1))
    raise ConfigError(f"unknown attack kind {kind!r}.")


def correct_under(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict, *, batch_size: int = 256,
                  seed: int = 0, source_model: nn.Module | None = None, progress: bool = False,
                  device=None, log: EvalProgress | None = None, stats: dict | None = None) -> torch.Tensor:
    """Per example (bool, on the CPU): is it still classified correctly under the attack?

    With source_model the examples are made on it (black-box transfer) and scored on `model`. With `log`,
    batches it holds are not attacked again and every new one is added to it. stats["attacked"]: how many
    examples this call attacked itself (not taken from `log`).
    """
    device = device or next(model.parameters()).device
    done = {}
    desc = cfg["name"] + (" (transfer)" if source_model is not None else "")
    starts = list(range(0, len(x), batch_size))
    for i in tqdm(my_share(starts), desc=desc, disable=not progress or None, leave=False):  # under torchrun: a share
        done[i] = log.get(f"{cfg['name']}@{i}") if log else None
        if done[i] is not None:
            continue
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        if cfg["attack"] == "clean":
            with A.attack_mode(model), torch.inference_mode():
                pred = model(xb).argmax(1)
        else:
            # AutoAttack's stages take minutes each on a CPU: with a progress bar, say how they go
            x_adv = run_attack(source_model if source_model is not None else model, xb, yb, cfg, seed + i,
                               verbose=progress)
            pred = A.predict_labels(model, x_adv)
        done[i] = (pred == yb).cpu()
        if stats is not None:
            stats["attacked"] = stats.get("attacked", 0) + len(yb)
        if log:
            log.put(f"{cfg['name']}@{i}", done[i])
    done = merge(done)  # every process's batches, on every process
    return torch.cat([done[i] for i in starts]) if starts else torch.zeros(0, dtype=torch.bool)


class EvalProgress:
    """The finished batches of one evaluation, saved after each, so that an interrupted run resumes there.

    Valid only for the same weights, images, attacks, seeds and device kind (`fingerprint`): a file from any other
    evaluation is ignored and overwritten. Batches are seeded by their position, so a resumed run's numbers equal
    an uninterrupted one's. Under torchrun each process keeps its own file (PATH.rank<R>) and reads every sibling,
    so a run resumes whatever the number of processes was before.
    """

    def __init__(self, path, fingerprint: str, *, progress: bool = False):
        world, rank = world_and_rank()
        base = Path(path)
        self.path = base if world == 1 else base.with_name(f"{base.name}.rank{rank}")
        self.fingerprint, self.batches = fingerprint, {}
        siblings = [p for p in [base, *base.parent.glob(f"{base.name}.rank*")] if p.is_file()]
        for p in siblings:
            try:
                state = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(state, dict) and state.get("fingerprint") == fingerprint:
                self.batches.update(state.get("batches") or {})
        if progress and siblings:
            tqdm.write(f"resuming from {base}: {len(self.batches)} batches already done" if self.batches else
                       f"{base} is from another evaluation (weights, data or attacks differ): starting over")
        self.siblings = siblings

    def get(self, key: str) -> torch.Tensor | None:
        bits = self.batches.get(key)
        return None if bits is None else torch.tensor([b == "1" for b in bits], dtype=torch.bool)

    def put(self, key: str, correct: torch.Tensor) -> None:
        self.batches[key] = "".join("1" if c else "0" for c in correct.tolist())
        from .utils import write_json

        write_json(self.path, {"fingerprint": self.fingerprint, "batches": self.batches})

    def remove(self) -> None:
        """Called once the evaluation is whole: this process's file and those it resumed from."""
        for p in {self.path, *self.siblings}:
            p.unlink(missing_ok=True)


def evaluation_fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: dict,
                           source_model: nn.Module | None = None) -> str:
    """sha256 over the weights (and the transfer source's), the images, the labels and the attack settings."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for m in (model, source_model):
        for name, t in (m.state_dict() if m is not None else {}).items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for t in (x, y):
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ sanity checks


def _tol(n: int) -> float:
    """Absolute accuracy tolerance for paired comparisons on n examples: 2 points or 2 examples."""
    return max(0.02, 2.0 / max(n, 1))


def _check(name: str, ok, message: str, **values) -> dict:
    return {"name": name, "ok": ok, "message": message, "values": values}


def _frac(correct: torch.Tensor) -> float:
    """The fraction of True: the sanity checks' unit (their tolerances are fractions)."""
    return correct.float().mean().item()


def _pct(frac: float | None) -> float | None:
    """A fraction as RobustBench's keys state it: percent, two decimals."""
    return None if frac is None else round(100 * frac, 2)


def _acc(model, x, y, cfg, batch_size, seed, source_model=None) -> float:
    return _frac(correct_under(model, x, y, cfg, batch_size=batch_size, seed=seed, source_model=source_model))


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


# ----------------------------------------------------------------------------------------------- evaluate


def parse_attacks(attacks, eps: float, norm: str, dims: int | None = None) -> list[dict]:
    """--attacks (a comma-separated string or a list of specs) -> their configs, each budget checked against
    images of `dims` values (see `rocl_zoo.threat.check_eps`)."""
    check_eps(eps, norm, dims)
    specs = [s for s in (attacks.split(",") if isinstance(attacks, str) else attacks) if s.strip()]
    if not specs:
        raise ConfigError("--attacks is empty; give e.g. clean,pgd20.")
    cfgs = [parse_attack(s, eps, norm) for s in specs]
    if len({c["name"] for c in cfgs}) != len(cfgs):
        raise ConfigError(f"--attacks names an attack twice: {specs}.")
    for c in cfgs:
        if "eps" in c:
            check_eps(c["eps"], c["norm"], dims)
    return cfgs


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attacks="clean,pgd20", eps: float = 8 / 255,
             norm: str = "linf", batch_size: int = 256, seed: int = 0, source_model: nn.Module | None = None,
             source_name: str | None = None, sanity: bool = False, sanity_examples: int = 200,
             num_classes: int | None = None, autoattack_examples: int = 0, progress: bool = True,
             meta: dict | None = None, resume=None) -> dict:
    """Run the attack suite on (x, y) and return the results dict (see the module docstring).

    attacks: a comma-separated string or a list of specs (see `parse_attack`). source_model: also run every
    white-box attack as a black-box transfer from it ("transfer-<name>"). autoattack_examples: run AutoAttack
    on a fixed random subset of this many examples only (0 = all); "autoattack_subset" then holds clean and
    PGD accuracy on the same subset. Accuracies are in percent: full precision in the "attacks" block, rounded
    to two decimals in RobustBench's keys. resume: a file that keeps every finished attack batch (see
    `EvalProgress`); the same call after an interruption picks up there, and the file is removed once the
    evaluation is done.
    """
    from .precision import describe as describe_precision
    from .utils import hardware_name

    cfgs = parse_attacks(attacks, eps, norm, x[0].numel())
    device = next(model.parameters()).device
    with torch.no_grad(), A.attack_mode(model):
        out_dim = model(x[:1].to(device)).shape[1]
    num_classes = num_classes or out_dim
    if source_model is not None:
        with torch.no_grad(), A.attack_mode(source_model):
            src_dim = source_model(x[:1].to(device)).shape[1]
        if src_dim != out_dim:
            raise ConfigError(f"the transfer source {source_name or ''} gives {src_dim} outputs but the model "
                              f"{out_dim}: transfer needs a classifier over the same classes (an encoder has no "
                              f"head: evaluate it with --protocol linear and transfer from the saved classifier).")
    if autoattack_examples < 0:
        raise ConfigError(f"autoattack_examples must be >= 0, got {autoattack_examples}.")
    t_start = time.time()
    results: dict = {}
    per_example: dict[str, torch.Tensor] = {}
    # AutoAttack is the slowest attack by far; its subset is a prefix of the sanity checks' fixed permutation
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    aa_idx = perm[:autoattack_examples] if 0 < autoattack_examples < len(y) else None
    jobs = [(c, None) for c in cfgs]
    if source_model is not None:
        jobs += [({**c, "name": f"transfer-{c['name']}", "transfer_from": source_name}, source_model)
                 for c in cfgs if c["attack"] in ("fgsm", "pgd")]
    log = None
    if resume is not None:
        settings = {"jobs": [c for c, _ in jobs], "eps": eps, "norm": norm, "batch_size": batch_size, "seed": seed,
                    "autoattack_examples": autoattack_examples, "device": device.type}  # GPU numbers differ a bit
        log = EvalProgress(resume, evaluation_fingerprint(model, x, y, settings, source_model), progress=progress)
    resumed = len(log.batches) if log else 0
    for cfg, src in jobs:
        t0 = time.time()
        on_subset = aa_idx is not None and cfg["attack"] == "autoattack"
        xa, ya = (x[aa_idx], y[aa_idx]) if on_subset else (x, y)
        stats: dict = {}
        correct = correct_under(model, xa, ya, cfg, batch_size=batch_size, seed=seed, source_model=src,
                                progress=progress, device=device, log=log, stats=stats)
        per_example[cfg["name"]] = correct
        results[cfg["name"]] = {"config": cfg, "acc": 100 * _frac(correct),
                                "wall_time_s": round(time.time() - t0, 3),
                                **({"n_examples": len(ya)} if on_subset else {})}
        if resumed and world_and_rank()[0] == 1:  # its wall time covers only the examples this run attacked
            results[cfg["name"]]["attacked_here"] = stats.get("attacked", 0)
        if progress:
            tqdm.write(f"{cfg['name']:>20}: {results[cfg['name']]['acc']:.2f} %  ({time.time() - t0:.1f} s)")

    def acc_of(pred):  # a fraction
        names = [n for n, r in results.items() if pred(r["config"])]
        return min((_frac(per_example[n]) for n in names), default=None)

    in_threat = lambda c: c.get("norm") == norm and abs(c.get("eps", -1) - eps) < 1e-12  # noqa: E731
    clean = acc_of(lambda c: c["attack"] == "clean")
    aa = acc_of(lambda c: c["attack"] == "autoattack" and c.get("version") == "standard" and in_threat(c))
    pgd_acc = acc_of(lambda c: c["attack"] == "pgd" and in_threat(c) and "transfer_from" not in c)
    white = [n for n, r in results.items() if (in_threat(r["config"]) or r["config"]["attack"] == "clean")
             and "n_examples" not in r]  # an attack run on a subset has no say on the other examples
    worst = None
    if white:
        worst = _frac(torch.stack([per_example[n] for n in white]).all(0))

    cfg_meta = dict(meta or {})
    arch = cfg_meta.pop("architecture", None) or (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    out = {
        "schema": SCHEMA,
        "model": cfg_meta.pop("model", None),
        "architecture": arch,
        "dataset": cfg_meta.pop("dataset", None),
        "threat_model": THREAT_MODELS[norm],
        "eps": eps,
        "eps_str": eps_str(eps),
        "clean_acc": _pct(clean),
        "autoattack_acc": _pct(aa),
        "pgd_acc": _pct(pgd_acc),
        "robust_acc": _pct(worst),  # per example, the worst case over every attack run in this threat model
        "attacks": results,
        "n_examples": len(y),
        "seed": seed,
        **cfg_meta,
        "hardware": hardware_name(device),
        **describe_precision("fp32", device),  # evaluation attacks always run in fp32
        "torch": torch.__version__,
    }
    if source_model is not None:
        out["transfer_from"] = source_name
    if resumed:
        out["resumed_batches"] = resumed  # attacked by an earlier, interrupted run: its wall time is not in here
    white_pgd = [n for n, r in results.items() if r["config"]["attack"] == "pgd" and in_threat(r["config"])
                 and "transfer_from" not in r["config"]]
    aa_names = [n for n, r in results.items() if r["config"]["attack"] == "autoattack" and in_threat(r["config"])
                and r["config"].get("version") == "standard"]
    if aa_names:
        out["autoattack_n_examples"] = len(per_example[aa_names[0]])
    aa_sub_pgd = None  # the strongest PGD's accuracy on AutoAttack's subset, a fraction (for the sanity check)
    if aa_names and aa_idx is not None:
        def on_aa(names):
            return min((_frac(per_example[n][aa_idx]) for n in names), default=None)

        aa_sub_pgd = on_aa(white_pgd)
        aa_sub_clean = on_aa([n for n, r in results.items() if r["config"]["attack"] == "clean"])
        out["autoattack_subset"] = {"n_examples": len(aa_idx), "clean_acc": _pct(aa_sub_clean),
                                    "pgd_acc": _pct(aa_sub_pgd)}
    if sanity and world_and_rank()[1] == 0:  # under torchrun the first process runs them, and writes the file
        k = min(sanity_examples, len(y))
        sub = perm[:k]
        xs, ys = x[sub], y[sub]
        pgd_names = [n for n in white_pgd if results[n]["config"].get("steps") == 20
                     and results[n]["config"].get("restarts") == 1 and results[n]["config"].get("loss") == "ce"]
        sub_pgd = _frac(per_example[pgd_names[0]][sub]) if pgd_names else None
        # AutoAttack is compared with the strongest PGD-type attack run (CE or CW loss, any steps)
        sub_best_pgd = min((_frac(per_example[n][sub]) for n in white_pgd), default=None)
        sub_aa = None
        if aa_names and aa_idx is None:
            sub_aa = _frac(per_example[aa_names[0]][sub])
        elif aa_names and k <= len(aa_idx):  # both subsets are prefixes of `perm`
            sub_aa = _frac(per_example[aa_names[0]][:k])
        t0 = time.time()
        out["sanity"] = run_sanity_checks(model, xs.to(device), ys.to(device), eps=eps, norm=norm,
                                          num_classes=num_classes, pgd_acc=sub_pgd, autoattack_acc=sub_aa,
                                          best_pgd_acc=sub_best_pgd,
                                          source_model=source_model, source_name=source_name,
                                          batch_size=batch_size, seed=seed, progress=progress)
        if aa_names and aa_idx is not None and k > len(aa_idx):  # AutoAttack vs PGD on AutoAttack's subset
            checks = [c for c in out["sanity"]["checks"] if c["name"] != "autoattack_vs_pgd"]
            checks.append(check_autoattack(aa_sub_pgd, _frac(per_example[aa_names[0]]), len(aa_idx)))
            flags = [c["name"] for c in checks if c["ok"] is False]
            out["sanity"].update(checks=checks, flags=flags, passed=not flags)
        out["sanity"]["wall_time_s"] = round(time.time() - t0, 3)
        if progress:
            for c in out["sanity"]["checks"]:
                mark = {True: "ok  ", False: "FLAG", None: "skip"}[c["ok"]]
                tqdm.write(f"  sanity {mark} {c['name']}: {c['message']}")
    out["wall_time_s"] = round(time.time() - t_start, 3)
    if log:
        log.remove()
    return out


# -------------------------------------------------------------------------------------------------- table

_ORDER = {"clean": 0, "fgsm": 1, "pgd": 2, "autoattack": 4, "corruptions": 5}


def _column_key(cfg: dict):
    transfer = "transfer_from" in cfg
    return (transfer, _ORDER.get(cfg["attack"], 3), cfg.get("norm", "linf") != "linf", cfg.get("steps", 0),
            cfg["name"])


def _cell(a: Accuracy, n: int) -> str:
    """68.00 [64.3, 71.5]: the accuracy and its 95 % Wilson interval; (n=...) when measured on fewer images."""
    lo, hi = a.interval()
    return f"{a.pct:.2f} <sub>[{lo:.1f}, {hi:.1f}]</sub>" + (f" (n={a.n})" if a.n != n else "")


def render_table(results: list[Result]) -> str:
    """A markdown table of results files (`rocl_zoo.results.read_all`): one row per file, one column per attack."""
    if not results:
        return "_No results files._\n"

    def column(name: str, cfg: dict) -> str:  # a transfer attack from another source is another column
        return f"{name} from {cfg['transfer_from']}" if cfg.get("transfer_from") else name

    by_column = [{column(name, a["config"]): a for name, a in r.attacks.items()
                  if a["config"].get("attack") != "corruption"} for r in results]  # one corruption: its mean only
    columns = {n: a["config"] for row in by_column for n, a in row.items()}
    names = sorted(columns, key=lambda n: _column_key(columns[n]))
    label = {n: ("Clean" if columns[n]["attack"] == "clean" else "AutoAttack" if n in ("autoattack", "aa") else
                 n.upper() if n in ("fgsm", "cw") else "Corruptions (mean)" if n == "corruptions" else n)
             for n in names}
    head = ["Model", "Dataset", "Protocol", "Threat model"] + [label[n] for n in names] + ["n", "Sanity"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(names) + 1) + [":---:"]) + "|"]
    # models on their own data first, transfer (fine-tuning) results after
    order = sorted(range(len(results)), key=lambda i: (
        results[i].protocol.startswith("finetune"), str(results[i].dataset), str(results[i].model),
        results[i].protocol, results[i].threat_model or "", results[i].eps or 0, -results[i].n))
    for i in order:
        r = results[i]
        cells = [f"`{r.model}`", str(r.dataset or "–"), r.protocol, r.threat]
        for n in names:
            a = by_column[i].get(n)
            cells.append("–" if a is None else _cell(Accuracy(a["acc"], a.get("n_examples", r.n)), r.n))
        cells.append(str(r.data.get("n_examples", "–")))
        s = r.data.get("sanity")
        cells.append("–" if not s else "ok" if s.get("passed") else "⚠ " + ", ".join(s.get("flags", [])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nAccuracy in % (higher is more robust) on `n` test examples, in brackets its 95 % " \
                              "Wilson interval. Columns name the " \
                              "attack (`pgd20-l2` = PGD-20 in l2; `transfer-* from M` = black-box, made on M; " \
                              "`Corruptions (mean)` = the mean accuracy over 15 common corruptions x 5 severities). " \
                              "Protocol " \
                              "`none`: a classifier as it is; `linear` / `robust-linear`: a linear head on the " \
                              "frozen encoder (SLF / ALF), trained by that run or before it; `finetune-*`: " \
                              "`rocl_zoo.finetune` on that dataset.\n"


# ---------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rocl_zoo.evaluate",
        description="Evaluate the adversarial robustness of a rocl-zoo model and write a results file "
                    "(RobustBench's keys + every attack's config). With --protocol linear / robust-linear the "
                    "model is a frozen encoder and a linear head is trained first (SLF / ALF).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m rocl_zoo.evaluate cnn4_rocl.fmnist_at --attacks clean,fgsm,pgd20,cw --eps 0.1 \\\n"
               "      --n-examples 1000 --sanity --out results/cnn4_rocl.fmnist_at/none/Linf-0.1/attacks-n1000.json\n"
               "      # results/<model>/<protocol>/<threat model>/<suite>-n<examples>.json: rocl_zoo.results\n"
               "  python -m rocl_zoo.evaluate ./my_encoder --protocol robust-linear --epochs 25 --dataset cifar10\n"
               "  python -m rocl_zoo.evaluate MODEL --transfer-from cnn4_rocl.fmnist_simclr   # black-box\n"
               "  python -m rocl_zoo.evaluate --table results/ > results/README.md\n"
               "  torchrun --nproc_per_node=4 -m rocl_zoo.evaluate MODEL --attacks clean,autoattack --out r.json\n"
               "      # several processes (or machines, torchrun's rendezvous): each attacks its share of the\n"
               "      # batches; the merged results equal a one-process run; an interrupted run resumes")
    p.add_argument("source", nargs="?", help="zoo name (arch.tag), hf-hub:ORG/REPO[@REV] or a Hub-layout folder")
    g = p.add_argument_group("data and threat model")
    g.add_argument("--dataset", help="dataset name (fashion_mnist, cifar10, cifar100, stl10, svhn, digits, "
                                     "imagefolder:PATH); default: the one the model was trained on")
    g.add_argument("--split", default="test", choices=["train", "test"], help="split to attack (default test)")
    g.add_argument("--download", action="store_true", help="allow torchvision to download the dataset")
    g.add_argument("--norm", default="linf", choices=["linf", "l2"], help="threat model's norm (default linf)")
    g.add_argument("--threat-model", type=str.lower, choices=["linf", "l2", "corruptions"],
                   help="RobustBench's: Linf or L2 (the same as --norm), or corruptions: accuracy on 15 common "
                        "corruptions x 5 severities and their mean (rocl_zoo.corruptions)")
    g.add_argument("--corruptions", default="all", metavar="TYPES",
                   help="with --threat-model corruptions: comma-separated types (default all)")
    g.add_argument("--eps", help="threat model's budget in [0, 1] pixel units, e.g. 8/255 or 0.5 (default: "
                                 "linf 8/255, 0.1 on fashion_mnist and digits; l2 0.5)")
    g.add_argument("--attacks", default=DEFAULT_ATTACKS,
                   help="comma-separated: clean, fgsm, pgd<N>[-linf|-l2][-cw][x<R>] (pgd20, pgd20-l2, pgd100x5), "
                        "cw (PGD-30, CW margin loss), autoattack (standard; needs rocl-zoo[eval]), apgd-ce, apgd (APGD-CE + "
                        "APGD-DLR); "
                        f"@EPS sets one attack's budget (pgd20-l2@1.0). Default {DEFAULT_ATTACKS}")
    g.add_argument("--n-examples", type=int, default=1000,
                   help="attack a fixed random subset of this many test examples (default 1000; 0 = all)")
    g.add_argument("--autoattack-examples", type=int, default=0, metavar="K",
                   help="run AutoAttack on a fixed random K of the --n-examples only (its Square stage costs "
                        "thousands of queries per robust image); the results file adds clean and PGD accuracy on "
                        "the same K (default 0: all)")
    g.add_argument("--batch-size", type=int, default=256, help="attack batch size (default 256)")
    g.add_argument("--transfer-from", metavar="SOURCE",
                   help="also run each FGSM/PGD attack as black-box transfer from this model")
    g.add_argument("--sanity", action="store_true",
                   help="gradient-masking checks (eps monotone, large eps reaches chance, more steps/restarts "
                        "do not help, black-box not stronger, AutoAttack not above PGD), flagged in the results")
    g.add_argument("--sanity-examples", type=int, default=200, help="examples the sanity checks use (default 200)")
    g = p.add_argument_group("protocol (frozen encoder + linear head)")
    g.add_argument("--protocol", default="none", choices=["none", "linear", "robust-linear"],
                   help="none: the model is already a classifier; linear: train a linear head on frozen features "
                        "(SLF); robust-linear: on PGD-10 examples (ALF). Default none")
    g.add_argument("--protocol-label", metavar="NAME",
                   help="with --protocol none: how the classifier's head was made, for tables and claims (e.g. "
                        "robust-linear for a classifier saved by --protocol robust-linear). Default none")
    g.add_argument("--epochs", type=int, default=150, help="linear head epochs (default 150; LR /10 at 20/33/67 %%)")
    g.add_argument("--lr", type=float, default=0.1, help="linear head SGD learning rate (default 0.1)")
    g.add_argument("--linear-batch-size", type=int, default=256, help="linear head batch size (default 256)")
    g.add_argument("--train-examples", type=int, default=0,
                   help="train the head on a fixed random subset of this many examples (default 0 = all)")
    g.add_argument("--train-eps", help="robust-linear PGD budget (default: --eps)")
    g.add_argument("--train-alpha", help="robust-linear PGD step (default: RoCL's 0.007 at 8/255, scaled with the "
                                         "budget: 0.0223 at 0.1)")
    g.add_argument("--train-steps", type=int, default=10, help="robust-linear PGD steps (default 10)")
    g.add_argument("--save-classifier", metavar="DIR",
                   help="where to save encoder + head in the Hub layout (default: next to --out, <out>.classifier/)")
    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="FILE.json",
                   help="results file (default: print JSON to stdout). Finished attack batches are kept in "
                        "FILE.json.partial until the attacks are done: the same command run again after an "
                        "interruption resumes there")
    g.add_argument("--name", help="the model's name in the results file and tables (default: SOURCE as given; "
                                  "e.g. the zoo name a run folder will ship as)")
    g.add_argument("--table", metavar="DIR", help="render every results file under DIR as a markdown table, then exit")
    g.add_argument("--seed", type=int, default=0, help="seed for the subset and the random starts (default 0)")
    add_runtime_args(g)
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _load_model(source: str, device):
    from .hub import load

    return load(source, device=device)


def _load_dataset(name: str, split: str, root=None, download: bool = False):
    from .data import load_dataset

    return load_dataset(name, split, root=root, download=download)


def _model_dataset(model) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return (cfg.get("rocl_zoo") or {}).get("dataset")


def run(args: argparse.Namespace) -> dict:
    from .linear import as_tensors, train_linear_head
    from .threat import alf_step
    from .utils import check_output_path, remove_stale_temporaries, resolve_device, write_json

    if args.threat_model == "corruptions":  # no attacks, no budget: all of it lives in rocl_zoo.corruptions
        from .corruptions import run_cli

        return run_cli(args)
    if args.threat_model and args.threat_model != args.norm:
        if args.norm != "linf":
            raise ConfigError(f"--threat-model {args.threat_model} and --norm {args.norm} disagree; give one.")
        args.norm = args.threat_model
    if not args.source:
        raise ConfigError("give a model SOURCE (zoo name, hf-hub:ORG/REPO or folder), or --table DIR.")
    for flag in ("n_examples", "train_examples", "autoattack_examples"):
        if getattr(args, flag) < 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 0.")
    if min(args.batch_size, args.sanity_examples, args.epochs, args.linear_batch_size, args.train_steps) < 1:
        raise ConfigError("--batch-size, --linear-batch-size, --sanity-examples, --epochs and --train-steps must be "
                          ">= 1.")
    if args.protocol_label and args.protocol != "none":
        raise ConfigError(f"--protocol-label names the protocol of a classifier evaluated as it is; with --protocol "
                          f"{args.protocol} the protocol is {args.protocol}: drop one of them.")
    if args.out:
        check_output_path(args.out, folder=False)
    procs = Dist(args.device)  # under torchrun: the process group; each process attacks its share of the batches
    device = procs.device if procs.world > 1 else resolve_device(args.device)
    progress = not args.quiet and procs.main
    model = _load_model(args.source, device)
    dataset = args.dataset or _model_dataset(model)
    if not dataset:
        raise ConfigError(f"{args.source} does not record its dataset; pass --dataset NAME.")
    if args.out and procs.main:
        remove_stale_temporaries(args.out)
    eps = parse_eps(args.eps) if args.eps is not None else default_eps(dataset, args.norm)
    parse_attacks(args.attacks, eps, args.norm)  # fail on a bad attack list before any slow work
    source_model = _load_model(args.transfer_from, device) if args.transfer_from else None

    test = _load_dataset(dataset, args.split, args.data_root, args.download)
    x, y = as_tensors(test, args.n_examples or None, args.seed)
    parse_attacks(args.attacks, eps, args.norm, x[0].numel())  # now with the images' size: bounds l2 budgets
    in_chans = getattr(model, "in_chans", None)
    if in_chans is not None and x.shape[1] != in_chans:
        raise DataError(f"{dataset} has {x.shape[1]}-channel images but {args.source} takes {in_chans} channels; "
                        f"pick the dataset the model was trained for.")
    size = tuple((getattr(model, "pretrained_cfg", None) or {}).get("input_size") or ())[-2:]
    if size and tuple(x.shape[-2:]) != size:
        # global pooling accepts any size, and would give a meaningless number: refuse instead
        raise DataError(f"{dataset} has {x.shape[-2]}x{x.shape[-1]} images but {args.source} takes "
                        f"{size[0]}x{size[1]}; evaluate it on data of its input size (a classifier made by "
                        f"rocl_zoo.finetune on resized data has that evaluation in its results.json).")
    classes = list(getattr(test, "classes", None) or [])
    protocol = args.protocol_label or args.protocol
    protocol_cfg: dict = {"protocol": protocol}
    if args.protocol_label:
        protocol_cfg["head_trained_before"] = True  # the head came with the classifier: nothing trained here
    t0 = time.time()
    if args.protocol != "none":
        robust = args.protocol == "robust-linear"
        train_eps = parse_eps(args.train_eps) if args.train_eps is not None else eps
        train_alpha = parse_eps(args.train_alpha) if args.train_alpha is not None else alf_step(train_eps)
        train = _load_dataset(dataset, "train", args.data_root, args.download)
        model = train_linear_head(model, train, num_classes=len(classes) or None, robust=robust,
                                  epochs=args.epochs, lr=args.lr, eps=train_eps, alpha=train_alpha,
                                  steps=args.train_steps, norm=args.norm,
                                  n_examples=args.train_examples or None, seed=args.seed, progress=progress,
                                  label_names=classes or None, batch_size=args.linear_batch_size)
        protocol_cfg.update(epochs=args.epochs, lr=args.lr, momentum=0.9, weight_decay=5e-4,
                            batch_size=args.linear_batch_size,
                            train_examples=args.train_examples or len(train), frozen_encoder=True,
                            features_precomputed=not robust, train_time_s=round(time.time() - t0, 3))
        if robust:
            protocol_cfg.update(train_attack={"attack": "pgd", "norm": args.norm, "eps": train_eps,
                                              "alpha": train_alpha, "steps": args.train_steps,
                                              "random_start": True})
    elif getattr(model, "num_classes", 1) == 0:
        raise ConfigError(f"{args.source} is an encoder without a classifier head; use --protocol linear or "
                          f"robust-linear to train one.")
    if classes and getattr(model, "num_classes", len(classes)) != len(classes):
        raise DataError(f"{args.source} has {model.num_classes} classes but {dataset} has {len(classes)}; "
                        f"evaluate it on its own dataset or use --protocol linear.")
    meta = {"model": args.name or args.source, "source": args.source, "dataset": dataset, "split": args.split,
            "protocol": protocol, "protocol_config": protocol_cfg}
    from . import __version__

    meta["rocl_zoo_version"] = __version__
    result = evaluate(model, x, y, attacks=args.attacks, eps=eps, norm=args.norm, batch_size=args.batch_size,
                      seed=args.seed, source_model=source_model, source_name=args.transfer_from,
                      sanity=args.sanity, sanity_examples=args.sanity_examples,
                      num_classes=len(classes) or None, autoattack_examples=args.autoattack_examples,
                      progress=progress, meta=meta, resume=args.out and f"{args.out}.partial")
    result["wall_time_s"] = round(time.time() - t0, 3)
    if args.protocol != "none":
        folder = args.save_classifier or (str(Path(args.out).with_suffix("")) + ".classifier" if args.out else None)
        if folder and procs.main:
            from .hub import save_pretrained

            metrics = {k: result[k] for k in ("clean_acc", "pgd_acc", "autoattack_acc", "robust_acc", "eps_str",
                                               "threat_model", "n_examples")}
            save_pretrained(model, folder, dataset=dataset, metrics=metrics,
                            recipe=f"{args.protocol} evaluation of {args.source}",
                            extra={"encoder": args.source, "protocol": protocol_cfg})
            result["classifier"] = str(folder)
    if procs.world > 1:
        result["processes"] = procs.world
    if procs.main and args.out:
        write_json(args.out, result)
        if progress:
            print(f"wrote {args.out}", file=sys.stderr)
    elif procs.main:
        print(json.dumps(result, indent=2))
    procs.close()
    return result


def main(argv=None) -> int:
    return cli.run(_main, build_parser().parse_args(argv))


def _main(args) -> int:
    if args.table:
        sys.stdout.write(render_table(read_all(args.table)))
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
