"""The attack suite: attack specs (`pgd20`, `cw`, `autoattack@8/255`...) parsed into configs, and run batch by batch.

`parse_attacks("clean,pgd20,apgd", eps, norm)` gives the configs a results file records; `correct_under(model, x, y,
cfg)` says, per example, whether the model still classifies it correctly under that attack. Budgets and PGD step
rules come from `rocl_zoo.threat`; the attacks themselves from `rocl_zoo.attacks`.
"""
from __future__ import annotations

import re

import torch
from torch import nn
from tqdm.auto import tqdm

from . import attacks as A
from .distributed import merge, my_share
from .errors import ConfigError
from .threat import DEFAULT_EPS, THREAT_MODELS, check_eps, eval_pgd_step, parse_eps

DEFAULT_ATTACKS = "clean,pgd20"

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
                  device=None, log=None, stats: dict | None = None) -> torch.Tensor:
    """Per example (bool, on the CPU): is it still classified correctly under the attack?

    With source_model the examples are made on it (black-box transfer) and scored on `model`. With `log` (an
    `rocl_zoo.eval_progress.EvalProgress`), batches it holds are not attacked again and every new one is added to it. stats["attacked"]: how many
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


def fraction(correct: torch.Tensor) -> float:
    """The fraction of True in a per-example outcome (the sanity checks' unit: their tolerances are fractions)."""
    return correct.float().mean().item()
