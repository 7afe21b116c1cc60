"""The experiment matrix: every zoo entry, what it starts from, how it is trained and how it is measured.

    python -m training.reproduce --dry-run        # each item's state, its command and its CPU cost

This file is the one place the zoo's experiments are written down: `training.reproduce` runs them,
`scripts/claims.py` and the README generator read the entries and the protocol from here. `items(scale)` turns
it into the work list: one `Item` per command, each with its outputs and the items it needs.

The protocol every shipped classifier is measured with (l-inf 0.1 on Fashion-MNIST's test split):
- clean, PGD-20 and AutoAttack's two untargeted gradient attacks (APGD-CE + APGD-DLR, 100 iterations each) on
  all 10,000 test images;
- standard AutoAttack on a fixed 1,000 (the same images for every model: `--n-examples 1000 --seed 0`), beside
  FGSM, PGD-20 and CW, with the gradient-masking checks on the same 1,000;
- PGD-20 at l-inf 8/255 and at l2 1.5 (a threat none of them trained for) on all 10,000;
- black-box PGD-20 transferred between models (TRANSFERS) on all 10,000;
- common corruptions (rocl_zoo.corruptions: MNIST-C's 15 types x 5 severities) on all 10,000, the shipped
  classifier only: RobustBench's third threat model, no attack.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rocl_zoo import corruptions as C
from rocl_zoo.results import relpath, threat_name
from rocl_zoo.threat import CORRUPTIONS as CORRUPTIONS_THREAT, parse_eps
from training.recipes import get_recipe
from training.release import CHECK_EXAMPLES

DATASET = "fashion_mnist"
TRAIN_IMAGES = 60000  # its training split


@dataclass(frozen=True)
class Eval:
    """One `rocl_zoo.evaluate` run: an attack suite on the first n of the fixed test permutation (seed 0)."""
    suite: str
    attacks: str
    n: int
    eps: str = "0.1"
    norm: str = "linf"
    sanity: bool = False
    batch: int = 256             # images per attack batch: an interrupted run resumes at a finished batch

    @property
    def threat(self) -> str:
        return threat_name(self.norm, parse_eps(self.eps))


PROTOCOL = (
    Eval("apgd", "clean,pgd20,apgd", 10000),
    Eval("autoattack", "clean,fgsm,pgd20,cw,autoattack", 1000, sanity=True, batch=100),  # ~20 min a batch, 1 core
    Eval("pgd", "clean,pgd20", 10000, eps="8/255"),
    Eval("pgd", "clean,pgd20-l2", 10000, eps="1.5", norm="l2"),
)
TRANSFER = Eval("transfer", "clean,pgd20", 10000)
FLAGSHIP_PROTOCOL = (
    Eval("apgd", "clean,pgd20,apgd", 1000),
    Eval("autoattack", "clean,fgsm,pgd20,cw,autoattack", 100, sanity=True, batch=50),
    Eval("pgd", "clean,pgd20", 1000, eps="8/255"),
    Eval("pgd", "clean,pgd20-l2", 1000, eps="1.5", norm="l2"),
)
CORRUPTIONS_N = 10000  # every test image under every corruption and severity (2 CPU-s per 1,000 images each)


@dataclass(frozen=True)
class Entry:
    """A zoo entry and how it is made."""
    name: str                   # arch.tag: a zoo entry (the model files' TAGS)
    method: str                 # pretrain | supervised | finetune
    recipe: str | None = None   # training/recipes.py (pretrain, supervised)
    start: str | None = None    # finetune: the entry it starts from; pretrain: the one it learns from (DeACL's
                                # teacher, DynACL++'s encoder and pseudo-labels)
    heads: tuple = ()           # pretrain: the linear protocols read out (linear = SLF, robust-linear = ALF)
    evals: tuple = PROTOCOL     # what each of its classifiers is measured with
    corruptions_n: int = CORRUPTIONS_N

    @property
    def protocols(self) -> tuple:
        """The classifiers it is measured as; the first is the one shipped."""
        return self.heads or ("none",)


ENTRIES = (
    Entry("cnn4_rocl.fmnist", "pretrain", "fmnist_rocl", heads=("linear", "robust-linear")),
    Entry("cnn4_rocl.fmnist_simclr", "pretrain", "fmnist_simclr", heads=("linear", "robust-linear")),
    Entry("cnn4_rocl.fmnist_rocl_ip", "pretrain", "fmnist_rocl_ip", heads=("linear", "robust-linear")),
    Entry("cnn4_rocl.fmnist_deacl", "pretrain", "fmnist_deacl_sgd", start="cnn4_rocl.fmnist_simclr",
          heads=("linear", "robust-linear")),
    Entry("cnn4_rocl.fmnist_dynacl", "pretrain", "fmnist_dynacl", heads=("linear", "robust-linear")),
    Entry("cnn4_rocl.fmnist_dynacl_pp", "pretrain", "fmnist_dynacl_pp", start="cnn4_rocl.fmnist_dynacl",
          heads=("linear", "robust-linear")),
    Entry("cnn4_rocl.fmnist_at", "supervised", "fmnist_at"),
    Entry("cnn4_rocl.fmnist_trades", "supervised", "fmnist_trades"),
    Entry("cnn4_rocl.fmnist_rocl_at", "finetune", start="cnn4_rocl.fmnist"),
    Entry("cnn4_rocl.fmnist_simclr_at", "finetune", start="cnn4_rocl.fmnist_simclr"),
    # AFF of the best label-free encoder measured (DynACL: 64.7 % AutoAttack ALF): labels again, so not a
    # label-free entry, but the read-out that shows how far its features carry (RoCL+AT: 75.8 against RoCL's 61.9)
    Entry("cnn4_rocl.fmnist_dynacl_at", "finetune", start="cnn4_rocl.fmnist_dynacl"),
    # The flagship: RoCL with the paper's CIFAR ResNet-18. An attacked image costs it 7-25x what it costs cnn4_rocl
    # on 2 CPU cores (one attack step at batch 64: 115 against 843 img/s in fp32; PGD-10 at batch 128: 7 against
    # 170), so its protocol is smaller: APGD on 1,000, AutoAttack on 100, the rest on 1,000.
    Entry("resnet18_rocl.fmnist", "pretrain", "fmnist_resnet18_rocl", heads=("linear", "robust-linear"),
          evals=FLAGSHIP_PROTOCOL, corruptions_n=1000),
)
BY_NAME = {e.name: e for e in ENTRIES}


TRANSFERS = (  # (target, source): black-box PGD-20 made on the source classifier
    ("cnn4_rocl.fmnist", "cnn4_rocl.fmnist_simclr"), ("cnn4_rocl.fmnist_at", "cnn4_rocl.fmnist_simclr"),
    ("cnn4_rocl.fmnist", "cnn4_rocl.fmnist_at"), ("cnn4_rocl.fmnist_at", "cnn4_rocl.fmnist"),
)
# rocl_zoo.finetune on another dataset: (encoder, mode); 8x8 digits resized to 28x28, 5 epochs of PGD-5
DIGITS = (("cnn4_rocl.fmnist", "at"), ("cnn4_rocl.fmnist_at", "at"))
DIGITS_N = 360  # the digits test split

# A recipe with a held-out curve (`holdout` > 0: the zoo's converged recipes, issue #19) runs in
# results/curves/<recipe>/, so its records (and, between sessions, its small checkpoint) are committed; what it
# ships is `best/`, the epoch with the best held-out robust accuracy.
CURVES = "curves"

# Budgets of the steps that are not a recipe (the recipes' own are in training/recipes.py)
HEAD_ARGS = {"linear": ["--epochs", "150"],  # SLF: 150 epochs on frozen features (the paper's protocol)
             # ALF: PGD-10 (step 0.0223) through the encoder makes a step ~25x a standard one: 5 epochs on 10,000
             "robust-linear": ["--epochs", "5", "--train-examples", "10000"]}


def _finetune_at() -> list:
    """RoCL+AT's and SimCLR+AT's fine-tuning: fmnist_at's schedule and attack, ending with the epoch of the best
    validation robust accuracy (on 1,000 of the 6,000 validation images) as fmnist_at ends with its best.

    RoCL+AT's curve from the converged cnn4_rocl.fmnist (runs/fmnist_rocl_at/metrics.jsonl, validation clean /
    PGD-10): 84.0/73.3 at epoch 1, 84.5/77.5 at 5, 84.5-87.2 / 76.7-77.6 at LR 0.1 (epochs 3-10: a plateau), 87.7/79.5
    at 11 after the first decay, 87.8/80.9 at 15, 88.1/81.3 at 18 (the best), 88.5/80.9 at 20 (80.1-81.3 after the
    second decay: converged, no robust overfitting). 343 CPU-minutes (AMD EPYC, 1 bf16 thread, mostly beside another
    job: 15-22 min an epoch, 8 alone). SimCLR+AT's from the converged cnn4_rocl.fmnist_simclr
    (runs/fmnist_simclr_at/metrics.jsonl): 81.3/70.3 at epoch 1, 84.4/76.1 at 5, 83.8-85.8 / 74.0-74.9 at LR 0.1
    (epochs 6-10), 87.0/79.2 at 11, 87.5/80.4 at 15 (the best), 88.1/80.1 at 20 (79.0-80.4 after the first decay: no
    robust overfitting), about 330 CPU-minutes (the same CPU, 1 bf16 thread beside another job: mostly 15-17 min an
    epoch): it starts 3 points under RoCL+AT's and ends 0.9 under it."""
    r = get_recipe("fmnist_at")
    return ["--mode", "at", "--epochs", str(r.epochs), "--milestones", ",".join(map(str, r.lr_milestones)),
            "--batch-size", str(r.batch_size), "--weight-decay", str(r.weight_decay), "--eps", str(r.eps),
            "--alpha", str(r.alpha), "--steps", str(r.attack_steps), "--keep-best", "--val-examples", "1000"]


FINETUNE_AT = _finetune_at()
FINETUNE_PROTOCOL = "finetune-at"  # what rocl_zoo.finetune --mode at names its results' protocol
# the zoo entry each fine-tuning ships as, for rocl_zoo.results.of_shipped_weights: (encoder, protocol) -> entry
FINETUNED = {(e.start, FINETUNE_PROTOCOL): e.name for e in ENTRIES if e.method == "finetune"}
FINETUNE_N, FINETUNE_AA_N = 1000, 100
DIGITS_ARGS = ["--epochs", "5", "--steps", "5", "--alpha", "0.05", "--eps", "0.1"]


@dataclass(frozen=True)
class Scale:
    """How big each step is: `full` is the zoo; `toy` runs every stage for a step or two on a few images."""
    name: str
    n: int | None = None         # every evaluation on this many images (None: the matrix's)
    train: tuple = ()            # appended to training commands
    head: dict | None = None     # replaces HEAD_ARGS
    finetune: tuple = ()         # appended to rocl_zoo.finetune commands
    holdout: tuple = ()          # appended to the commands of recipes with a held-out curve

    def images(self, n: int) -> int:
        return min(n, self.n) if self.n else n


SCALES = {
    "full": Scale("full"),
    "toy": Scale("toy", n=12, train=("--epochs", "1", "--subset", "64", "--batch-size", "32"),
                 head={"linear": ["--epochs", "1", "--train-examples", "64"],
                       "robust-linear": ["--epochs", "1", "--train-examples", "32", "--train-steps", "2"]},
                 finetune=("--epochs", "1", "--subset", "64", "--batch-size", "32", "--steps", "2"),
                 holdout=("--set", "holdout=16", "--set", "probe_examples=16", "--set", "probe_epochs=1")),
}


@dataclass
class Item:
    """One command of the matrix. `outputs` exist when it is done; `partial` when it was interrupted."""
    name: str
    argv: list                          # python -m <module> ...
    outputs: list                       # paths
    needs: list = field(default_factory=list)      # item names
    inputs: list = field(default_factory=list)     # weights files whose content the outputs depend on
    spec: dict = field(default_factory=dict)       # what else the outputs depend on (settings, not paths)
    partial: list = field(default_factory=list)    # files an interrupted run leaves
    copy: tuple | None = None           # (from, to): a file the command writes elsewhere, copied into results/
    kind: str = ""                      # train | head | finetune | eval | release
    cost: dict = field(default_factory=dict)       # what the cost estimate needs (see training.reproduce)


@dataclass(frozen=True)
class Paths:
    results: Path
    runs: Path
    weights: Path


def _py(module: str, *args) -> list:
    return ["-m", module, *map(str, args)]


def run_folder(recipe: str, paths: Paths) -> Path:
    """Where a recipe's run lives: results/curves/ for one with a held-out curve, runs/ for the others."""
    return (paths.results / CURVES if get_recipe(recipe).holdout else paths.runs) / recipe


def product(recipe: str, paths: Paths) -> Path:
    """The folder of what a recipe's run makes for the zoo (a classifier, or an encoder the heads read out): the
    best held-out epoch where the recipe has a curve and ships it, else what its trainer exports at the end."""
    return run_folder(recipe, paths) / ("best" if get_recipe(recipe).ships_best else trainer(recipe)[1])


def classifier(entry: Entry, protocol: str, paths: Paths) -> Path:
    """The run folder that holds the entry's classifier for `protocol` (shipped or not)."""
    if entry.method == "pretrain":
        return paths.runs / entry.recipe / protocol
    if entry.method == "supervised":
        return product(entry.recipe, paths)
    return paths.runs / entry.name.split(".", 1)[1] / "classifier"


def make_item(entry: Entry, protocol: str) -> str:
    """The name of the item that makes the entry's classifier for `protocol`."""
    if entry.method == "pretrain":
        return f"head/{entry.name}/{protocol}"
    if entry.method == "supervised":
        return f"train/{entry.recipe}"
    return f"finetune/{entry.name}"


def trainer(recipe: str) -> tuple[str, str]:
    """(the module that trains a recipe, the run's folder its model is exported to)."""
    r = get_recipe(recipe)
    if r.kind == "dynacl":
        return "training.dynacl", "encoder"
    if r.kind in ("rocl", "simclr", "deacl"):
        return "training.pretrain", "encoder"
    return "training.supervised", "encoder" if r.pseudo_labels else "model"  # pseudo-labels: an encoder is made


def _train(entry: Entry, paths: Paths, scale: Scale) -> Item:
    run = run_folder(entry.recipe, paths)
    module, folder = trainer(entry.recipe)
    r = get_recipe(entry.recipe)
    recipe = r.to_dict()
    sets, needs, inputs = [], [], []
    if entry.start:  # what it learns from: its start entry's run (a shipped encoder stands in for a missing one)
        start = BY_NAME[entry.start].recipe
        made = product(start, paths)  # DynACL++'s pseudo-labels: the clean-BN twin of the encoder it starts from
        froms = {"teacher": made} if recipe["kind"] == "deacl" else \
            {"start": made, "pseudo_labels": made.with_name(f"{made.name}_clean")}
        sets = [a for k, v in froms.items() for a in ("--set", f"{k}={v}")]
        needs, inputs = [f"train/{BY_NAME[entry.start].recipe}"], [v / "model.safetensors" for v in froms.values()]
    held = scale.holdout if recipe["holdout"] else ()
    outputs = [run / folder / "model.safetensors"] + ([run / "best" / "model.safetensors"] if r.ships_best else [])
    return Item(f"train/{entry.recipe}",
                _py(module, "--recipe", entry.recipe, *sets, "--out", run, "--quiet", *scale.train, *held),
                outputs, needs=needs, inputs=inputs,
                spec={"recipe": r.stamped(), "scale": list(scale.train)}, partial=[run / "checkpoint.pt"], kind="train",
                cost={"recipe": entry.recipe, "epochs": recipe["epochs"], "name": entry.name})


def _head(entry: Entry, protocol: str, paths: Paths, scale: Scale) -> Item:
    run, encoder = paths.runs / entry.recipe, product(entry.recipe, paths)
    args = (scale.head or HEAD_ARGS)[protocol]
    out = classifier(entry, protocol, paths)
    return Item(f"head/{entry.name}/{protocol}",
                _py("rocl_zoo.evaluate", encoder, "--name", entry.name, "--dataset", DATASET, "--protocol",
                    protocol, *args, "--attacks", "clean", "--n-examples", scale.images(10000), "--quiet",
                    "--save-classifier", out, "--out", run / f"{protocol}.json"),
                [out / "model.safetensors", run / f"{protocol}.json"], needs=[f"train/{entry.recipe}"],
                inputs=[encoder / "model.safetensors"], spec={"args": args}, kind="head",
                partial=[Path(f"{out}.partial") / "checkpoint.pt"],
                cost={"protocol": protocol, "name": entry.name})


def _finetune(entry: Entry, paths: Paths, scale: Scale) -> Item:
    out = classifier(entry, "none", paths).parent
    start = BY_NAME[entry.start]
    n = scale.images(FINETUNE_N)
    res = paths.results / relpath(start.name, FINETUNE_PROTOCOL, "Linf-0.1", "finetune", n)
    return Item(f"finetune/{entry.name}",
                _py("rocl_zoo.finetune", "--model", start.name, "--dataset", DATASET, *FINETUNE_AT,
                    "--attacks", "clean,fgsm,pgd20,cw", "--eval-examples", n, "--autoattack",
                    "--autoattack-examples", scale.images(FINETUNE_AA_N), "--checkpoint-every", 100, "--out", out,
                    "--quiet", *scale.finetune),
                [out / "classifier" / "model.safetensors", res], needs=[f"release/{start.name}"],
                inputs=[paths.weights / start.name / "model.safetensors"],
                spec={"args": FINETUNE_AT, "scale": list(scale.finetune)}, partial=[out / "checkpoint.pt"],
                copy=(out / "results.json", res), kind="finetune",
                cost={"name": entry.name, "key": f"{FINETUNE_PROTOCOL}@{DATASET}"})


def _eval(entry: Entry, protocol: str, ev: Eval, paths: Paths, scale: Scale, source: str | None = None) -> Item:
    n = scale.images(ev.n)
    suite = f"transfer-from-{source}" if source else ev.suite
    out = paths.results / relpath(entry.name, protocol, ev.threat, suite, n)
    clf = classifier(entry, protocol, paths)
    label = [] if protocol == "none" else ["--protocol-label", protocol]
    extra = ["--sanity", "--sanity-examples", n] if ev.sanity else []
    extra += ["--batch-size", ev.batch] if ev.batch != Eval.batch else []
    needs, inputs = [make_item(entry, protocol)], [clf / "model.safetensors"]
    if source:
        extra += ["--transfer-from", source]
        needs.append(f"release/{source}")
        inputs.append(paths.weights / source / "model.safetensors")
    return Item(f"eval/{out.relative_to(paths.results).with_suffix('')}",
                _py("rocl_zoo.evaluate", clf, "--name", entry.name, "--dataset", DATASET, *label, "--norm", ev.norm,
                    "--eps", ev.eps, "--attacks", ev.attacks, "--n-examples", n, *extra, "--quiet", "--out", out),
                [out], needs=needs, inputs=inputs, spec={"eval": vars(ev), "n": n, "source": source},
                partial=[Path(f"{out}.partial")], kind="eval",
                cost={"attacks": ev.attacks.split(","), "n": n, "name": entry.name, "protocol": protocol})


def _corruptions(entry: Entry, paths: Paths, scale: Scale) -> Item:
    """Accuracy on the corrupted test set (`rocl_zoo.evaluate --threat-model corruptions`) of the shipped classifier."""
    protocol, n = entry.protocols[0], scale.images(entry.corruptions_n)
    out = paths.results / relpath(entry.name, protocol, threat_name(CORRUPTIONS_THREAT, None), "corruptions", n)
    clf = classifier(entry, protocol, paths)
    label = [] if protocol == "none" else ["--protocol-label", protocol]
    return Item(f"eval/{out.relative_to(paths.results).with_suffix('')}",
                _py("rocl_zoo.evaluate", clf, "--name", entry.name, "--dataset", DATASET, *label, "--threat-model",
                    CORRUPTIONS_THREAT, "--n-examples", n, "--batch-size", 1000, "--quiet", "--out", out),
                [out], needs=[make_item(entry, protocol)], inputs=[clf / "model.safetensors"],
                spec={"corruptions": {"version": C.VERSION, "seed": C.SEED, "types": list(C.CORRUPTIONS)}, "n": n},
                partial=[Path(f"{out}.partial")], kind="eval",
                cost={"attacks": [CORRUPTIONS_THREAT], "n": n, "name": entry.name})


def _release(entry: Entry, evals: list, paths: Paths, scale: Scale) -> Item:
    protocol = entry.protocols[0]
    clf = classifier(entry, protocol, paths)
    results = [e.outputs[0] for e in evals]
    n = scale.images(CHECK_EXAMPLES)  # the quick check the test suite repeats
    check = ["--check-examples", n] if n != CHECK_EXAMPLES else []
    return Item(f"release/{entry.name}", _py("training.release", entry.name, clf, "--results", *results, *check),
                [paths.weights / entry.name / "model.safetensors"], needs=[make_item(entry, protocol)]
                + [e.name for e in evals], inputs=[clf / "model.safetensors", *results], kind="release",
                cost={"name": entry.name})


def _digits(encoder: str, mode: str, paths: Paths, scale: Scale) -> Item:
    out = paths.runs / "finetune-digits" / encoder / mode
    n = scale.images(DIGITS_N)
    res = paths.results / relpath(encoder, f"finetune-{mode}", "Linf-0.1", "finetune", n, dataset="digits")
    aa = scale.images(100)
    return Item(f"finetune/{encoder}/digits-{mode}",
                _py("rocl_zoo.finetune", "--model", encoder, "--dataset", "digits", "--mode", mode, *DIGITS_ARGS,
                    "--autoattack", "--autoattack-examples", aa, "--eval-examples", n, "--out", out, "--quiet",
                    *scale.finetune),
                [res], needs=[f"release/{encoder}"], inputs=[paths.weights / encoder / "model.safetensors"],
                spec={"args": DIGITS_ARGS, "scale": list(scale.finetune)}, partial=[out / "checkpoint.pt"],
                copy=(out / "results.json", res), kind="finetune",
                cost={"name": encoder, "key": f"finetune-{mode}@digits"})


def items(paths: Paths, scale: str = "full") -> dict[str, Item]:
    """The whole matrix as items, in an order where every item comes after the items it needs."""
    sc = SCALES[scale]
    out: dict[str, Item] = {}

    def add(item: Item) -> Item:
        out[item.name] = item
        return item

    for entry in ENTRIES:
        if entry.recipe:
            add(_train(entry, paths, sc))
        if entry.method == "finetune":
            add(_finetune(entry, paths, sc))
        for protocol in entry.heads:
            add(_head(entry, protocol, paths, sc))
        shipped = []
        for protocol in entry.protocols:
            evals = [add(_eval(entry, protocol, ev, paths, sc)) for ev in entry.evals]
            shipped = shipped or evals + [add(_corruptions(entry, paths, sc))]  # its card shows them too
        add(_release(entry, shipped, paths, sc))
    for target, source in TRANSFERS:
        add(_eval(BY_NAME[target], BY_NAME[target].protocols[0], TRANSFER, paths, sc, source=source))
    for encoder, mode in DIGITS:
        add(_digits(encoder, mode, paths, sc))
    return out


def stand_ins(paths: Paths) -> dict[Path, str]:
    """Run folders whose product ships in the zoo -> the zoo name that stands in for them on a machine without the
    run: each entry's shipped classifier, and a pretrained encoder (inside its shipped linear classifier)."""
    out = {classifier(e, e.protocols[0], paths): e.name for e in ENTRIES}
    out.update({product(e.recipe, paths): e.name for e in ENTRIES if e.method == "pretrain"})
    return out


def entry_items(all_items: dict[str, Item], name: str) -> list[str]:
    """The items a zoo entry (or an item name, or a prefix such as eval/cnn4_rocl.fmnist_at) selects."""
    if name in all_items:
        return [name]
    picked = [n for n in all_items if n.split("/")[1] == name or n.startswith(name.rstrip("/") + "/")]
    return picked


def markdown() -> str:
    """The matrix as the README shows it: the entries, then the protocol every classifier is measured with."""
    made = {"pretrain": "pretraining, recipe `{r}`", "distil": "pretraining, recipe `{r}`, from `{s}`",
            "supervised": "supervised, recipe `{r}`",
            "finetune": "PGD-AT fine-tuning of `{s}` (`rocl_zoo.finetune`, fmnist_at's schedule, best validation epoch)"}
    lines = ["| Entry | Made by | Measured as |", "|---|---|---|"]
    for e in ENTRIES:
        heads = ", ".join(f"{p} head" + (" (shipped)" if i == 0 else "") for i, p in enumerate(e.heads))
        how = made["distil" if e.method == "pretrain" and e.start else e.method]
        lines.append(f"| `{e.name}` | {how.format(r=e.recipe, s=e.start)} | {heads or 'as it is'} |")
    lines += ["", "Every classifier above, on Fashion-MNIST's test split (n images in a fixed random order, seed 0: "
                  "the same images for every model):"]
    names = {"apgd": "APGD-CE + APGD-DLR (100 iterations each)", "autoattack": "AutoAttack (standard)",
             "pgd20": "PGD-20", "pgd20-l2": "PGD-20"}
    for ev in PROTOCOL:
        attacks = ", ".join(names.get(a, a.upper() if a in ("fgsm", "cw") else a) for a in ev.attacks.split(","))
        checks = ", with the gradient-masking checks" if ev.sanity else ""
        lines.append(f"- `{ev.suite}`: {attacks} at {ev.norm.replace('linf', 'l-inf')} {ev.eps} on {ev.n:,} "
                     f"images{checks}")
    pairs = "; ".join(f"`{s}` -> `{t}`" for t, s in TRANSFERS)
    lines.append(f"- `transfer`: black-box PGD-20 on {TRANSFER.n:,} images, made on the source: {pairs}")
    lines.append(f"- `corruptions` (the shipped classifier): accuracy under 15 common corruptions x 5 severities "
                 f"(MNIST-C's types, `rocl_zoo.corruptions`) on {CORRUPTIONS_N:,} images, and their mean")
    for e in ENTRIES:
        if e.evals != PROTOCOL:
            sizes = ", ".join(f"`{ev.suite}`{'' if ev.eps == '0.1' else ' at ' + ev.eps} on {ev.n:,}" for ev in e.evals)
            lines.append(f"- `{e.name}` (an attack costs it 7-25x more): the same suites on fewer images: {sizes}, "
                         f"`corruptions` on {e.corruptions_n:,}; no transfers")
    lines.append("- fine-tuning on digits (`rocl_zoo.finetune --mode at`, 5 epochs of PGD-5): "
                 + ", ".join(f"`{enc}`" for enc, _ in DIGITS))
    return "\n".join(lines) + "\n"
