"""The four transfer modes of `rocl_zoo.finetune`: what each trains, its defaults, and its training run.

- linear         frozen encoder (eval mode, weights and BN statistics untouched), a linear head trained on its
                 features of the un-augmented images (SLF); the features are computed once.
- robust-linear  frozen encoder, the head trained on PGD examples made through encoder and head (ALF).
- at             the whole network fine-tuned on PGD examples (PGD-AT).
- trades         the whole network fine-tuned with TRADES.
Each is a step of `rocl_zoo.steps` run by the zoo's one loop (`rocl_zoo.loop`).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from . import attacks as A
from . import steps as S
from .adapt import fixed_subset, to_float
from .errors import ConfigError
from .loop import RunFolder, batch_indices, best_epoch, multistep_lr, train_loop
from .precision import autocast
from .utils import atomic_write
from .threat import alf_step, check_eps, default_eps, madry_step, parse_eps

MODES = {
    "linear": "frozen encoder; train a linear head on its features (standard linear evaluation, SLF)",
    "robust-linear": "frozen encoder; train a linear head on PGD examples made through encoder + head (ALF)",
    "at": "fine-tune the whole network on PGD examples (adversarial full fine-tuning, PGD-AT)",
    "trades": "fine-tune the whole network with TRADES: CE(clean) + beta * KL(clean || adversarial)",
}
LINEAR_MODES = ("linear", "robust-linear")
ADVERSARIAL_MODES = ("robust-linear", "at", "trades")

_LINEAR = dict(epochs=150, lr=0.1, batch_size=256, weight_decay=5e-4, milestones=(30 / 150, 50 / 150, 100 / 150))
_AFF = dict(epochs=25, lr=0.1, batch_size=128, weight_decay=2e-4, milestones=(15 / 25, 20 / 25))
DEFAULTS = {"linear": _LINEAR, "robust-linear": _LINEAR, "at": _AFF, "trades": _AFF}
DEFAULT_STEPS = 10
DEFAULT_BETA = 6.0

def resolve_settings(mode: str, dataset_name: str | None, *, epochs=None, lr=None, batch_size=None,
                     weight_decay=None, momentum=0.9, milestones=None, eps=None, alpha=None, steps=None,
                     norm="linf", beta=None) -> dict:
    """The per-mode defaults filled in; every value checked."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
    d = DEFAULTS[mode]
    epochs = d["epochs"] if epochs is None else int(epochs)
    lr = d["lr"] if lr is None else float(lr)
    batch_size = d["batch_size"] if batch_size is None else int(batch_size)
    weight_decay = d["weight_decay"] if weight_decay is None else float(weight_decay)
    if epochs < 1 or batch_size < 1 or not lr > 0 or weight_decay < 0 or not 0 <= momentum < 1:
        raise ConfigError(f"need epochs >= 1, batch size >= 1, lr > 0, weight decay >= 0, 0 <= momentum < 1; got "
                          f"{epochs}, {batch_size}, {lr}, {weight_decay}, {momentum}.")
    if milestones is None:
        milestones = sorted({max(1, round(f * epochs)) for f in d["milestones"] if round(f * epochs) < epochs})
    else:
        milestones = sorted(int(m) for m in milestones)
        if any(m < 1 for m in milestones):
            raise ConfigError(f"LR milestones are epoch numbers >= 1, got {milestones}.")
    if norm not in ("linf", "l2"):
        raise ConfigError(f"norm must be linf or l2, got {norm!r}.")
    eps = default_eps(dataset_name, norm) if eps is None else parse_eps(eps)
    check_eps(eps, norm)
    steps = DEFAULT_STEPS if steps is None else int(steps)
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}.")
    if alpha is not None:
        alpha = parse_eps(alpha)
    elif mode == "robust-linear":  # the same ALF attack as rocl_zoo.evaluate --protocol robust-linear
        alpha = alf_step(eps)
    else:
        alpha = madry_step(eps, steps)
    beta = DEFAULT_BETA if beta is None else float(beta)
    if beta < 0:
        raise ConfigError(f"TRADES beta must be >= 0, got {beta}.")
    out = dict(mode=mode, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
               momentum=momentum, milestones=milestones, lr_gamma=0.1, norm=norm, eps=eps, alpha=alpha, steps=steps)
    if mode == "trades":
        out["beta"] = beta
    return out


def lr_at(settings: dict, epoch: int) -> float:
    """The step schedule: lr * gamma ** (milestones passed); `epoch` counts from 0."""
    return multistep_lr(epoch, 1, settings["lr"], settings["milestones"], settings["lr_gamma"])


def _set_trainable(clf: nn.Module, mode: str) -> list:
    if mode in LINEAR_MODES:
        for p in clf.parameters():
            p.requires_grad_(False)
        head = clf.get_classifier()
        for p in head.parameters():
            p.requires_grad_(True)
        return list(head.parameters())
    for p in clf.parameters():
        p.requires_grad_(True)
    return list(clf.parameters())


@torch.no_grad()
def _features(clf: nn.Module, x: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    with A.attack_mode(clf, True):
        return torch.cat([clf.forward_head(clf.forward_features(to_float(x[i:i + batch_size], device)),
                                           pre_logits=True).float() for i in range(0, len(x), batch_size)])


def _val_metrics(clf, x, y, s: dict, device, robust: bool, generator: torch.Generator,
                 batch_size: int = 256) -> dict:
    clean = robust_correct = 0
    for i in range(0, len(x), batch_size):
        xb, yb = to_float(x[i:i + batch_size], device), y[i:i + batch_size].to(device)
        clean += (A.predict_labels(clf, xb) == yb).sum().item()
        if robust:
            x_adv = A.pgd(clf, xb, yb, s["eps"], alpha=s["alpha"], steps=s["steps"], norm=s["norm"], keep_best=False,
                        generator=generator)
            robust_correct += (A.predict_labels(clf, x_adv) == yb).sum().item()
    out = {"val_clean_acc": round(clean / len(y), 6)}
    if robust:
        out["val_robust_acc"] = round(robust_correct / len(y), 6)
    return out


class BestEpoch:
    """keep_best: the weights of the epoch with the best validation robust accuracy, which the run ends with (robust
    overfitting, Rice et al. 2020, makes the last epoch not always the best). Kept in the run folder as
    best.safetensors, so a resumed run still has them."""
    NAME = "best.safetensors"

    def __init__(self, run: RunFolder | None, ckpt: dict | None):
        best = best_epoch((ckpt or {}).get("epochs", []), "val_robust_acc")
        self.acc, self.epoch = (best["val_robust_acc"], best["epoch"]) if best else (-1.0, None)
        self.path = run.path / self.NAME if run is not None else None
        self.state = None
        if best and self.path is not None and self.path.is_file():
            from safetensors.torch import load_file

            self.state = load_file(str(self.path))

    def update(self, clf: nn.Module, epoch: int, acc: float) -> int:
        """Keep the weights if `acc` is the best so far; the best epoch (1-based)."""
        if acc > self.acc:
            from safetensors.torch import save

            self.acc, self.epoch = acc, epoch
            self.state = {k: v.detach().cpu().contiguous().clone() for k, v in clf.state_dict().items()}
            if self.path is not None:
                with atomic_write(self.path) as f:
                    f.write(save(self.state))
        return self.epoch

    def restore(self, clf: nn.Module) -> None:
        if self.state is None:
            raise ConfigError(f"the best epoch's weights ({self.path}) are missing: start the run again "
                              f"(--overwrite).")
        clf.load_state_dict(self.state)


TRAIN_ON = {"linear": "clean features", "robust-linear": "adversarial", "at": "adversarial",
            "trades": "clean+adversarial"}


def train_mode(clf: nn.Module, data: dict, s: dict, *, device, run: RunFolder | None, ckpt: dict | None,
           config: dict, checkpoint_every: int, max_steps: int | None, progress: bool, val_examples: int,
           seed: int, amp: str, keep_best: bool = False) -> list:
    """The mode's step (rocl_zoo.steps) through the zoo's one loop (rocl_zoo.loop); the epoch records. keep_best
    (adversarial modes): end with the best validation epoch's weights (BestEpoch)."""
    mode = s["mode"]
    if keep_best and mode not in ADVERSARIAL_MODES:
        raise ConfigError(f"keep_best picks by validation robust accuracy: an adversarial mode "
                          f"({', '.join(ADVERSARIAL_MODES)}), not {mode}.")
    best = BestEpoch(run, ckpt) if keep_best else None
    opt = torch.optim.SGD(_set_trainable(clf, mode), lr=s["lr"], momentum=s["momentum"],
                          weight_decay=s["weight_decay"])
    clf.to(device).train(mode in ("at", "trades"))  # a frozen encoder keeps its BN statistics
    xtr, ytr = data["train"]
    xva, yva = fixed_subset(*data["val"], val_examples, seed)
    feats = _features(clf, xtr, 256, device) if mode == "linear" else None
    bs, n = s["batch_size"], len(xtr)
    steps_per_epoch = math.ceil(n / bs)  # the last batch of an epoch may be short
    attack = dict(eps=s["eps"], alpha=s["alpha"], steps=s["steps"], norm=s["norm"])

    def step_fn(step, g):
        idx = batch_indices(n, bs, seed, step, steps_per_epoch)
        yb = ytr[idx].to(device)
        if mode == "linear":
            return S.slf_head_step(clf.get_classifier(), feats[idx.to(feats.device)], yb)
        xb, amp_ctx = to_float(xtr[idx], device), lambda: autocast(amp, device)
        if mode == "robust-linear":
            return S.alf_head_step(clf, xb, yb, generator=g, amp=amp_ctx, **attack)
        if mode == "at":
            return S.pgd_at_step(clf, xb, yb, generator=g, amp=amp_ctx, **attack)
        return S.trades_step(clf, xb, yb, beta=s["beta"], generator=g, amp=amp_ctx, **attack)

    def on_epoch_end(epoch):
        robust = mode in ADVERSARIAL_MODES or epoch + 1 == s["epochs"]
        g = torch.Generator().manual_seed(seed * 7_919 + epoch)
        rec = dict(train_on=TRAIN_ON[mode], **_val_metrics(clf, xva, yva, s, device, robust, g))
        if best is not None:
            rec["best_epoch"] = best.update(clf, epoch + 1, rec["val_robust_acc"])
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{s['epochs']}: " + ", ".join(f"{k} {v}" for k, v in rec.items()))
        return rec

    total = s["epochs"] * steps_per_epoch
    epochs = train_loop(clf, opt, step_fn, steps_per_epoch=steps_per_epoch, total=total, seed=seed,
                        lr_at=lambda step: lr_at(s, step // steps_per_epoch), stop=max_steps, run=run, ckpt=ckpt,
                        config=config, log_every=0, ckpt_every=checkpoint_every, on_epoch_end=on_epoch_end,
                        progress=progress, desc=f"{mode} fine-tuning", precision=amp)
    if best is not None and epochs and epochs[-1]["epoch"] == s["epochs"]:
        best.restore(clf)
    for p in clf.parameters():
        p.requires_grad_(True)
    clf.eval()
    return epochs
