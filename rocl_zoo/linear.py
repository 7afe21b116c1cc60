"""Linear evaluation of a frozen encoder: standard (SLF) and robust (ALF / rLE), as in RoCL's protocol.

    clf = train_linear_head(encoder, train_set, num_classes=10, epochs=150)              # SLF
    clf = train_linear_head(encoder, train_set, num_classes=10, robust=True, eps=8/255)   # ALF

The encoder stays frozen and in eval mode (BN running statistics); only a Linear(num_features, classes) trains,
on un-augmented images, with SGD (lr 0.1, momentum 0.9, weight decay 5e-4) and the LR divided by 10 at 20 %,
33 % and 67 % of the epochs (30, 50, 100 of 150, as RoCL's code). The result is a classifier: a copy of the
encoder with its `fc` set to the trained head, ready for `rocl_zoo.hub.save_pretrained` and for attacks.

SLF computes the frozen features once and trains the head on them: with no augmentation and a frozen encoder
the features never change, so this is the same optimisation at a fraction of the cost. ALF cannot: each step
makes PGD-10 examples through the frozen encoder and the current head, then trains the head on their features.
On a large encoder and a CPU that takes hours, so `resume=DIR` keeps the head's training in a run folder (a
head-only checkpoint after every step, kilobytes) and an interrupted run continues where it stopped.
"""
from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from tqdm.auto import tqdm

from . import steps as S
from .errors import ConfigError, DataError
from .eval_progress import tensors_digest, weights_digest
from .loop import RunFolder, batch_indices, multistep_lr, train_loop
from .precision import autocast
from .precision import resolve as resolve_precision
from .threat import alf_step

MILESTONE_FRACTIONS = (30 / 150, 50 / 150, 100 / 150)


def as_tensors(data, n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images in [0, 1], labels) from a Dataset of (image, label) or an (x, y) pair; n: a fixed random subset."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        x, y = data
    elif hasattr(data, "images") and hasattr(data, "labels"):  # rocl_zoo.data.ImageTensorDataset: no per-item work
        x, y = data.images, data.labels
    else:
        if len(data) == 0:
            raise DataError("the dataset is empty.")
        items = [data[i] for i in range(len(data))]
        x = torch.stack([torch.as_tensor(a) for a, _ in items])
        y = torch.as_tensor([int(b) for _, b in items])
    if n is not None and n < len(x):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        x, y = x[idx], y[idx]
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    if len(x) and (x.min() < 0 or x.max() > 1):
        raise DataError("images must be in [0, 1] (models normalise inside).")
    return x, torch.as_tensor(y).long()


def check_encoder(model: nn.Module) -> None:
    for attr in ("forward_features", "forward_head", "reset_classifier", "num_features"):
        if not hasattr(model, attr):
            raise ConfigError(f"linear evaluation needs a timm-style encoder with `{attr}`; "
                              f"{type(model).__name__} has none. Load it with rocl_zoo.load or rocl_zoo.create_model.")


@torch.no_grad()
def extract(encoder: nn.Module, x: torch.Tensor, batch_size: int = 256, device=None, progress: bool = False,
            desc: str = "features") -> torch.Tensor:
    """Pooled pre-logit features of a frozen encoder (eval mode), in batches."""
    device = device or next(encoder.parameters()).device
    out = []
    for i in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress or None, leave=False):
        xb = x[i:i + batch_size].to(device, non_blocking=True)
        out.append(encoder.forward_head(encoder.forward_features(xb), pre_logits=True).float())
    return torch.cat(out) if out else torch.empty(0, encoder.num_features, device=device)


def milestones(epochs: int) -> list[int]:
    """RoCL's LR milestones (30, 50, 100 of 150 epochs), scaled to `epochs`."""
    return sorted({max(1, round(f * epochs)) for f in MILESTONE_FRACTIONS if round(f * epochs) < epochs})


@torch.no_grad()
def init_head(head: nn.Linear, seed: int) -> nn.Linear:
    """A fresh head: weights N(0, 0.01^2) drawn from `seed`, zero bias."""
    head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(seed)) * 0.01)
    head.bias.zero_()
    return head


def train_linear_head(encoder: nn.Module, train_set, *, num_classes: int | None = None, robust: bool = False,
                      epochs: int = 150, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4,
                      batch_size: int = 256, eps: float = 8 / 255, alpha: float | None = None, steps: int = 10,
                      norm: str = "linf", n_examples: int | None = None, seed: int = 0, device=None,
                      progress: bool = True, label_names=None, amp: str = "off", resume=None) -> nn.Module:
    """Train a linear head on a frozen encoder; return a classifier (a copy of the encoder with `fc` set).

    robust=False: standard linear evaluation (SLF), on precomputed features. robust=True: robust linear
    evaluation (ALF), each step on PGD examples (eps, alpha, steps, norm; random start) made through the frozen
    encoder and the current head; alpha defaults to RoCL's 0.007 at 8/255, scaled with eps (0.0223 at 0.1). The
    steps are rocl_zoo.steps' SLF and ALF head steps, through the zoo's one loop (rocl_zoo.loop); amp: the ALF
    attack's precision (auto | bf16 | off; default off, an evaluation's fp32). resume: a folder for the head's
    checkpoint; a run stopped by Ctrl-C or SIGTERM continues there when called again with the same encoder, data
    and settings (a folder from any other run starts over), and its numbers equal an uninterrupted run's. The
    encoder passed in is not modified.
    """
    check_encoder(encoder)
    alpha = alf_step(eps) if alpha is None else alpha
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}.")
    x, y = as_tensors(train_set, n_examples, seed)
    num_classes = _count_classes(train_set, y, num_classes)
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    precision = resolve_precision(amp, device)

    clf = copy.deepcopy(encoder).to(device).eval()
    clf.reset_classifier(num_classes)
    head = init_head(clf.get_classifier(), seed)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    feats = None if robust else extract(clf, x, batch_size, device, progress, "features (frozen encoder)")
    steps_per_epoch, marks = -(-len(x) // batch_size), milestones(epochs)

    def step_fn(step, g):
        idx = batch_indices(len(x), batch_size, seed, step, steps_per_epoch)
        yb = y[idx].to(device, non_blocking=True)
        if not robust:
            return S.slf_head_step(head, feats[idx.to(feats.device)], yb)
        return S.alf_head_step(clf, x[idx].to(device, non_blocking=True), yb, eps=eps, alpha=alpha, steps=steps,
                               norm=norm, generator=g, amp=lambda: autocast(precision, device))

    total = epochs * steps_per_epoch
    settings = dict(robust=robust, num_classes=num_classes, epochs=epochs, lr=lr, momentum=momentum,
                    weight_decay=weight_decay, batch_size=batch_size, eps=eps, alpha=alpha, steps=steps, norm=norm,
                    seed=seed, amp=precision, total_steps=total)
    run, ckpt = _head_run(resume, settings, encoder, x, y) if resume is not None else (None, None)
    with _only_head_trains(clf, head):
        # the head is the whole trainable state: its checkpoint stays kilobytes whatever the encoder
        train_loop(head, opt, step_fn, steps_per_epoch=steps_per_epoch, total=total, seed=seed,
                   lr_at=lambda step: multistep_lr(step, steps_per_epoch, lr, marks), log_every=0,
                   run=run, ckpt=ckpt, config=settings, ckpt_every=1 if robust else 0,
                   resume_hint="The same command continues it.",
                   progress=progress, desc=("robust " if robust else "") + "linear eval")
    return _name_classes(clf, label_names or getattr(train_set, "classes", None), num_classes).eval()


def _count_classes(train_set, y: torch.Tensor, num_classes: int | None) -> int:
    """num_classes, else the dataset's class count, else the largest label + 1; a label outside is a DataError."""
    if num_classes is None:
        num_classes = len(getattr(train_set, "classes", None) or []) or int(y.max()) + 1
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"labels must be in [0, {num_classes}), got {int(y.min())}..{int(y.max())}.")
    return num_classes


@contextlib.contextmanager
def _only_head_trains(clf: nn.Module, head: nn.Module):
    """Freeze everything but the head while the block runs; then every parameter trains as before (the head: yes)."""
    flags = [(p, p.requires_grad) for p in clf.parameters()]
    for p in clf.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for p in head.parameters():
            p.requires_grad_(True)


def _name_classes(clf: nn.Module, names, num_classes: int) -> nn.Module:
    """The classifier with its pretrained_cfg naming its classes: the dataset's names, else their indices."""
    cfg = dict(getattr(clf, "pretrained_cfg", None) or {})
    cfg["label_names"] = tuple(names) if names is not None and len(names) == num_classes else \
        tuple(str(i) for i in range(num_classes))
    cfg["num_classes"] = num_classes
    clf.pretrained_cfg = clf.default_cfg = cfg
    return clf


def _head_run(folder, settings: dict, encoder: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """(run folder, checkpoint or None) for a resumable head: valid only for the same encoder weights, training
    images and settings; a folder holding any other run is started over."""
    config = dict(settings, encoder_sha256=weights_digest(encoder), data_sha256=tensors_digest(x, y))
    run = RunFolder(folder)
    try:
        return run, run.start(config, resume=True)
    except ConfigError:
        tqdm.write(f"{run.path} holds another head's training (encoder, data or settings differ): starting over")
        return run, run.start(config, overwrite=True)
