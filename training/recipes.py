"""Named training settings: every zoo entry is produced by exactly one recipe.

`python -m training.pretrain --list-recipes` prints them. Any field can be overridden on the command line with
`--set field=value` (and the common ones have their own flags); the resolved settings are written to the run
folder's config.json.

Deliberate differences from the original RoCL code (github.com/Kim-Minseon/RoCL), each documented where it lives:
- `reg_pass="fused"` (default): the regulariser (1/lambda) NT-Xent(t(x)_adv, t'(x)) takes its embeddings from
  the 3N training batch instead of a separate train-mode pass over the 2N batch (the pair is already in it): one
  forward/backward pass fewer, BN statistics of the 3N batch, and in DDP its negatives come from every rank
  like the main term's (the loss then depends on the global batch only, not on the number of processes).
  `--set reg_pass=separate` is the original's exact form (local batch, its own pass).
- LARS adapts weights only: BN parameters and biases get plain SGD steps and no weight decay (SimCLR's
  convention; torchlars, which the original uses, adapts every tensor). `--set lars_exclude_bn_bias=false`
  restores the original.
- The attack's negatives are the local batch (`attack_negatives="local"`, the original); "global" gathers them
  from every rank, which makes a DDP run identical to a single process on the same global batch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from rocl_zoo.errors import ConfigError
from rocl_zoo.threat import parse_eps

KINDS = ("rocl", "simclr", "deacl", "dynacl", "at", "trades")


@dataclass
class Recipe:
    name: str
    kind: str                       # rocl | simclr | deacl (training.pretrain) | dynacl (training.dynacl) |
                                    # at | trades (training.supervised)
    dataset: str
    arch: str
    epochs: int
    batch_size: int                 # global batch (all processes together)
    lr: float
    weight_decay: float
    description: str = ""
    momentum: float = 0.9
    # contrastive pretraining
    optimizer: str = "lars"         # lars | sgd
    trust_coef: float = 0.001
    lars_exclude_bn_bias: bool = True
    warmup_epochs: float = 10.0     # linear warm-up from lr to lr * warmup_multiplier, then cosine to 0
    warmup_multiplier: float = 15.0
    temperature: float = 0.5
    lam: float = 256.0              # regulariser weight 1/lam; 0 turns it off
    detach_other_side: bool = True  # the original's z @ z.T.detach()
    reg_pass: str = "fused"         # fused | separate
    attack_negatives: str = "local"  # local | global
    proj_hidden: int = 2048
    proj_out: int = 128
    # A-InfoNCE (RoCL-IP): adversarial views as inferior positives (rocl_zoo.losses.inferior_positive_weights)
    inferior_positives: bool = False
    ip_degree: float = 0.2
    ip_adv_weight: float = 1.0
    # DeACL: the frozen clean SSL teacher (zoo name, hf-hub:ORG/NAME or folder) the student starts from, and k
    teacher: str = ""
    deacl_k: float = 2.0
    # DynACL: augmentation strength and adversarial weight change every `reload_every` epochs; momentum network EMA
    reload_every: int = 1
    adv_swap: float = 2 / 3
    ema: float = 0.99
    # DynACL++ (training.supervised): start from an encoder, train on k-means pseudo-labels of another's features
    start: str = ""
    pseudo_labels: str = ""
    pseudo_probe_epochs: int = 10
    pseudo_clusters: int = 0  # k-means's k; 0: the dataset's number of classes, as the paper does
    # the training attack (instance-wise for rocl, feature attack for deacl, PGD / TRADES for the supervised ones)
    eps: float = 8 / 255
    alpha: float = 0.007
    attack_steps: int = 7
    # supervised baselines
    lr_milestones: tuple = ()       # epochs where the LR is divided by 10
    trades_beta: float = 6.0
    # runtime
    channels_last: str = "auto"     # auto (= true: faster for every zoo architecture, CPU and CUDA) | true | false
    amp: str = "auto"               # auto (bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere) | bf16 | off
    subset: int = 0                 # train on a fixed random subset of this many images (0 = all)
    # held-out curves (training/heldout.py): images kept out of training, measured every eval_every epochs
    holdout: int = 0                # 0 = train on the whole split, no curve
    eval_every: int = 1             # epochs
    ship: str = "best"              # best (the epoch of best held-out robust accuracy, exported to best/) | last
    holdout_steps: int = 10         # PGD steps of the held-out attack
    probe_examples: int = 10000     # encoders: the linear probe's training images
    probe_epochs: int = 20          # encoders: the linear probe's epochs (on precomputed features)
    ckpt_every: int = 200           # steps
    log_every: int = 10             # steps
    notes: tuple = field(default_factory=tuple)

    @property
    def ships_best(self) -> bool:
        """Its best held-out epoch is exported (best/) and shipped, rather than what the run ends with."""
        return bool(self.holdout) and self.ship == "best"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def stamped(self) -> dict:
        """The settings a run's stamp (training.reproduce) depends on: all of them but the fields added since the
        zoo's runs were stamped, while they hold the value that leaves a run as it was before they existed."""
        neutral = ADDED_SINCE_STAMPED
        return {k: v for k, v in self.to_dict().items() if not (k in neutral and v == neutral[k])}


# Recipe fields added after the zoo's runs were stamped, each with the value at which it changes nothing: adding
# an option must not make every run stale (a value other than this one, its default changed included, does).
ADDED_SINCE_STAMPED = {"pseudo_clusters": 0}


def _r(**kw) -> Recipe:
    return Recipe(**kw)


# CIFAR-10, ResNet-18: the paper's settings. Batch 512 (256 per GPU x 2), 1000 epochs, LARS(SGD) lr 0.1
# warmed up to 1.5 over 10 epochs then cosine, wd 1e-6, tau 0.5, lambda 256, eps 8/255, step 0.007, 7 steps.
_CIFAR = dict(dataset="cifar10", arch="resnet18_rocl", epochs=1000, batch_size=512, lr=0.1, weight_decay=1e-6,
              ckpt_every=500, log_every=20)

# Fashion-MNIST, cnn4_rocl (256-d features, projector 256-2048-128). The shipped 3-epoch run (fp32, AMD EPYC,
# 2 torch threads; results/cnn4_rocl.fmnist/training/metrics.jsonl) took about 6.1 s a step, 42 img/s, ~24 min
# an epoch. With the training core (bf16 autocast on a CPU with native bf16, BN-folded attack network; Intel Xeon
# with AMX, 2 threads) a whole epoch averaged 155 img/s, 6.5 min (results/precision-ab/rocl-bf16-seed0-training/),
# and a 17-step benchmark 98-131 img/s (benchmarks/results/bench_train.txt): the machine's speed swung.
# A RoCL image costs ~24 forward-equivalents (1 target + 7 x 2 attack + 3 views x 3 train), SimCLR's 6. Training attack:
# eps 0.1, Fashion-MNIST's conventional l-inf budget (the zoo evaluates at 0.1), step 0.025 (the paper's
# step/eps ratio of about 1/4), 7 steps.
# Warm-up 0.1 epoch (a short run: the paper's 10 of 1000 epochs would be 0.03 here), then cosine.
_FMNIST = dict(dataset="fashion_mnist", arch="cnn4_rocl", epochs=3, batch_size=256, lr=0.1, weight_decay=1e-6,
               warmup_epochs=0.1, eps=0.1, alpha=0.025, attack_steps=7, ckpt_every=100, log_every=10)

# The converged recipes (issue #19) keep a fixed random 5,000 of the training split out of training, measure
# clean and PGD-10 accuracy on them every `eval_every` epochs (training/heldout.py) and ship the epoch with the
# best held-out robust accuracy (`best/`): the standard guard against robust overfitting (Rice et al., ICML
# 2020). Their runs are their curves, committed in results/curves/<recipe>/.
_HELD = dict(holdout=5000)

RECIPES: dict[str, Recipe] = {r.name: r for r in [
    _r(name="cifar10_resnet18_rocl", kind="rocl", description="RoCL, CIFAR-10, ResNet-18: the paper's settings",
       **_CIFAR),
    _r(name="cifar10_resnet18_simclr", kind="simclr", description="SimCLR baseline, CIFAR-10, ResNet-18",
       **_CIFAR),
    _r(name="cifar10_resnet50_rocl", kind="rocl", description="RoCL, CIFAR-10, ResNet-50",
       **{**_CIFAR, "arch": "resnet50_rocl"}),
    _r(name="cifar10_wrn34_10_rocl", kind="rocl", description="RoCL, CIFAR-10, WideResNet-34-10",
       **{**_CIFAR, "arch": "wrn34_10_rocl"}),
    # RoCL: 30 epochs of warm-up and cosine, a probe every 2. Its held-out curve (probe clean / PGD-10; Intel Xeon,
    # 1 bf16 thread, 7-10 min an epoch; `python -m training.heldout results/curves/fmnist_rocl`): epoch 2
    # 82.2/50.7, 6 83.9/55.1, 10 84.4/57.1, 18 84.8/58.4, 24 84.6/58.8, 30 84.7/58.9 (the best), 288 CPU-minutes.
    # Past epoch 18 it gains half a point in 110 CPU-minutes: 30 epochs is where it stops improving.
    _r(name="fmnist_rocl", kind="rocl", description="RoCL, Fashion-MNIST, cnn4_rocl",
       **{**_FMNIST, **_HELD, "epochs": 30, "eval_every": 2}),
    # SimCLR: the same epochs, batch, augmentations and schedule as RoCL, as in the paper (both 1000 epochs on
    # CIFAR-10), at a quarter of RoCL's compute. It is not robust, so held-out robust accuracy cannot pick its epoch
    # (0 from epoch 8 on): it ships its last. Its curve (probe clean / PGD-10): epoch 2 81.9/0.8, 10 84.7/0.0,
    # 16 85.6, 22 85.8, 30 85.6 (a plateau from epoch 16); 95 CPU-minutes (Intel Xeon, 1 bf16 thread).
    _r(name="fmnist_simclr", kind="simclr", description="SimCLR baseline, Fashion-MNIST, cnn4_rocl",
       **{**_FMNIST, **_HELD, "epochs": 30, "eval_every": 2, "ship": "last"}),
    _r(name="fmnist_rocl_wide", kind="rocl", description="RoCL, Fashion-MNIST, cnn4w_rocl (512-d features)",
       **{**_FMNIST, "arch": "cnn4w_rocl"}),  # ~4x the cost: GPU or a long CPU run
    # The flagship (issue #19): fmnist_rocl's settings with the paper's CIFAR ResNet-18, its best held-out epoch
    # shipped. On a CPU an epoch should take ~50 min (2 threads, bf16; step rates measured on an AMD EPYC Zen 4);
    # it ran on one NVIDIA H200 (`bash scripts/device.sh`, bf16, 2,100 img/s, 25 s an epoch, 4 GPU-minutes in all).
    # Its held-out curve (probe clean / PGD-10): epoch 2 82.6/55.3, 4 83.6/58.6, 6 84.7/60.3, 8 84.7/59.6,
    # 10 85.1/60.4 (the best, and the last: still rising, so a longer GPU run should gain). cnn4_rocl's at epoch 10:
    # 84.4/57.1. Its checkpoint (with LARS state) is ~90 MB: not committed.
    _r(name="fmnist_resnet18_rocl", kind="rocl", description="RoCL, Fashion-MNIST, ResNet-18 (the flagship)",
       **{**_FMNIST, **_HELD, "arch": "resnet18_rocl", "epochs": 10, "eval_every": 2, "ckpt_every": 20}),
    # RoCL-IP (A-InfoNCE, Yu et al., ECCV 2022): RoCL with the adversarial view as an inferior positive, the
    # authors' degree 0.2 and weight 1; the same cost as RoCL (~290 CPU-minutes), so fmnist_rocl's 30 epochs and
    # probes: the two curves compare epoch for epoch. It ran on one NVIDIA H200 (`bash scripts/device.sh`, bf16,
    # 5 GPU-minutes of training, 7 with the probes). Its curve (probe clean / PGD-10): epoch 2 82.0/52.0,
    # 6 83.0/55.1, 10 83.4/57.9, 18 83.8/59.3, 26 83.9/59.9 (the best), 30 83.9/59.9: a point more robust than
    # RoCL's best (84.7/58.9) and 0.8 less clean: one standard error of a difference on 5,000 held-out images.
    _r(name="fmnist_rocl_ip", kind="rocl", description="RoCL with A-InfoNCE's inferior positives, Fashion-MNIST",
       inferior_positives=True, **{**_FMNIST, **_HELD, "epochs": 30, "eval_every": 2}),
    # DeACL (Zhang et al., ECCV 2022) from the zoo's SimCLR encoder: PGD-5 feature attack at eps 0.1 with the
    # paper's step/eps ratio (2/255 at 8/255), k = 2, weak augmentation (crop and flip). A DeACL image costs about
    # 1 teacher + 5 x 2 attack + 2 x 3 train = 17 forward-equivalents, RoCL's 24. The paper runs a tenth of RoCL's
    # epochs (100 of 1000); RoCL's curve here stops improving at 30, so 10 epochs with a held-out probe every 2
    # pick DeACL's, from the converged SimCLR teacher. Its curve (probe clean / PGD-10; Intel Xeon, 1 bf16 thread):
    # epoch 2 84.5/42.7, 4 84.9/44.9, 6 85.0/46.0, 10 85.0/46.2 (the best), 71 CPU-minutes: flat from epoch 6, and
    # 12 points under RoCL's 58.9 (RoCL had 56.3 after the same 71 CPU-minutes). The authors' script differs in its
    # optimiser: SGD, lr 0.5, weight decay 5e-4 (here LARS, wd 1e-6): fmnist_deacl_sgd, below, tries it.
    _r(name="fmnist_deacl", kind="deacl", description="DeACL from the SimCLR teacher, Fashion-MNIST, cnn4_rocl",
       teacher="cnn4_rocl.fmnist_simclr", **{**_FMNIST, **_HELD, "attack_steps": 5, "epochs": 10, "eval_every": 2}),
    # DeACL with its authors' optimiser instead of LARS (their CIFAR script: SGD, momentum 0.9, a linear warm-up
    # over a tenth of the epochs to lr 0.5, then cosine; weight decay 5e-4; batch 256): does the optimiser explain
    # fmnist_deacl's 12-point gap to RoCL? Here the warm-up runs from 0.005 to 0.5 in the first epoch. Run from the
    # same teacher as fmnist_deacl's curve (`python -m training.pretrain --recipe fmnist_deacl_sgd --out
    # results/curves/fmnist_deacl_sgd --set teacher=results/curves/fmnist_simclr/encoder`). Its curve (probe clean /
    # PGD-10; AMD EPYC, 1 bf16 thread beside another job): epoch 2 78.8/51.6, 4 76.3/55.4, 6 75.0/57.6,
    # 8 74.9/58.6, 10 74.7/58.9 (the best, still rising by 0.3), 95 CPU-minutes. The optimiser closes the robust gap
    # (RoCL's best is 58.9 too) and trades 10 points of clean accuracy for it (LARS: 85.0/46.2; RoCL 84.7/58.9).
    # The zoo's cnn4_rocl.fmnist_deacl is this one: a robust encoder is ranked by its robust accuracy, and it is the
    # authors' recipe; fmnist_deacl stays as the record of the LARS run.
    _r(name="fmnist_deacl_sgd", kind="deacl", description="DeACL with SGD as its authors train it, Fashion-MNIST",
       teacher="cnn4_rocl.fmnist_simclr", **{**_FMNIST, **_HELD, "attack_steps": 5, "epochs": 10, "eval_every": 2,
                                              "optimizer": "sgd", "lr": 0.005, "warmup_multiplier": 100.0,
                                              "warmup_epochs": 1.0, "weight_decay": 5e-4}),
    # DynACL (Luo et al., ICLR 2023) with RoCL's Fashion-MNIST schedule: PGD-5 pair attack at eps 0.1, step 0.025
    # (2/255 at 8/255), strength and weight moved every epoch (the paper: every 50 of 1000). About 2 x (1 + 5 x 3)
    # attack + 4 x 3 train = 44 forward-equivalents an image (RoCL: 24): two networks see every batch, so an epoch
    # should cost ~1.8 of RoCL's. 20 epochs (RoCL's curve is within half a point of its best from epoch 18) with a
    # probe every 2, ~6 CPU-hours; the annealing spans the run's epochs, so its length is part of the method.
    # The run (AMD EPYC, 1 bf16 thread beside another job, 17-27 min an epoch, 400 CPU-minutes in all), probe clean
    # / PGD-10 on the held-out 5,000: epoch 2 80.4/52.7, 4 80.9/58.1, 6 81.3/61.1, 8 81.8/63.0, 10 81.8/64.1, 12
    # 82.2/64.6, 14 82.4/65.2, 16 82.3/65.7, 18 82.3/65.9 (the best, 364 CPU-minutes), 20 82.2/65.7: flat from
    # epoch 14, so 20 epochs suffice. RoCL at 12: 84.5/57.2; its best, at 30, 84.7/58.9: DynACL is 7 points more
    # robust at 2.4 points less clean accuracy.
    _r(name="fmnist_dynacl", kind="dynacl", description="DynACL, Fashion-MNIST, cnn4_rocl",
       **{**_FMNIST, **_HELD, "attack_steps": 5, "epochs": 20, "eval_every": 2}),
    # Supervised baselines, same data and architectures: PGD-AT (Madry) and TRADES (beta 6), 10-step attacks,
    # ~23-27 forward-equivalents per image, like RoCL. 20 epochs at LR 0.1, divided by 10 at epochs 10 and 15
    # (Rice et al.'s piecewise schedule, scaled), a held-out measurement every epoch. fmnist_at's curve (held-out
    # clean / PGD-10, results/curves/fmnist_at/): 76.5/65.0 at epoch 1, 83.6/73.6 at 10 (LR 0.1 plateaus near 72-73),
    # 85.8/76.8 at 11 and 86.5/77.7 at 16 after the decays, 86.7/78.1 at 20 (the best: no robust overfitting in 20
    # epochs). 153 CPU-minutes (Intel Xeon, 1 bf16 thread, 6.5-9 min an epoch).
    _r(name="fmnist_at", kind="at", dataset="fashion_mnist", arch="cnn4_rocl", epochs=20, batch_size=128, lr=0.1,
       weight_decay=5e-4, optimizer="sgd", lr_milestones=(10, 15), eps=0.1, alpha=0.025, attack_steps=10,
       description="PGD-10 adversarial training, Fashion-MNIST, cnn4_rocl", ckpt_every=200, **_HELD),
    # fmnist_trades, the same schedule. Its first run (TRADES's two forward passes, clean and adversarial, each
    # normalised by its own BN batch; results/curves/fmnist_trades_two_pass_bn/, 187 CPU-minutes) peaked at epoch 8
    # (held-out 81.7/70.7), then after the decays clean rose to 85.7 while PGD-10 fell and swung (59.2-67.2, 4
    # points between neighbouring epochs at LR 0.001). The cause was BN, not robust overfitting: on 500 test images
    # its last epoch had 62.2 % PGD-20 and 49.4 % APGD-CE as trained, 74.0 / 73.2 % with BN statistics recomputed
    # on PGD-10 images (scripts/bn_statistics.py). rocl_zoo.steps.trades_step now normalises both as one batch;
    # this run is the second (AMD EPYC, 1 bf16 thread beside another job, 12-20 min an epoch, 304 CPU-minutes):
    # 76.6/63.5 at epoch 1, 82.3/71.7 at 5, 81.4/70.9 at 10 (LR 0.1 plateaus), 84.1/74.1 at 11 after the first decay,
    # 84.9/75.5 at 14, 85.5/75.9 at 17 and 85.7/75.9 at 20, the best (75.4-75.9 after the second decay: converged,
    # no robust overfitting). It ships its last epoch; 2 points under fmnist_at's held-out PGD-10 (78.1).
    _r(name="fmnist_trades", kind="trades", dataset="fashion_mnist", arch="cnn4_rocl", epochs=20, batch_size=128,
       lr=0.1, weight_decay=5e-4, optimizer="sgd", lr_milestones=(10, 15), eps=0.1, alpha=0.025, attack_steps=10,
       description="TRADES (beta 6), Fashion-MNIST, cnn4_rocl", ckpt_every=200, **_HELD),
    # DynACL++ on Fashion-MNIST: TRADES (beta 6, PGD-10) on k-means pseudo-labels of the DynACL encoder's
    # clean-BN features, from its adversarial-BN encoder (the best held-out epoch's pair) with a 10-epoch probe on
    # them as the head. No true label trains it; its held-out curve reads the encoder out with the probe on true
    # labels, as the pretraining curves do. The paper fine-tunes 25 epochs on CIFAR-10; here 10 (fmnist_at's
    # piecewise schedule scaled: decays at 5 and 7.5), a probe every 2. Curve (held-out clean/PGD-10, AMD EPYC,
    # 1 bf16 thread beside another job; pseudo-labels 55.1 % cluster accuracy): 2 76.1/61.5, 4 76.5/61.5,
    # 6 76.8/63.5, 8 76.9/64.0, 10 77.1/64.1 (best, shipped; 152 CPU-minutes): below its start, DynACL's 82.3/65.9,
    # by 5.2 clean and 1.8 robust points. The noisy pseudo-labels are the first suspect: k-means with k = 10 matches
    # the classes for 56-59 % of the training images from DynACL's features, its clean-BN pair's or the converged
    # SimCLR's alike (scripts/pseudo_labels.py); 30 clusters are 68-71 % pure. At epoch 2 (results/curves/
    # fmnist_dynacl_pp_k30/ and _b512/, stopped there), `--set pseudo_clusters=30` reaches 77.5/61.9 and the authors'
    # batch 512 with weight decay 1e-4 (`--set batch_size=512 --set weight_decay=0.0001`) 76.2/56.5.
    # Its SLF head on 1,000 test images: 81.3 clean, 63.6 PGD-20, 61.6 AutoAttack (DynACL's: 83.3 / 64.0 / 62.4).
    _r(name="fmnist_dynacl_pp", kind="trades", dataset="fashion_mnist", arch="cnn4_rocl", epochs=10, batch_size=128,
       lr=0.1, weight_decay=5e-4, optimizer="sgd", lr_milestones=(5.0, 7.5), eps=0.1, alpha=0.025, attack_steps=10,
       start="results/curves/fmnist_dynacl/best", pseudo_labels="results/curves/fmnist_dynacl/best_clean",
       description="DynACL++: TRADES on k-means pseudo-labels from the DynACL encoder, Fashion-MNIST", ckpt_every=200,
       eval_every=2, **_HELD),
    _r(name="cifar10_resnet18_at", kind="at", dataset="cifar10", arch="resnet18_rocl", epochs=100, batch_size=128,
       lr=0.1, weight_decay=5e-4, optimizer="sgd", lr_milestones=(75, 90), eps=8 / 255, alpha=2 / 255,
       attack_steps=10, description="PGD-10 adversarial training (Madry), CIFAR-10, ResNet-18", ckpt_every=500),
    _r(name="cifar10_resnet18_trades", kind="trades", dataset="cifar10", arch="resnet18_rocl", epochs=100,
       batch_size=128, lr=0.1, weight_decay=2e-4, optimizer="sgd", lr_milestones=(75, 90), eps=8 / 255,
       alpha=2 / 255, attack_steps=10, description="TRADES (beta 6), CIFAR-10, ResNet-18", ckpt_every=500),
]}


def get_recipe(name: str, kinds=KINDS) -> Recipe:
    """A copy of the named recipe; ConfigError naming the close matches for unknown names."""
    if name not in RECIPES or RECIPES[name].kind not in kinds:
        import difflib

        names = [n for n, r in RECIPES.items() if r.kind in kinds]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        other = "" if name not in RECIPES else f" ({name} is a {RECIPES[name].kind} recipe: use the other entry point)"
        raise ConfigError(f"unknown recipe {name!r}{other}.{hint} Known: {', '.join(sorted(names))}.")
    return dataclasses.replace(RECIPES[name])


def _parse_value(text: str, current):
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return parse_eps(text) if "/" in text else float(text)  # "8/255"
    if isinstance(current, tuple):
        return tuple(float(v) if "." in v else int(v) for v in text.split(",") if v)
    return text


def apply_overrides(recipe: Recipe, pairs) -> Recipe:
    """Apply `field=value` strings (from --set)."""
    names = {f.name for f in dataclasses.fields(Recipe)}
    for pair in pairs or ():
        if "=" not in pair:
            raise ConfigError(f"--set takes field=value, got {pair!r}.")
        key, text = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in names or key == "name":
            raise ConfigError(f"--set: unknown recipe field {key!r}. Fields: {', '.join(sorted(names - {'name'}))}.")
        try:
            value = _parse_value(text.strip(), getattr(recipe, key))
        except (ValueError, SyntaxError, NameError, TypeError, ConfigError):
            raise ConfigError(f"--set {key}={text}: cannot parse the value as {type(getattr(recipe, key)).__name__}.")
        setattr(recipe, key, value)
    validate(recipe)
    return recipe


def validate(r: Recipe) -> Recipe:
    checks = [
        (r.kind in KINDS, f"kind must be one of {KINDS}"),
        (r.epochs >= 1 and r.batch_size >= 2, "epochs >= 1 and batch_size >= 2"),
        (r.reg_pass in ("fused", "separate"), "reg_pass must be fused or separate"),
        (r.attack_negatives in ("local", "global"), "attack_negatives must be local or global"),
        (r.optimizer in ("lars", "sgd"), "optimizer must be lars or sgd"),
        (r.channels_last in ("auto", "true", "false"), "channels_last must be auto, true or false"),
        (r.amp in ("auto", "bf16", "off"), "amp must be auto, bf16 or off"),
        (r.ship in ("best", "last"), "ship must be best or last"),
        (0 <= r.eps <= 1 and r.alpha >= 0 and r.attack_steps >= 0, "0 <= eps <= 1, alpha >= 0, attack_steps >= 0"),
        (r.temperature > 0 and r.lam >= 0, "temperature > 0 and lam >= 0"),
        (r.kind != "deacl" or bool(r.teacher), "deacl needs a teacher (--set teacher=ZOO_NAME|FOLDER)"),
        (not r.inferior_positives or (0 <= r.ip_degree <= 1 and r.ip_adv_weight >= 0 and r.kind == "rocl"),
         "inferior_positives: a rocl kind, 0 <= ip_degree <= 1, ip_adv_weight >= 0"),
        (r.reload_every >= 1 and 0 <= r.ema < 1 and r.adv_swap >= 0, "reload_every >= 1, 0 <= ema < 1, adv_swap >= 0"),
        (not r.pseudo_labels or r.kind in ("at", "trades"), "pseudo_labels train a supervised kind (at or trades)"),
        (r.pseudo_clusters == 0 or (r.pseudo_clusters >= 2 and bool(r.pseudo_labels)),
         "pseudo_clusters is 0 (one per class) or at least 2, with pseudo_labels"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(f"recipe {r.name}: {msg}.")
    return r


def describe(kinds=KINDS) -> str:
    lines = []
    for r in RECIPES.values():
        if r.kind in kinds:
            lines.append(f"{r.name:28s} {r.kind:7s} {r.dataset:14s} {r.arch:14s} {r.epochs:5d} ep  "
                         f"batch {r.batch_size:4d}  {r.description}")
    return "\n".join(lines)
