"""Robust transfer learning: take a (robust) encoder to your own data, in four modes.

    python -m rocl_zoo.finetune --model cnn4_rocl.fmnist --dataset digits --mode trades --out runs/digits-trades

    from rocl_zoo.finetune import finetune
    run = finetune("cnn4_rocl.fmnist", "digits", mode="at", out="runs/digits-at", epochs=10)
    run.model, run.results["clean_acc"], run.results["pgd_acc"]

Modes (the RoCL paper's transfer protocols):
- linear         frozen encoder (eval mode, weights and BN statistics untouched), a linear head trained on its
                 features of the un-augmented images (SLF). Features are computed once: same optimisation.
- robust-linear  frozen encoder, the head trained on PGD examples made through the encoder and the current head
                 (ALF / rLE): RoCL's PGD-10 with step 0.007 at 8/255, scaled with eps (0.0223 at 0.1), as
                 `rocl_zoo.evaluate --protocol robust-linear`.
- at             the whole network fine-tuned on PGD examples (adversarial full fine-tuning with PGD-AT).
- trades         the whole network fine-tuned with TRADES: CE(clean) + beta * KL(p(clean) || p(adversarial)),
                 the attack maximising that KL (beta 6).

Defaults: linear modes follow RoCL's linear protocol (150 epochs, SGD lr 0.1, momentum 0.9, wd 5e-4, LR /10 at
20/33/67 % of the epochs, batch 256); AT/TRADES follow AFF (25 epochs, lr 0.1 /10 at 15 and 20 (60/80 %), wd
2e-4, batch 128, PGD-10 with step 2.5 eps / steps = 2/255 at 8/255). eps defaults to 8/255 in l-inf (0.1 on
Fashion-MNIST and digits, as rocl_zoo.evaluate). Attacks used for training run the model in eval mode (BN
running statistics), as TRADES's code does; Madry's PGD-AT code generates in train mode, which also moves the BN
statistics at every attack step. The training forward passes run in train mode (AT/TRADES). Each mode is a step
of rocl_zoo.steps run by the zoo's one loop (rocl_zoo.loop), the same as training.supervised's PGD-AT and
TRADES; `amp="auto"` trains in bf16 autocast where the hardware has native bf16 (rocl_zoo.precision), and the
test evaluation is fp32 whatever it says.

Adapting the encoder to the data. By default the DATA is converted to what the encoder takes
(`rocl_zoo.inference.fit_image`: grey to RGB by repeating the channel, RGB to grey by ITU-R 601 luma, bilinear
antialiased resize to the encoder's input size) and the encoder stays intact. `in_chans=` / `image_size=` change
the model instead: a new channel count adapts the first convolution (grey to RGB: weights repeated / 3; RGB to
grey: weights summed, each channel rescaled by its std) and the in-model normalisation, so a grey image gives
(nearly) the features its RGB copy gave; a new image size only changes the input size (the encoders pool
globally). The classes come from the dataset (a fresh head); a validation split (val_fraction, seeded) is held
out of the training split, since none of the datasets ships one; an imagefolder without a test/ folder also
gives 20 % of its images (seeded) to a test split.

Output folder OUT:
    config.json      the resolved settings (a resumed run must match them)
    metrics.jsonl    one line per epoch: loss, accuracy, LR, the training attack's statistics, validation
                     (a training log: accuracies as fractions)
    checkpoint.pt    weights, optimiser, RNG and position, written atomically at each epoch's end (and every
                     checkpoint_every steps, and on Ctrl-C); read with torch.load(weights_only=True)
    classifier/      the fine-tuned classifier in the Hub layout (rocl_zoo.load, timm "local-dir:", model card)
    results.json     rocl_zoo.evaluate's results file on the test split (clean, PGD-20, AutoAttack on request;
                     accuracies in percent, rocl_zoo.results); results/ files it under
                     rocl_zoo.results.relpath(encoder, "finetune-<mode>", threat, "finetune", n, dataset)
A finished OUT is never overwritten without resume=True (continue) or overwrite=True (start again: old files
are replaced only as new ones are written). Errors about the model or the data are raised before anything is
written.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import cli
from .cli import add_runtime_args
from .errors import ConfigError, DataError, RoclZooError
from .linear import as_tensors, check_encoder, init_head
from .loop import RunFolder, TrainingInterrupted

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
DEFAULT_ATTACKS = "clean,pgd20"
IMAGEFOLDER_TEST_FRACTION = 0.2

CONFIG_NAME, METRICS_NAME, CHECKPOINT_NAME, RESULTS_NAME, CLASSIFIER_DIR = (
    "config.json", "metrics.jsonl", "checkpoint.pt", "results.json", "classifier")
OUTPUT_NAMES = (CONFIG_NAME, METRICS_NAME, CHECKPOINT_NAME, RESULTS_NAME, CLASSIFIER_DIR)
# Training stopped on Ctrl-C or at max_steps after a checkpoint; resume=True continues it.
FinetuneInterrupted = TrainingInterrupted


@dataclass
class FinetuneResult:
    model: nn.Module                  # the fine-tuned classifier, eval mode, on the device
    results: dict                     # rocl_zoo.evaluate's results dict on the test split
    metrics: list = field(default_factory=list)  # one dict per epoch
    out: Path | None = None
    config: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ data


def _is_imagefolder(name) -> bool:
    return isinstance(name, str) and name.startswith("imagefolder:")


def _as_xy(data):
    if hasattr(data, "images") and hasattr(data, "labels"):
        return data.images, data.labels.long()  # keep uint8: adapted and converted per batch
    return as_tensors(data)


def _split(x, y, fraction: float, seed: int):
    """(kept x, kept y, held-out x, held-out y): a seeded random `fraction` held out."""
    n_out = int(round(fraction * len(x)))
    if n_out < 1 or n_out >= len(x):
        raise DataError(f"cannot hold out {fraction:.0%} of {len(x)} examples; give more data or another fraction.")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    keep, out = perm[n_out:].sort().values, perm[:n_out].sort().values
    return x[keep], y[keep], x[out], y[out]


def _subset(x, y, n: int | None, seed: int):
    if not n or n >= len(x):
        return x, y
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[idx], y[idx]


def adapt_images(x: torch.Tensor, in_chans: int, size: tuple[int, int], chunk: int = 4096) -> torch.Tensor:
    """A batch (N, C, H, W) to the model's channels and size with `rocl_zoo.inference.fit_image`, in place of the
    model: uint8 stays uint8 (rounded), float stays float."""
    from .inference import fit_image

    if x.shape[1] == in_chans and tuple(x.shape[2:]) == tuple(size):
        return x
    out = []
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        xf = xb.float().div(255) if xb.dtype == torch.uint8 else xb.float()
        fb = torch.stack([fit_image(t, in_chans, tuple(size)) for t in xf])
        out.append(fb.mul(255).round().to(torch.uint8) if xb.dtype == torch.uint8 else fb)
    return torch.cat(out)


def _float(x: torch.Tensor, device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def load_data(dataset, *, test=None, in_chans: int, size, val_fraction: float = 0.1, seed: int = 0,
              subset: int | None = None, root=None, download: bool = False) -> dict:
    """Train / val / test tensors at the model's channels and size, and the class names.

    dataset: a name for rocl_zoo.data.load_dataset (test split loaded too), or a Dataset / (x, y) pair of
    training data with `test` the test data. The validation split is held out of the training split.
    """
    classes = None
    if isinstance(dataset, str):
        from .data import load_dataset

        kw = dict(root=root, download=download)
        if _is_imagefolder(dataset):
            kw = dict(image_size=int(size[0]) if size[0] == size[1] else None)
        train = load_dataset(dataset, "train", **kw)
        classes = list(train.classes)
        xtr, ytr = _as_xy(train)
        if _is_imagefolder(dataset) and not (Path(dataset.split(":", 1)[1]).expanduser() / "test").is_dir():
            xtr, ytr, xte, yte = _split(xtr, ytr, IMAGEFOLDER_TEST_FRACTION, seed + 1)
        else:
            test_set = load_dataset(dataset, "test", **kw)
            if list(test_set.classes) != classes:
                raise DataError(f"{dataset}: the test split's classes {list(test_set.classes)} differ from the "
                                f"training split's {classes}.")
            xte, yte = _as_xy(test_set)
    else:
        if test is None:
            raise ConfigError("give the test data too (test=Dataset or (x, y)) when `dataset` is not a name.")
        classes = list(getattr(dataset, "classes", None) or []) or None
        xtr, ytr = _as_xy(dataset)
        xte, yte = _as_xy(test)
    if len(xtr) == 0 or len(xte) == 0:
        raise DataError("the training or test split is empty.")
    num_classes = len(classes) if classes else int(max(ytr.max(), yte.max())) + 1
    if classes is None:
        classes = [str(i) for i in range(num_classes)]
    if num_classes < 2:
        raise DataError(f"the dataset has {num_classes} class; fine-tuning a classifier needs at least 2.")
    for name, yy in (("training", ytr), ("test", yte)):
        if yy.min() < 0 or yy.max() >= num_classes:
            raise DataError(f"{name} labels must be in [0, {num_classes}), got {int(yy.min())}..{int(yy.max())}.")
    xtr, ytr = _subset(xtr, ytr, subset, seed)
    xtr, ytr, xva, yva = _split(xtr, ytr, val_fraction, seed)
    source_size = tuple(xtr.shape[1:])
    return dict(train=(adapt_images(xtr, in_chans, size), ytr), val=(adapt_images(xva, in_chans, size), yva),
                test=(adapt_images(xte, in_chans, size), yte), classes=classes, num_classes=num_classes,
                source_input_size=source_size)


# ------------------------------------------------------------------------------------------------ model


def _first_conv(model: nn.Module) -> nn.Conv2d:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise ConfigError(f"{type(model).__name__} has no Conv2d to adapt to another channel count.")


@torch.no_grad()
def adapt_in_chans(model: nn.Module, in_chans: int) -> nn.Module:
    """Change a model's input channels in place: first convolution and in-model normalisation.

    grey -> RGB: weights repeated over the 3 channels / 3, mean and std repeated, so an RGB image whose channels
    are equal gives exactly the grey image's output. RGB -> grey: each channel's weights scaled by std'/std_c and
    summed, std' and mean' the channels' averages: a grey image gives what its RGB copy gave (exactly when the
    channels share one mean and std; padding borders aside otherwise).
    """
    from .models._base import check_in_chans

    check_in_chans(in_chans)
    old = int(model.in_chans)
    if old == in_chans:
        return model
    conv, norm = _first_conv(model), model.normalize
    mean, std = norm.mean.flatten(), norm.std.flatten()
    w = conv.weight
    if old == 1:  # grey -> RGB
        new_w = w.repeat(1, in_chans, 1, 1) / in_chans
        new_mean, new_std = mean.repeat(in_chans), std.repeat(in_chans)
    else:  # RGB -> grey
        new_std, new_mean = std.mean().view(1), mean.mean().view(1)
        new_w = (w * (new_std / std).view(1, -1, 1, 1)).sum(1, keepdim=True)
    conv.weight = nn.Parameter(new_w.contiguous(), requires_grad=w.requires_grad)
    conv.in_channels = in_chans
    norm.mean = new_mean.view(1, in_chans, 1, 1).clone()
    norm.std = new_std.view(1, in_chans, 1, 1).clone()
    model.in_chans = in_chans
    return model


def _resolve_model(model, device) -> tuple[nn.Module, str]:
    if isinstance(model, nn.Module):
        cfg = getattr(model, "pretrained_cfg", None) or {}
        return model, str(cfg.get("source") or cfg.get("architecture") or type(model).__name__)
    from .hub import load

    return load(model, device="cpu"), str(model)


def build_classifier(encoder: nn.Module, num_classes: int, *, in_chans: int | None = None,
                     image_size: tuple[int, int] | None = None, label_names=None, seed: int = 0) -> nn.Module:
    """A copy of `encoder` with a fresh Linear(num_features, num_classes) head (std 0.01, zero bias, seeded)
    and, when asked, another input channel count or size. The encoder passed in is not modified."""
    from .inference import model_input_size

    check_encoder(encoder)
    clf = copy.deepcopy(encoder).cpu()
    if in_chans is not None:
        adapt_in_chans(clf, in_chans)
    c, h, w = model_input_size(clf)
    if image_size is not None:
        h, w = image_size
    clf.reset_classifier(num_classes)
    init_head(clf.get_classifier(), seed)
    cfg = dict(getattr(clf, "pretrained_cfg", None) or {})
    cfg.update(input_size=(int(clf.in_chans), int(h), int(w)), num_classes=num_classes,
               label_names=tuple(label_names) if label_names else tuple(str(i) for i in range(num_classes)))
    clf.pretrained_cfg = clf.default_cfg = cfg
    return clf


# ------------------------------------------------------------------------------------------------ attacks


# ------------------------------------------------------------------------------------------------ settings


def resolve_settings(mode: str, dataset_name: str | None, *, epochs=None, lr=None, batch_size=None,
                     weight_decay=None, momentum=0.9, milestones=None, eps=None, alpha=None, steps=None,
                     norm="linf", beta=None) -> dict:
    """The per-mode defaults filled in; every value checked."""
    from .threat import alf_step, check_eps, default_eps, madry_step, parse_eps

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
    from .loop import multistep_lr

    return multistep_lr(epoch, 1, settings["lr"], settings["milestones"], settings["lr_gamma"])


# ------------------------------------------------------------------------------------------------ outputs


def _existing_outputs(out: Path) -> list[str]:
    return [n for n in OUTPUT_NAMES if (out / n).exists()] if out.is_dir() else []


def _finished_results(out: Path, suite: str) -> dict | None:
    """The results of a finished run in `out` (in the current schema) when they cover the attack suite asked for,
    else None."""
    from .results import read

    try:
        results = read(out / RESULTS_NAME)
    except RoclZooError:
        return None
    wanted = {a.strip() for a in suite.split(",") if a.strip()}
    if not (out / CLASSIFIER_DIR / "config.json").is_file() or not wanted <= set(results.attacks):
        return None
    return results.data


def autoattack_text(results: dict) -> str:
    """'39.00 %', with the subset it ran on when that is not every evaluated image."""
    aa, sub = results.get("autoattack_acc"), results.get("autoattack_subset")
    if aa is None:
        return "–"
    if not sub:
        return f"{aa:.2f} %"
    return f"{aa:.2f} % (on {sub['n_examples']} of the {results.get('n_examples')} images, where PGD gives " \
           f"{sub['pgd_acc']:.2f} %)"


def model_card(config: dict, results: dict, metrics: list) -> str:
    """The classifier's README.md: how it was made, what it scores, how to load it."""
    mode, ds = config["mode"], config["dataset"]
    last = metrics[-1] if metrics else {}
    pct = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    rows = [f"| {name} | {pct(a['acc'])} |" for name, a in results.get("attacks", {}).items()]
    # metrics.jsonl, a training log, keeps its validation accuracies as fractions; the card states percent
    val = lambda k: "–" if last.get(k) is None else f"{100 * last[k]:.2f} %"  # noqa: E731
    settings = ", ".join(f"{k}={config[k]}" for k in ("epochs", "lr", "batch_size", "weight_decay", "milestones",
                                                       "eps_str", "alpha", "steps", "beta") if k in config)
    return (
        "---\nlibrary_name: timm\nlicense: mit\ntags:\n- image-classification\n- adversarial-robustness\n"
        f"- rocl-zoo\n- transfer-learning\ndatasets:\n- {ds}\n---\n"
        f"# {config['architecture']} fine-tuned on `{ds}` ({mode})\n\n"
        f"Encoder `{config['encoder']}` transferred to `{ds}` with `python -m rocl_zoo.finetune --mode {mode}`: "
        f"{MODES[mode]}.\n\nSettings: {settings}. Input: images in [0, 1] of shape "
        f"{list(config['input_size'])} (the data were converted from {list(config['source_input_size'])}); "
        f"the model normalises inside.\n\n"
        f"## Results on the test split ({results.get('n_examples')} images, {results.get('threat_model')} "
        f"eps {results.get('eps_str')})\n\n| Attack | Accuracy (%) |\n|---|---:|\n" + "\n".join(rows) +
        f"\n\nClean {pct(results.get('clean_acc'))} %, PGD {pct(results.get('pgd_acc'))} %, AutoAttack "
        f"{autoattack_text(results)}. Last epoch's validation: clean {val('val_clean_acc')}, robust "
        f"{val('val_robust_acc')}. Hardware: "
        f"{results.get('hardware')}.\n\n## Load\n\n```python\nimport rocl_zoo\nmodel = rocl_zoo.load('PATH')"
        f"          # verified sha256, strict\n\nimport timm, rocl_zoo.models\nmodel = "
        f"timm.create_model('local-dir:PATH', pretrained=True)\n```\n")


# ------------------------------------------------------------------------------------------------ training


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
    from .attacks import attack_mode

    with attack_mode(clf, True):
        return torch.cat([clf.forward_head(clf.forward_features(_float(x[i:i + batch_size], device)),
                                           pre_logits=True).float() for i in range(0, len(x), batch_size)])


def _val_metrics(clf, x, y, s: dict, device, robust: bool, generator: torch.Generator,
                 batch_size: int = 256) -> dict:
    from .attacks import pgd, predict_labels

    clean = robust_correct = 0
    for i in range(0, len(x), batch_size):
        xb, yb = _float(x[i:i + batch_size], device), y[i:i + batch_size].to(device)
        clean += (predict_labels(clf, xb) == yb).sum().item()
        if robust:
            x_adv = pgd(clf, xb, yb, s["eps"], alpha=s["alpha"], steps=s["steps"], norm=s["norm"], keep_best=False,
                        generator=generator)
            robust_correct += (predict_labels(clf, x_adv) == yb).sum().item()
    out = {"val_clean_acc": round(clean / len(y), 6)}
    if robust:
        out["val_robust_acc"] = round(robust_correct / len(y), 6)
    return out


TRAIN_ON = {"linear": "clean features", "robust-linear": "adversarial", "at": "adversarial",
            "trades": "clean+adversarial"}


def _train(clf: nn.Module, data: dict, s: dict, *, device, run: RunFolder | None, ckpt: dict | None,
           config: dict, checkpoint_every: int, max_steps: int | None, progress: bool, val_examples: int,
           seed: int, amp: str) -> list:
    """The mode's step (rocl_zoo.steps) through the zoo's one loop (rocl_zoo.loop); the epoch records."""
    from . import steps as S
    from .loop import batch_indices, train_loop
    from .precision import autocast

    mode = s["mode"]
    opt = torch.optim.SGD(_set_trainable(clf, mode), lr=s["lr"], momentum=s["momentum"],
                          weight_decay=s["weight_decay"])
    clf.to(device).train(mode in ("at", "trades"))  # a frozen encoder keeps its BN statistics
    xtr, ytr = data["train"]
    xva, yva = _subset(*data["val"], val_examples, seed)
    feats = _features(clf, xtr, 256, device) if mode == "linear" else None
    bs, n = s["batch_size"], len(xtr)
    steps_per_epoch = math.ceil(n / bs)  # the last batch of an epoch may be short
    attack = dict(eps=s["eps"], alpha=s["alpha"], steps=s["steps"], norm=s["norm"])

    def step_fn(step, g):
        idx = batch_indices(n, bs, seed, step, steps_per_epoch)
        yb = ytr[idx].to(device)
        if mode == "linear":
            return S.slf_head_step(clf.get_classifier(), feats[idx.to(feats.device)], yb)
        xb, amp_ctx = _float(xtr[idx], device), lambda: autocast(amp, device)
        if mode == "robust-linear":
            return S.alf_head_step(clf, xb, yb, generator=g, amp=amp_ctx, **attack)
        if mode == "at":
            return S.pgd_at_step(clf, xb, yb, generator=g, amp=amp_ctx, **attack)
        return S.trades_step(clf, xb, yb, beta=s["beta"], generator=g, amp=amp_ctx, **attack)

    def on_epoch_end(epoch):
        robust = mode in ADVERSARIAL_MODES or epoch + 1 == s["epochs"]
        g = torch.Generator().manual_seed(seed * 7_919 + epoch)
        rec = dict(train_on=TRAIN_ON[mode], **_val_metrics(clf, xva, yva, s, device, robust, g))
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{s['epochs']}: " + ", ".join(f"{k} {v}" for k, v in rec.items()))
        return rec

    total = s["epochs"] * steps_per_epoch
    epochs = train_loop(clf, opt, step_fn, steps_per_epoch=steps_per_epoch, total=total, seed=seed,
                        lr_at=lambda step: lr_at(s, step // steps_per_epoch), stop=max_steps, run=run, ckpt=ckpt,
                        config=config, log_every=0, ckpt_every=checkpoint_every, on_epoch_end=on_epoch_end,
                        progress=progress, desc=f"{mode} fine-tuning", precision=amp)
    for p in clf.parameters():
        p.requires_grad_(True)
    clf.eval()
    return epochs


# ------------------------------------------------------------------------------------------------ API


def finetune(model, dataset, *, mode: str = "linear", out=None, test=None, epochs: int | None = None,
             lr: float | None = None, batch_size: int | None = None, weight_decay: float | None = None,
             momentum: float = 0.9, milestones=None, eps=None, alpha=None, steps: int | None = None,
             norm: str = "linf", beta: float | None = None, image_size: int | None = None,
             in_chans: int | None = None, val_fraction: float = 0.1, val_examples: int = 500,
             subset: int | None = None, eval_examples: int = 0, attacks: str | None = None,
             autoattack: bool = False, autoattack_examples: int = 0, seed: int = 0, device="auto", data_root=None,
             download: bool = False, resume: bool = False, overwrite: bool = False, checkpoint_every: int = 0,
             max_steps: int | None = None, amp: str = "auto", progress: bool = True) -> FinetuneResult:
    """Transfer an encoder to a dataset in one of the modes linear, robust-linear, at, trades (see the module doc).

    model: a zoo name, hf-hub:ORG/NAME, a Hub folder, or a model. dataset: a name (fashion_mnist, cifar10,
    cifar100, stl10, svhn, digits, imagefolder:PATH) or a Dataset / (x, y) of training data with `test=` the test
    data. out: the output folder (None: nothing is written, no resume). image_size / in_chans: change the model
    rather than the data. subset: train on a fixed random subset. eval_examples: evaluate on a fixed random
    subset of the test split (0 = all). attacks: the evaluation suite (default clean,pgd20; autoattack=True
    adds AutoAttack, on a fixed random subset of autoattack_examples of them when > 0). Returns
    FinetuneResult(model, results, metrics, out, config).
    """
    from . import __version__
    from .evaluate import evaluate, parse_attack
    from .threat import eps_str
    from .inference import model_input_size
    from .precision import describe as describe_precision
    from .precision import resolve as resolve_precision
    from .utils import check_output_path, hardware_name, resolve_device, write_json

    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run, or start it again.")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    for name, v in (("val_examples", val_examples), ("eval_examples", eval_examples),
                    ("autoattack_examples", autoattack_examples),
                    ("checkpoint_every", checkpoint_every), ("subset", subset or 0)):
        if v < 0:
            raise ConfigError(f"{name} must be >= 0, got {v}.")
    dataset_name = dataset if isinstance(dataset, str) else getattr(dataset, "name", None) or "custom"
    s = resolve_settings(mode, dataset_name, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                         momentum=momentum, milestones=milestones, eps=eps, alpha=alpha, steps=steps, norm=norm,
                         beta=beta)
    suite = attacks or DEFAULT_ATTACKS
    if autoattack and "autoattack" not in suite:
        suite += ",autoattack"
    for spec in suite.split(","):  # a bad attack list fails before any slow work
        if spec.strip():
            parse_attack(spec, s["eps"], norm)
    device = resolve_device(device)
    out = check_output_path(out, folder=True) if out is not None else None
    existing = _existing_outputs(out) if out is not None else []
    if existing and not (resume or overwrite):
        raise ConfigError(f"{out} already holds a fine-tuning run ({', '.join(existing)}). Pass --resume to continue "
                          f"it, --overwrite to start it again, or choose another --out.")

    # Everything that can fail on the model or the data happens before anything is written.
    encoder, source = _resolve_model(model, device)
    if image_size is not None:
        if int(image_size) < 8:
            raise ConfigError(f"--image-size must be >= 8, got {image_size}.")
    c, h, w = model_input_size(encoder)
    target_c = int(in_chans) if in_chans is not None else c
    size = (int(image_size), int(image_size)) if image_size is not None else (h, w)
    data = load_data(dataset, test=test, in_chans=target_c, size=size, val_fraction=val_fraction, seed=seed,
                     subset=subset, root=data_root, download=download)
    clf = build_classifier(encoder, data["num_classes"], in_chans=in_chans, image_size=size,
                           label_names=data["classes"], seed=seed)
    arch = (clf.pretrained_cfg or {}).get("architecture") or type(clf).__name__
    config = {**s, "eps_str": eps_str(s["eps"]), "encoder": source, "architecture": arch, "dataset": dataset_name,
              "num_classes": data["num_classes"], "classes": list(data["classes"]),
              "input_size": list(clf.pretrained_cfg["input_size"]),
              "source_input_size": list(data["source_input_size"]),
              "adapt": "model" if (in_chans is not None or image_size is not None) else "data",
              "image_size": image_size, "in_chans": in_chans, "val_fraction": val_fraction,
              "val_examples": val_examples, "subset": subset, "seed": seed,
              "n_train": len(data["train"][1]), "n_val": len(data["val"][1]), "n_test": len(data["test"][1]),
              "train_attack": None if mode == "linear" else (
                  {"attack": "trades-kl" if mode == "trades" else "pgd", "norm": norm, "eps": s["eps"],
                   "alpha": s["alpha"], "steps": s["steps"], "random_start": True, "model_mode": "eval"}),
              "attacks": suite, "autoattack": autoattack, "autoattack_examples": autoattack_examples,
              "eval_examples": eval_examples,
              "checkpoint_every": checkpoint_every, "device": str(device), "hardware": hardware_name(device),
              **describe_precision(resolve_precision(amp, device), device),
              "rocl_zoo_version": __version__, "torch": torch.__version__}

    run, ckpt = None, None
    if out is not None:
        run = RunFolder(out)
        if resume and not run.holds_run() and progress:
            tqdm.write(f"--resume: no run in {out} yet; starting one.")
        ckpt = run.start(config, resume=resume, overwrite=overwrite)
        total = s["epochs"] * math.ceil(len(data["train"][1]) / s["batch_size"])
        finished = _finished_results(out, suite) if ckpt is not None and ckpt["step"] >= total else None
        if finished is not None:
            from .hub import load

            if progress:
                tqdm.write(f"{out} is finished; nothing to do (results in {out / RESULTS_NAME}).")
            return FinetuneResult(load(out / CLASSIFIER_DIR, device=device), finished, list(ckpt["epochs"]), out,
                                  config)

    t0 = time.time()
    metrics = _train(clf, data, s, device=device, run=run, ckpt=ckpt, config=config,
                     checkpoint_every=checkpoint_every, max_steps=max_steps, progress=progress,
                     val_examples=val_examples, seed=seed, amp=config["precision"])
    train_time = time.time() - t0
    if max_steps and (not metrics or metrics[-1]["epoch"] < s["epochs"]):
        raise TrainingInterrupted(f"stopped after {max_steps} steps (max_steps), checkpoint written; continue with "
                                  "--resume (resume=True), same settings.")

    xte, yte = _subset(*data["test"], eval_examples, seed)
    meta = {"model": source, "dataset": dataset_name, "split": "test", "protocol": f"finetune-{mode}",
            "protocol_config": {k: config[k] for k in ("mode", "epochs", "lr", "batch_size", "weight_decay",
                                                       "milestones", "train_attack", "input_size",
                                                       "source_input_size", "n_train", "seed")},
            "finetune_train_time_s": round(sum(m.get("time_s", 0) for m in metrics), 3),
            "rocl_zoo_version": __version__}
    if mode == "trades":
        meta["protocol_config"]["beta"] = s["beta"]
    results = evaluate(clf, _float(xte, "cpu"), yte, attacks=suite, eps=s["eps"], norm=norm, seed=seed,
                       num_classes=data["num_classes"], autoattack_examples=autoattack_examples,
                       progress=progress, meta=meta)
    if out is not None:
        from .hub import save_pretrained

        card_metrics = {k: results.get(k) for k in ("clean_acc", "pgd_acc", "autoattack_acc", "robust_acc",
                                                     "eps_str", "threat_model", "n_examples")}
        save_pretrained(clf, out / CLASSIFIER_DIR, dataset=dataset_name, recipe=f"finetune-{mode}",
                        metrics=card_metrics, label_names=data["classes"],
                        extra={"encoder": source, "finetune": {k: v for k, v in config.items()
                                                                if k not in ("classes",)}},
                        card=model_card(config, results, metrics))
        results["classifier"] = str(out / CLASSIFIER_DIR)
        write_json(out / RESULTS_NAME, results)
        if progress:
            tqdm.write(f"wrote {out / CLASSIFIER_DIR} and {out / RESULTS_NAME} (training {train_time:.0f} s)")
    return FinetuneResult(clf, results, metrics, out, config)


# ------------------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    modes = "\n".join(f"  {k:<14} {v}" for k, v in MODES.items())
    p = argparse.ArgumentParser(
        prog="python -m rocl_zoo.finetune",
        description="Transfer a (robust) encoder to a dataset and evaluate it: writes OUT/classifier (Hub layout: "
                    "rocl_zoo.load, timm), OUT/results.json (clean + PGD-20 on the test split), "
                    "OUT/metrics.jsonl, OUT/config.json and OUT/checkpoint.pt (resumable).\n\nmodes:\n" + modes,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="defaults: linear modes 150 epochs, lr 0.1 /10 at 20/33/67 %%, wd 5e-4, batch 256; at/trades 25 "
               "epochs, lr 0.1 /10 at 15 and 20, wd 2e-4, batch 128; PGD-10, step 2.5 eps/steps; eps 8/255 "
               "(0.1 on fashion_mnist and digits); TRADES beta 6.\n\nexamples:\n"
               "  python -m rocl_zoo.finetune --model cnn4_rocl.fmnist --dataset digits --mode at --out runs/d-at\n"
               "  python -m rocl_zoo.finetune --model resnet18_rocl.cifar10 --dataset cifar100 --mode trades \\\n"
               "      --eps 8/255 --out runs/c100-trades --autoattack\n"
               "  python -m rocl_zoo.finetune ... --resume     # continue after Ctrl-C or a crash")
    p.add_argument("--model", required=True, metavar="SOURCE",
                   help="encoder: zoo name (arch.tag), hf-hub:ORG/NAME[@REV] or a Hub-layout folder")
    p.add_argument("--dataset", required=True, metavar="NAME",
                   help="fashion_mnist, cifar10, cifar100, stl10, svhn, digits or imagefolder:PATH "
                        "(PATH/<class>/<image>, or PATH/train/... and PATH/test/...)")
    p.add_argument("--mode", required=True, choices=list(MODES), help="see 'modes' above")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    g = p.add_argument_group("optimisation (defaults per mode)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--lr", type=float, help="SGD learning rate (default 0.1)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--momentum", type=float, default=0.9, help="(default 0.9)")
    g.add_argument("--milestones", help="comma-separated epochs where the LR is divided by 10 (e.g. 15,20)")
    g = p.add_argument_group("training attack (robust-linear, at, trades) and threat model")
    g.add_argument("--eps", help="budget in [0, 1] pixel units, e.g. 8/255 or 0.1")
    g.add_argument("--alpha", help="attack step size (default: 2.5 * eps / steps for at and trades, RoCL's "
                                   "0.007 * eps / (8/255) for robust-linear)")
    g.add_argument("--steps", type=int, help=f"attack steps (default {DEFAULT_STEPS})")
    g.add_argument("--norm", default="linf", choices=["linf", "l2"], help="(default linf)")
    g.add_argument("--beta", type=float, help=f"TRADES beta (default {DEFAULT_BETA:g})")
    g = p.add_argument_group("adapting model and data")
    g.add_argument("--image-size", type=int, help="train the model at this size (default: the model's input size; "
                                                   "the data are resized to it)")
    g.add_argument("--in-chans", type=int, choices=[1, 3],
                   help="change the model's input channels (first conv adapted) instead of converting the data")
    g.add_argument("--val-fraction", type=float, default=0.1, help="held out of the training split (default 0.1)")
    g.add_argument("--val-examples", type=int, default=500, help="validation examples scored per epoch (default 500)")
    g.add_argument("--subset", type=int, help="train on a fixed random subset of this many training images")
    g.add_argument("--download", action="store_true", help="let torchvision download the dataset")
    g = p.add_argument_group("evaluation and run control")
    g.add_argument("--attacks", default=DEFAULT_ATTACKS, help="evaluation suite, as rocl_zoo.evaluate "
                                                              "(default %(default)s)")
    g.add_argument("--autoattack", action="store_true", help="add AutoAttack (standard) to the evaluation")
    g.add_argument("--autoattack-examples", type=int, default=0, metavar="K",
                   help="run AutoAttack on a fixed random K of the evaluated test images only, with clean and PGD "
                        "on the same K in the results (default 0: all)")
    g.add_argument("--eval-examples", type=int, default=0, help="test examples to evaluate (default 0 = all)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--overwrite", action="store_true", help="start again in an --out that holds a run")
    g.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also checkpoint every this many steps (default: at each epoch's end)")
    g.add_argument("--max-steps", type=int, metavar="N", help="stop after N training steps with a checkpoint "
                   "(--resume continues the same run)")
    g.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                   help="training precision: auto = bf16 autocast on CUDA and on CPUs with native bf16, fp32 "
                        "elsewhere; the test evaluation is fp32 whatever this says (default auto)")
    g.add_argument("--seed", type=int, default=0)
    add_runtime_args(g)
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _milestones_arg(text):
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--milestones takes comma-separated epoch numbers, got {text!r}.") from None


def main(argv=None) -> int:
    return cli.run(_main, build_parser().parse_args(argv))


def _main(args) -> int:
    run = finetune(args.model, args.dataset, mode=args.mode, out=args.out, epochs=args.epochs, lr=args.lr,
                   batch_size=args.batch_size, weight_decay=args.weight_decay, momentum=args.momentum,
                   milestones=_milestones_arg(args.milestones), eps=args.eps, alpha=args.alpha,
                   steps=args.steps, norm=args.norm, beta=args.beta, image_size=args.image_size,
                   in_chans=args.in_chans, val_fraction=args.val_fraction, val_examples=args.val_examples,
                   subset=args.subset, eval_examples=args.eval_examples, attacks=args.attacks,
                   autoattack=args.autoattack, autoattack_examples=args.autoattack_examples, seed=args.seed,
                   device=args.device, data_root=args.data_root, download=args.download, resume=args.resume,
                   overwrite=args.overwrite, checkpoint_every=args.checkpoint_every, max_steps=args.max_steps,
                   amp=args.amp, progress=not args.quiet)
    r = run.results
    fmt = lambda v: "–" if v is None else f"{v:.2f} %"  # noqa: E731
    print(f"{args.mode}: clean {fmt(r.get('clean_acc'))}, PGD {fmt(r.get('pgd_acc'))}, AutoAttack "
          f"{autoattack_text(r)} ({r.get('threat_model')} eps {r.get('eps_str')}, "
          f"{r.get('n_examples')} test images) -> {run.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
