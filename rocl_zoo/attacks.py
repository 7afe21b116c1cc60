"""Adversarial attacks. Every attack takes [0, 1] images, stays inside [0, 1] and its budget, and leaves the
model in the train/eval mode it found it in.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .losses import contrastive_rows, nt_xent
from .threat import NORMS, madry_step

# ---------------------------------------------------------------------------------------------------------------
# Supervised attacks: FGSM, PGD (l-inf, l2), transfer, AutoAttack.
# ---------------------------------------------------------------------------------------------------------------

# Every attack runs the model in eval mode by default (BN running statistics, no dropout: the model being
# evaluated is the model being attacked) and puts back whatever mode it found. Gradients are taken with
# respect to the input only (torch.autograd.grad), and the parameters stop requiring grad while the attack
# runs (their flags are restored after): autograd then records no weight edges and runs no weight-gradient
# kernels, about 1.6x cheaper per step on a 2-core CPU (0.7 s against 1.1 s for ResNet-18 at batch 64), and
# `.grad` is never touched.

LOSSES = ("ce", "margin")


class attack_mode:
    """Context manager: run `model` in eval mode (or as found, eval=False) with its parameters not requiring
    grad (freeze=True); restore every module's mode and every parameter's flag on exit."""

    def __init__(self, model: nn.Module, eval: bool = True, freeze: bool = True):
        self.model, self.eval, self.freeze = model, eval, freeze

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()] if self.freeze else []
        if self.eval:
            self.model.eval()
        for p, _ in self.flags:
            p.requires_grad_(False)
        return self.model

    def __exit__(self, *exc):
        for m, training in self.modes:
            m.training = training
        for p, flag in self.flags:
            p.requires_grad_(flag)
        return False


def attack_view(net: nn.Module) -> nn.Module:
    """The network an attack differentiates: an eval-mode copy of `net` with every BatchNorm folded into the
    convolution before it (torch.fx's conv-BN fusion).

    An attack runs the model in eval mode, where BN is a fixed affine map; folded, it costs nothing. Same function
    (in fp32 the logits agree to ~1e-7), measured 1.25x faster per attack step on cnn4_rocl and ResNet-18 in bf16;
    the fusion costs one trace per training step (25 ms for cnn4_rocl). Evaluation attacks it too, in fp32 and
    channels_last (`checked_attack_view`; its speed-up: `benchmarks/bench_fold.py`). Models fx cannot trace, and BN
    layers that synchronise across processes, are attacked as they are.
    """
    from torch.fx.experimental.optimization import fuse

    with attack_mode(net):
        try:
            return fuse(net)
        except Exception:  # noqa: BLE001 - fx raises many kinds of error on untraceable models
            return net


def checked_attack_view(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """`attack_view(model)` for evaluation, which takes any model: used only when it has BatchNorm to fold and
    gives the model's logits and input gradients on the images x; otherwise the model itself.

    fx traces through what it can run, so a model whose forward calls a custom autograd Function (a
    straight-through estimator, a BPDA wrapper) would be traced into the Function's forward ops and lose its
    backward: the attacks would see other gradients than the model's. The check on x catches that.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    net = attack_view(model)
    if net is model:
        return model

    def logits_and_grad(m):  # the input gradient of a fixed random mix of every logit
        with attack_mode(m):
            xi = x.detach().clone().requires_grad_(True)
            out = m(xi).float()
            mix = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out)
            grad, = torch.autograd.grad((out * mix).sum(), xi)
        return out.detach(), grad

    (out, grad), (out2, grad2) = logits_and_grad(model), logits_and_grad(net)
    same = torch.allclose(out2, out, rtol=1e-3, atol=1e-4) and \
        (grad2 - grad).norm() <= 1e-3 * grad.norm() + 1e-12
    if not same:
        return model
    # channels_last, on the copy only: the same function in another memory layout (cnn4_rocl's fp32 input
    # gradients are as far from fp64's either way), faster for the small CNN on a CPU (benchmarks/bench_fold.py)
    try:
        return net.to(memory_format=torch.channels_last)
    except RuntimeError:  # 5-d weights (3-d convolutions) have no channels_last layout
        return net


def _check_norm_eps(eps: float, norm: str) -> None:
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {NORMS}, got {norm!r}.")
    if not (isinstance(eps, (int, float)) and eps >= 0 and eps == eps and eps != float("inf")):
        raise ConfigError(f"eps must be a finite number >= 0 (in [0, 1] pixel units), got {eps!r}.")


def _check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() < 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ConfigError(f"expected images (B, ...) and labels (B,), got {tuple(x.shape)} and {tuple(y.shape)}.")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ConfigError("attacks take images in [0, 1] (models normalise inside); rescale the input.")


def per_example_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce", targeted: bool = False) -> torch.Tensor:
    """The quantity an attack maximises, one value per example.

    ce: cross-entropy of the true class (targeted: minus the cross-entropy of the target class).
    margin: Carlini-Wagner margin, max_{j != y} z_j - z_y (targeted: z_t - max_{j != t} z_j); positive means
    misclassified (targeted: classified as the target).
    """
    if loss == "ce":
        value = F.cross_entropy(logits, y, reduction="none")
        return -value if targeted else value
    if loss in ("margin", "cw"):
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        return true - other if targeted else other - true
    raise ConfigError(f"loss must be one of {LOSSES}, got {loss!r}.")


def _input_grad(model, x_adv, y, loss, targeted):
    """Logits at x_adv and the gradient of the summed per-example loss w.r.t. x_adv only."""
    with torch.enable_grad():
        x_adv = x_adv.detach().requires_grad_(True)
        logits = model(x_adv)
        value = per_example_loss(logits, y, loss, targeted)
        grad = None
        if value.requires_grad:  # a model whose output ignores its input gets a zero gradient, not an error
            (grad,) = torch.autograd.grad(value.sum(), x_adv, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(x_adv)
    return logits.detach(), value.detach(), grad


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-example l2 norm, shaped to broadcast against t."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """Project x_adv onto the eps-ball around x in `norm`, then into [0, 1].

    Clamping to [0, 1] after the projection never leaves the ball: it only shrinks |delta| coordinate-wise.
    """
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def random_init(x: torch.Tensor, eps: float, norm: str = "linf",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform random point of the eps-ball around x (l-inf: uniform per pixel; l2: uniform in the ball).

    `generator` (a CPU generator) draws it, for exactly resumable training; without it the global RNG does."""
    if norm == "linf":
        if generator is None:
            delta = torch.empty_like(x).uniform_(-eps, eps)
        else:
            delta = (2 * torch.rand(x.shape, generator=generator) - 1).to(x) * eps
    else:
        shape = (x.shape[0], *([1] * (x.dim() - 1)))
        if generator is None:
            direction = torch.randn_like(x)
            u = torch.rand(shape, device=x.device, dtype=x.dtype)
        else:
            direction = torch.randn(x.shape, generator=generator).to(x)
            u = torch.rand(shape, generator=generator).to(x)
        direction = direction / _flat_norm(direction).clamp_min(1e-12)
        delta = direction * (eps * u ** (1.0 / x[0].numel()))
    return (x + delta).clamp(0.0, 1.0)


def _success(logits, y, targeted):
    pred = logits.argmax(1)
    return pred == y if targeted else pred != y


def _better(succ_new, loss_new, succ_old, loss_old):
    """Per example: is the new point a worse case for the model than the kept one? Success first, then loss."""
    return (succ_new & ~succ_old) | ((succ_new == succ_old) & (loss_new > loss_old))


class _WorstCase:
    """Per example, the worst iterate an attack has seen so far (misclassified first, then highest loss)."""

    def __init__(self, x: torch.Tensor, targeted: bool):
        self.x, self.targeted = x.clone(), targeted
        self.success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        self._view = (-1,) + (1,) * (x.dim() - 1)

    def update(self, idx, x_adv, logits, value, y):
        """Keep the worse of (kept, x_adv) for the examples idx (None = all); return x_adv's success.
        torch.where, not boolean indexing: no host sync."""
        succ = _success(logits, y, self.targeted)
        rows = slice(None) if idx is None else idx
        take = _better(succ, value, self.success[rows], self.loss[rows])
        self.x[rows] = torch.where(take.view(self._view), x_adv, self.x[rows])
        self.success[rows] = torch.where(take, succ, self.success[rows])
        self.loss[rows] = torch.where(take, value, self.loss[rows])
        return succ


def ascent_step(x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, alpha: float, eps: float,
                norm: str = "linf") -> torch.Tensor:
    """One steepest-ascent step of size alpha in `norm` (l-inf: sign(grad); l2: grad / ||grad||), projected onto
    the eps-ball around x and into [0, 1]."""
    step = grad.sign() if norm == "linf" else grad / _flat_norm(grad).clamp_min(1e-12)
    return project(x_adv.detach() + alpha * step, x, eps, norm)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, loss: str = "ce", targeted: bool = False,
         eval_mode: bool = True) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): one l-inf step of size eps. Returns adversarial images."""
    _check_norm_eps(eps, "linf")
    _check_inputs(x, y)
    x = x.detach()
    with attack_mode(model, eval_mode):
        _, _, grad = _input_grad(model, x, y, loss, targeted)
    return project(x + eps * grad.sign(), x, eps, "linf").detach()


def _still_standing(worst: "_WorstCase") -> torch.Tensor | None:
    """The examples no iterate has fooled yet (None: all of them, so the run needs no indexing)."""
    idx = (~worst.success).nonzero().squeeze(1)
    return None if idx.numel() == worst.success.numel() else idx


def _pgd_run(model, x, y, worst, idx, *, eps, alpha, steps, norm, random_start, loss, targeted, keep_best,
             early_stop, generator):
    """One PGD run from its own start on the examples idx (None: all), its iterates scored into `worst`."""
    x0, y0 = (x, y) if idx is None else (x[idx], y[idx])
    x_adv = random_init(x0, eps, norm, generator) if (random_start and eps > 0) else x0.clone()
    for _ in range(steps):
        logits, value, grad = _input_grad(model, x_adv, y0, loss, targeted)
        if keep_best:  # score the iterate this step's forward just saw
            succ = worst.update(idx, x_adv, logits, value, y0)
            if early_stop and bool(succ.any()):
                live = ~succ
                idx = (torch.arange(x.shape[0], device=x.device) if idx is None else idx)[live]
                x0, y0, x_adv, grad = x0[live], y0[live], x_adv[live], grad[live]
                if idx.numel() == 0:
                    return
        x_adv = ascent_step(x_adv, x0, grad, alpha, eps, norm)
    with torch.no_grad():
        logits = model(x_adv)
        worst.update(idx, x_adv, logits, per_example_loss(logits, y0, loss, targeted), y0)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float | None = None, steps: int = 20,
        norm: str = "linf", random_start: bool = True, restarts: int = 1, loss: str = "ce", targeted: bool = False,
        keep_best: bool = True, early_stop: bool = False, eval_mode: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018) in l-inf or l2. Returns adversarial images.

    alpha: step size; default 2.5 * eps / steps (Madry's rule). l-inf steps are alpha * sign(grad), l2 steps
    alpha * grad / ||grad||; after each step the point is projected onto the eps-ball and into [0, 1].
    restarts: independent runs (each from its own random start); per example, the worst case is kept.
    keep_best: per example, return the worst iterate seen (misclassified first, then highest loss) rather than
    the last one. It costs one extra forward pass per run (the step's own forward scores the iterate) and makes
    the attack monotone: more steps or restarts never give a higher robust accuracy.
    early_stop: stop attacking an example once it is misclassified (targeted: classified as the target), and
    run restarts only on the examples still standing. Robust accuracy is unchanged, the work shrinks with it;
    the images returned for fooled examples are the first fooling iterate. For evaluation, not for training.
    loss: "ce" (cross-entropy) or "margin" (Carlini-Wagner). targeted: y holds target classes and the attack
    pulls towards them. generator: draws the random starts (default: the global RNG).
    """
    _check_norm_eps(eps, norm)
    _check_inputs(x, y)
    if steps < 0 or restarts < 1:
        raise ConfigError(f"steps must be >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}.")
    if loss not in LOSSES and loss != "cw":
        raise ConfigError(f"loss must be one of {LOSSES}, got {loss!r}.")
    keep_best = keep_best or early_stop
    alpha = madry_step(eps, steps) if alpha is None else float(alpha)
    x = x.detach()
    worst = _WorstCase(x, targeted)
    with attack_mode(model, eval_mode):
        for _ in range(restarts):
            idx = _still_standing(worst) if early_stop else None
            if idx is not None and idx.numel() == 0:
                break
            _pgd_run(model, x, y, worst, idx, eps=eps, alpha=alpha, steps=steps, norm=norm,
                     random_start=random_start, loss=loss, targeted=targeted, keep_best=keep_best,
                     early_stop=early_stop, generator=generator)
    return worst.x.detach()


@torch.no_grad()
def predict_labels(model: nn.Module, x: torch.Tensor, batch_size: int = 256, eval_mode: bool = True) -> torch.Tensor:
    """argmax predictions in batches, without gradient.

    no_grad rather than inference_mode: the labels often feed an attack next, and inference tensors cannot.
    """
    with attack_mode(model, eval_mode):
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Fraction of examples classified correctly (in [0, 1])."""
    return (predict_labels(model, x, batch_size) == y.to(x.device)).float().mean().item() if len(y) else float("nan")


def trades_attack(model: nn.Module, x: torch.Tensor, eps: float, alpha: float, steps: int = 10, norm: str = "linf",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """TRADES's inner maximisation (Zhang et al. 2019): PGD on KL(p(x) || p(x_adv)) from x + 0.001 N(0, 1).

    No labels: the clean prediction is the reference. Eval mode, input-only gradients, the model's modes restored.
    `generator` draws the start (for exactly resumable training); without it the global RNG does.
    """
    _check_norm_eps(eps, norm)
    x = x.detach()
    with attack_mode(model):
        with torch.no_grad():
            p_clean = F.softmax(model(x).float(), dim=1)
        noise = torch.randn(x.shape, generator=generator).to(x) if generator is not None else torch.randn_like(x)
        x_adv = (x + 0.001 * noise).clamp(0, 1)
        for _ in range(steps):
            with torch.enable_grad():
                x_adv.requires_grad_(True)
                kl = F.kl_div(F.log_softmax(model(x_adv).float(), dim=1), p_clean, reduction="sum")
                (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = ascent_step(x_adv, x, grad, alpha, eps, norm)
    return x_adv.detach()


def _import_autoattack():
    """pyautoattack (PyPI) packages the reference AutoAttack; fall back to the GitHub package `autoattack`."""
    try:
        import pyautoattack as module  # noqa: F401

        return module, "pyautoattack"
    except ImportError:
        pass
    try:
        import autoattack as module  # noqa: F401

        return module, "autoattack"
    except ImportError:
        raise ImportError("AutoAttack needs the `pyautoattack` package: pip install 'rocl-zoo[eval]' "
                          "(or pip install pyautoattack).") from None


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
               version: str = "standard", batch_size: int = 250, seed: int = 0, attacks: Sequence[str] | None = None,
               verbose: bool = False, eval_mode: bool = True, restarts: int = 1) -> torch.Tensor:
    """AutoAttack (Croce & Hein 2020) through the `pyautoattack` package (the `eval` extra). Returns x_adv.

    version: "standard" (APGD-CE, APGD-T, FAB-T, Square: the number RobustBench reports), "plus", "rand", or
    "custom" with `attacks` (e.g. ["apgd-ce", "apgd-dlr"]), each APGD with `restarts` restarts of 100 iterations
    (the package's own default for custom runs is 5; standard AutoAttack's APGD-CE has 1). Models with fewer than
    10 classes get as many target classes as they have (the reference code assumes 10 or more).
    """
    _check_norm_eps(eps, norm)
    _check_inputs(x, y)
    if version not in ("standard", "plus", "rand", "custom"):
        raise ConfigError(f"AutoAttack version must be standard, plus, rand or custom, got {version!r}.")
    if (version == "custom") != (attacks is not None):
        raise ConfigError("give `attacks` with version='custom', and only then.")
    module, name = _import_autoattack()
    aa_norm = {"linf": "Linf", "l2": "L2"}[norm]
    with attack_mode(model, eval_mode):
        with torch.no_grad():
            n_cls = model(x[:1]).shape[1]
        if name == "pyautoattack":
            adversary = module.AutoAttack(model, attacks=list(attacks) if attacks else None, device=x.device,
                                          eps=eps, norm=aa_norm, seed=seed, version=version)
        else:  # GitHub package: positional norm, attacks_to_run
            adversary = module.AutoAttack(model, norm=aa_norm, eps=eps, version=version, device=x.device,
                                          seed=seed, attacks_to_run=list(attacks) if attacks else [])
        adversary.verbose = verbose
        if not verbose:
            import logging

            logging.getLogger("auto-attack").setLevel(logging.WARNING)
        n_targets = max(1, min(9, n_cls - 1))
        adversary.apgd_targeted.n_target_classes = n_targets
        adversary.fab.n_target_classes = n_targets
        if version == "custom":
            adversary.apgd.n_restarts = restarts
        if n_cls < 4:
            # The targeted DLR loss needs 4+ classes; APGD-CE, FAB and Square still give a valid upper bound.
            adversary.attacks_to_run = [a for a in adversary.attacks_to_run if a not in ("apgd-t", "apgd-dlr")]
        out = adversary.run_standard_evaluation(x.detach(), y.to(x.device), batch_size=batch_size)
    x_adv = out[0] if isinstance(out, tuple) else out
    return x_adv.detach()



# ---------------------------------------------------------------------------------------------------------------
# RoCL's instance-wise attack: no labels, maximises the contrastive loss against the other view.
# ---------------------------------------------------------------------------------------------------------------

# The attack of RoCL's original code, made cheaper with the same math (tests/test_attacks.py checks it):
# - with the similarity's other side detached (the original's `z @ z.T.detach()`), the target view t'(x) only
#   ever appears as a constant, so its embedding is computed once, without gradient, not at every step;
# - each step needs the gradient with respect to the input only: parameters stop requiring grad for the
#   duration (no weight-gradient kernels run), and `.grad` of the parameters is never touched.


def _instance_start(x, eps, random_start, delta_init, generator):
    """The instance attack's first iterate: x + delta_init, x + uniform noise in [-eps, eps], or x."""
    if delta_init is not None:
        return (x + delta_init.to(x).clamp(-eps, eps)).clamp(0, 1)
    if random_start and eps > 0:
        noise = torch.rand(x.shape, generator=generator, device=generator.device if generator else x.device)
        return (x + (2 * noise.to(x) - 1) * eps).clamp(0, 1)
    return x.clone()


def _instance_loss(z_adv, z_target, targets, temperature, detach_other_side, gather):
    """NT-Xent of the adversarial anchors against their targets; targets = (all target rows, local offset)."""
    if not detach_other_side:
        return nt_xent(z_adv, z_target, temperature, detach_other_side=False)
    # Only the adversarial anchors' rows depend on x_adv; the target rows are a constant.
    targets_all, t_offset = targets
    adv_all, a_offset = gather(z_adv.detach()) if gather is not None else (z_adv.detach(), 0)
    m = adv_all.shape[0]
    rows = torch.arange(z_adv.shape[0], device=z_adv.device)
    return contrastive_rows(z_adv, torch.cat([adv_all, targets_all]), a_offset + rows,
                            (m + t_offset + rows)[:, None], temperature, detach_other_side=True).sum()


def instance_attack(model: nn.Module, x: torch.Tensor, x_target: torch.Tensor, eps: float = 8 / 255,
                    alpha: float = 0.007, steps: int = 7, temperature: float = 0.5, random_start: bool = True,
                    delta_init: torch.Tensor | None = None, generator: torch.Generator | None = None,
                    detach_other_side: bool = True, gather: Callable | None = None,
                    eval_mode: bool = True) -> torch.Tensor:
    """RoCL's instance-wise attack: l-inf PGD that maximises NT-Xent between the perturbed view and `x_target`.

    model: maps [0, 1] images to projections (encoder + projector). x: the view t(x) to perturb; x_target: the
    other view t'(x) of the same images; the other images of the batch are the negatives. Uniform random
    start in [-eps, eps] (or `delta_init`, e.g. noise drawn for a whole distributed batch), then `steps`
    sign-gradient steps of size alpha, each followed by projection onto the eps-ball and clamping to [0, 1].
    The model runs in eval mode (BN running statistics) unless eval_mode=False; its mode is restored.
    gather: optional callable applied to the (detached) embeddings each step, returning (all rows, offset of the
    local rows): with `torch.distributed` it makes the negatives come from every rank. Needs
    detach_other_side=True. Returns the adversarial images, detached.
    """
    _check_norm_eps(eps, "linf")
    if x.shape != x_target.shape:
        raise ConfigError(f"x and x_target differ in shape: {tuple(x.shape)} vs {tuple(x_target.shape)}.")
    if gather is not None and not detach_other_side:
        raise ConfigError("a gathered (multi-rank) instance attack needs detach_other_side=True.")
    x = x.detach()
    x_adv = _instance_start(x, eps, random_start, delta_init, generator)
    if steps <= 0:
        return x_adv.detach()
    with attack_mode(model, eval_mode):
        with torch.no_grad():
            z_target = model(x_target).float()
        targets = gather(z_target) if gather is not None else (z_target, 0)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = _instance_loss(model(x_adv).float(), z_target, targets, temperature, detach_other_side, gather)
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                x_adv = x_adv.detach() + alpha * grad.sign()
                # min/max rather than project(): the same set, but the shipped RoCL runs were made with this
                # arithmetic, and a rounding change would stop them reproducing bit for bit
                x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def feature_attack(model: nn.Module, x: torch.Tensor, target: torch.Tensor, eps: float, alpha: float,
                   steps: int = 5, delta_init: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   eval_mode: bool = True) -> torch.Tensor:
    """DeACL's training attack: l-inf PGD that pushes the model's features of x away from `target` (the teacher's
    features of x), maximising -cos(model(x_adv), target).

    Uniform start in [-eps, eps] (or `delta_init`), then `steps` sign-gradient steps of `alpha`, each projected
    onto the eps-ball and [0, 1]. The start is clamped to [0, 1] too (the authors' code clamps only after the
    first step; the difference is one step's worth of the budget at the image's edges). The model runs in eval
    mode unless eval_mode=False; its mode is restored. Returns the adversarial images, detached.
    """
    _check_norm_eps(eps, "linf")
    x, target = x.detach(), target.detach().float()
    x_adv = random_init(x, eps, "linf", generator) if delta_init is None else project(x + delta_init.to(x), x, eps)
    with attack_mode(model, eval_mode):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = -F.cosine_similarity(model(x_adv).float(), target, dim=1).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                x_adv = ascent_step(x_adv, x, grad, alpha, eps)
    return x_adv.detach()


def pair_attack(embed: Callable, x1: torch.Tensor, x2: torch.Tensor, eps: float, alpha: float, steps: int = 5,
                temperature: float = 0.5, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ACL's and DynACL's training attack: l-inf PGD on both views at once, maximising NT-Xent between them.

    embed(a, b) -> (z_a, z_b): the views' embeddings (DynACL: the first view through the online encoder, the
    second through the momentum encoder), with the models in the mode the caller set (eval, adversarial BN).
    noise: uniform [0, 1) draws shaped like cat([x1, x2]) for the start (drawn for a whole global batch).
    Returns (x1_adv, x2_adv), detached, within eps of the views and in [0, 1].
    """
    _check_norm_eps(eps, "linf")
    x = torch.cat([x1, x2]).detach()
    if noise is None:
        noise = torch.rand(x.shape, generator=generator, device=generator.device if generator else x.device)
    x_adv = project(x + (2 * noise.to(x) - 1) * eps, x, eps)
    n = len(x1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        z1, z2 = embed(x_adv[:n], x_adv[n:])
        (grad,) = torch.autograd.grad(nt_xent(z1.float(), z2.float(), temperature), x_adv)
        with torch.no_grad():
            x_adv = ascent_step(x_adv, x, grad, alpha, eps)
    return x_adv[:n].detach(), x_adv[n:].detach()
