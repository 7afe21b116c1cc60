"""The threat model, in one place: norms, budgets (parsing, printing, checking, defaults) and the PGD step rules;
the common-corruptions threat model (no norm, no budget) is named here and lives in rocl_zoo.corruptions (the
types) and rocl_zoo.corruption_eval (the set and accuracy on it).

Budgets are in pixel units of [0, 1] images (models normalise inside), so 8/255 is CIFAR's usual l-inf budget
and 0.1 Fashion-MNIST's (Croce et al. 2019; the zoo evaluates its Fashion-MNIST models at 0.1).
"""
from __future__ import annotations

import math
from fractions import Fraction

from .errors import ConfigError

NORMS = ("linf", "l2")
THREAT_MODELS = {"linf": "Linf", "l2": "L2"}  # RobustBench's names
CORRUPTIONS = "corruptions"  # RobustBench's third threat model: common corruptions (rocl_zoo.corruptions), no eps
DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}
DATASET_DEFAULT_EPS = {("fashion_mnist", "linf"): 0.1, ("digits", "linf"): 0.1}
# RoCL's robust linear evaluation (ALF): PGD-10 with step 0.007 at 8/255; other budgets keep that ratio
ALF_STEP_RATIO = 0.007 / (8 / 255)


def default_eps(dataset: str | None, norm: str = "linf") -> float:
    """The budget a dataset is usually evaluated at: l-inf 0.1 on Fashion-MNIST and digits, else 8/255; l2 0.5."""
    return DATASET_DEFAULT_EPS.get((dataset, norm), DEFAULT_EPS[norm])


def norm_of(record: dict) -> str:
    """The norm a results file or attack config names ("norm", else RobustBench's "threat_model"): linf, l2 or
    corruptions; linf when it names none."""
    norm = str(record.get("norm") or record.get("threat_model") or "linf").lower()
    return {"l_inf": "linf"}.get(norm, norm)


def parse_eps(text) -> float:
    """'8/255', '0.1' or a number -> float; refuses what is not a finite number >= 0."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        try:
            value = float(Fraction(str(text).strip()))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"eps {text!r} is not a number; write e.g. 8/255, 0.03 or 0.5.") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"eps must be a finite number >= 0, got {text!r}.")
    return value


def eps_str(eps: float | None) -> str:
    """8/255 for multiples of 1/255, else the decimal ("?" when unknown)."""
    if eps is None:
        return "?"
    k = float(eps) * 255
    return f"{round(k)}/255" if eps > 0 and abs(k - round(k)) < 1e-6 else f"{float(eps):g}"


def check_eps(eps: float, norm: str, dims: int | None = None) -> None:
    """A budget a robustness evaluation can use: a known norm, eps > 0, an l-inf eps within the pixel range and,
    given the image's number of values `dims`, an l2 eps within the largest distance two images can be apart."""
    if norm not in THREAT_MODELS:
        raise ConfigError(f"norm must be linf or l2, got {norm!r}.")
    if eps <= 0:
        raise ConfigError(f"eps must be > 0 for a robustness evaluation, got {eps}.")
    if norm == "linf" and eps > 1:
        raise ConfigError(f"an l-inf eps of {eps} is larger than the whole [0, 1] pixel range; pixel units are "
                          f"[0, 1], so 8/255 (not 8) is the usual CIFAR budget.")
    if norm == "l2" and dims and eps > math.sqrt(dims):
        raise ConfigError(f"an l2 eps of {eps} is larger than any two images of {dims} values in [0, 1] can be "
                          f"apart ({math.sqrt(dims):.4g}); the usual budgets are 0.5 (CIFAR) and 1.5 (Fashion-MNIST).")


def madry_step(eps: float, steps: int) -> float:
    """Madry et al.'s PGD step, 2.5 eps / steps: the default of training attacks and of `attacks.pgd`."""
    return 2.5 * eps / max(steps, 1)


def eval_pgd_step(eps: float, steps: int, norm: str) -> float:
    """The evaluation's PGD step: eps/10 in l-inf for 20 steps or more (PGD-20 at eps/10), else Madry's; eps/5
    in l2."""
    if norm == "l2":
        return eps / 5
    return eps / 10 if steps >= 20 else madry_step(eps, steps)


def alf_step(eps: float) -> float:
    """RoCL's ALF attack step: 0.007 at 8/255, scaled with eps (0.0223 at 0.1)."""
    return ALF_STEP_RATIO * eps
