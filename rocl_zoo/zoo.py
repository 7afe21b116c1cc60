"""The zoo's pretrained entries, torchvision-style: each weight carries its data, preprocessing, recipe and metrics.

An entry is named `arch.tag`. Its weights live in the Hub repo `hf_hub_id`; entries small enough ship inside
the package (`rocl_zoo/weights/<name>/`) so they load with no network. `sha256` is None until the recipe has
been run and the weights published; loading such an entry raises an error naming the recipe.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .data import DATASETS

HF_ORG = "rocl-zoo"
# $ROCL_ZOO_WEIGHTS moves the embedded weights and their registry elsewhere (a private zoo, a trial release)
PACKAGE_WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_DIR = Path(os.environ.get("ROCL_ZOO_WEIGHTS") or PACKAGE_WEIGHTS_DIR)
REGISTRY_NAME = "registry.json"  # written by `python -m training.release`: each shipped entry's sha256 and metrics


@dataclass(frozen=True)
class ZooEntry:
    name: str                      # "arch.tag"
    dataset: str                   # a key of rocl_zoo.data.DATASETS
    recipe: str                    # `python -m training.pretrain --recipe <recipe>` (or training.supervised), or
                                   # "reproduce <name>": made by several steps of training/matrix.py
    description: str
    sha256: str | None = None      # of model.safetensors; None = not published yet
    # measured on `split`: clean_acc, pgd20_acc, autoattack_acc (percent), eps, norm, n_examples, results (path);
    # check: clean and PGD-20 accuracy (percent) on a fixed test subset, recomputed by the tests
    metrics: dict = field(default_factory=dict)
    filename: str = "model.safetensors"
    default: bool = False          # the tag `create_model(arch, pretrained=True)` picks

    @property
    def architecture(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def hf_hub_id(self) -> str:
        return f"{HF_ORG}/{self.name}"

    @property
    def info(self):
        return DATASETS[self.dataset]

    @property
    def input_size(self) -> tuple:
        return self.info.input_size

    @property
    def label_names(self) -> tuple:
        return self.info.classes

    @property
    def mean(self) -> tuple:
        return self.info.mean

    @property
    def std(self) -> tuple:
        return self.info.std

    @property
    def embedded_dir(self) -> Path:
        return WEIGHTS_DIR / self.name

    @property
    def published(self) -> bool:
        return self.sha256 is not None

    def model_kwargs(self) -> dict:
        """Constructor arguments that make the architecture fit these weights."""
        return dict(num_classes=len(self.label_names), in_chans=self.input_size[0], mean=self.mean, std=self.std)


def _entry(name, dataset, recipe, description, **kw) -> ZooEntry:
    return ZooEntry(name=name, dataset=dataset, recipe=recipe, description=description, **kw)


_DEFINED: dict[str, ZooEntry] = {e.name: e for e in [
    _entry("cnn4_rocl.fmnist", "fashion_mnist", "fmnist_rocl",
           "RoCL encoder (no labels) + linear head, Fashion-MNIST", default=True),
    _entry("cnn4_rocl.fmnist_simclr", "fashion_mnist", "fmnist_simclr",
           "SimCLR encoder + linear head, Fashion-MNIST: the non-robust baseline"),
    _entry("cnn4_rocl.fmnist_rocl_ip", "fashion_mnist", "reproduce cnn4_rocl.fmnist_rocl_ip",
           "RoCL-IP encoder (A-InfoNCE's inferior positives; no labels) + linear head, Fashion-MNIST"),
    _entry("cnn4_rocl.fmnist_deacl", "fashion_mnist", "reproduce cnn4_rocl.fmnist_deacl",
           "DeACL encoder (no labels; distilled from the SimCLR encoder under attack) + linear head, Fashion-MNIST"),
    _entry("cnn4_rocl.fmnist_dynacl", "fashion_mnist", "reproduce cnn4_rocl.fmnist_dynacl",
           "DynACL encoder (no labels; annealed augmentations, dual BN) + linear head, Fashion-MNIST"),
    _entry("cnn4_rocl.fmnist_dynacl_pp", "fashion_mnist", "reproduce cnn4_rocl.fmnist_dynacl_pp",
           "DynACL++ encoder (DynACL, then TRADES on k-means pseudo-labels: no labels) + linear head, Fashion-MNIST"),
    _entry("cnn4_rocl.fmnist_at", "fashion_mnist", "fmnist_at",
           "Supervised PGD adversarial training, Fashion-MNIST"),
    _entry("cnn4_rocl.fmnist_trades", "fashion_mnist", "fmnist_trades", "Supervised TRADES, Fashion-MNIST"),
    _entry("cnn4_rocl.fmnist_rocl_at", "fashion_mnist", "reproduce cnn4_rocl.fmnist_rocl_at",
           "RoCL+AT: the RoCL encoder fine-tuned with PGD-AT (python -m rocl_zoo.finetune --mode at), Fashion-MNIST"),
    _entry("cnn4_rocl.fmnist_simclr_at", "fashion_mnist", "reproduce cnn4_rocl.fmnist_simclr_at",
           "SimCLR+AT: the SimCLR encoder fine-tuned with PGD-AT, RoCL+AT's budget, Fashion-MNIST"),
    _entry("cnn4w_rocl.fmnist", "fashion_mnist", "fmnist_rocl_wide",
           "RoCL encoder + linear head, Fashion-MNIST, double-width CNN", default=True),
    _entry("resnet18_rocl.cifar10", "cifar10", "cifar10_resnet18_rocl",
           "RoCL encoder + linear head, CIFAR-10 (the paper's setting)", default=True),
    _entry("resnet18_rocl.cifar10_simclr", "cifar10", "cifar10_resnet18_simclr", "SimCLR baseline, CIFAR-10"),
    _entry("resnet18_rocl.fmnist", "fashion_mnist", "fmnist_resnet18_rocl", "RoCL ResNet-18, Fashion-MNIST"),
    _entry("resnet50_rocl.cifar10", "cifar10", "cifar10_resnet50_rocl", "RoCL ResNet-50, CIFAR-10", default=True),
    _entry("wrn34_10_rocl.cifar10", "cifar10", "cifar10_wrn34_10_rocl", "RoCL WideResNet-34-10, CIFAR-10",
           default=True),
]}


_REGISTRY_PROBLEM: list[str] = []  # why the registry could not be read, reported on use (never at import)


def _published(entries: dict[str, ZooEntry]) -> dict[str, ZooEntry]:
    """The entries with the checksums and metrics the release step recorded. A registry that cannot be used
    leaves every entry unpublished, warns, and makes `get_entry` raise IntegrityError saying why."""
    path = WEIGHTS_DIR / REGISTRY_NAME
    _REGISTRY_PROBLEM.clear()
    try:
        registry = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(registry, dict) or not all(isinstance(r, dict) for r in registry.values()):
            raise ValueError("it is not an object of {entry name: record}")
        unknown = set(registry) - set(entries)
        if unknown:
            raise ValueError(f"it names entries that rocl_zoo/zoo.py does not define: {sorted(unknown)}")
        return {n: dataclasses.replace(e, **registry[n]) if n in registry else e for n, e in entries.items()}
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as e:
        import warnings

        _REGISTRY_PROBLEM.append(f"{path} cannot be used ({e}). Reinstall rocl-zoo, or rewrite the registry with "
                                 f"`python -m training.release`.")
        warnings.warn(_REGISTRY_PROBLEM[0], RuntimeWarning, stacklevel=2)
        return dict(entries)


ZOO = _published(_DEFINED)


def refresh() -> None:
    """Read the registry again (a release in this process changed it), in place: every holder of ZOO sees it."""
    ZOO.clear()
    ZOO.update(_published(_DEFINED))


def get_entry(name: str) -> ZooEntry:
    """The entry for `arch.tag`, or for `arch` its default tag. Raises ModelNotFoundError with close matches."""
    from .errors import IntegrityError, ModelNotFoundError

    if _REGISTRY_PROBLEM:
        raise IntegrityError(_REGISTRY_PROBLEM[0])
    if name in ZOO:
        return ZOO[name]
    for entry in ZOO.values():
        if entry.architecture == name and entry.default:
            return entry
    import difflib

    close = difflib.get_close_matches(name, list(ZOO) + sorted({e.architecture for e in ZOO.values()}), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ModelNotFoundError(f"No zoo entry named {name!r}.{hint} `rocl_zoo.list_models(pretrained=True)` lists them.")


def list_entries(pattern: str | None = None, published_only: bool = False) -> list[str]:
    names = [n for n, e in ZOO.items() if e.published or not published_only]
    return sorted(n for n in names if pattern is None or fnmatch.fnmatch(n, pattern))


def timm_default_cfgs(*architectures: str, first_conv: str, pool_size: Callable[[int], int]) -> dict:
    """timm `default_cfgs` for the given architectures, derived from the zoo entries (the one source of truth).

    `first_conv` names the input convolution; `pool_size` maps an input side to the side of the unpooled
    feature map. The model normalises inside, so the timm-visible mean/std are identity: timm's transforms give
    [0, 1] input. Only published entries name a weights source (`hf_hub_id`, plus `file` when embedded), so timm
    lists only them as pretrained and never tries to download weights that do not exist.
    """
    cfgs = {}
    # The default tag goes first: timm takes the first tag of an architecture as its default.
    entries = sorted((e for e in ZOO.values() if e.architecture in architectures), key=lambda e: not e.default)
    for e in entries:
        c, h, w = e.input_size
        cfg = dict(num_classes=len(e.label_names), input_size=e.input_size, pool_size=(pool_size(h), pool_size(w)),
                   mean=(0.0,) * c, std=(1.0,) * c, interpolation="bilinear", crop_pct=1.0, crop_mode="center",
                   fixed_input_size=False, first_conv=first_conv, classifier="fc", label_names=e.label_names,
                   license="mit", paper_ids="arXiv:2006.07589", paper_name="Adversarial Self-Supervised "
                   "Contrastive Learning", origin_url="https://github.com/Kim-Minseon/RoCL")
        if e.published:
            cfg["hf_hub_id"] = e.hf_hub_id
            weights = e.embedded_dir / e.filename
            if weights.is_file():
                cfg["file"] = str(weights)
        cfgs[e.name] = cfg
    return cfgs


def _pct(value) -> str:
    return "" if value is None else f"{value:.2f}"


def zoo_table_markdown() -> str:
    """The README's zoo table: every entry, its data, recipe, measured accuracy and whether weights exist."""
    rows = ["| name | dataset | recipe | clean % | PGD-20 % | AutoAttack % | threat model | weights |",
            "|---|---|---|---|---|---|---|---|"]
    for e in ZOO.values():
        m = e.metrics
        threat = f"{m['norm']} eps={m['eps']:g}, {m['n_examples']} {m['split']} images" if "norm" in m else ""
        status = "embedded" if (e.embedded_dir / e.filename).is_file() else ("Hub" if e.published else
                                                                             "not trained yet")
        aa = _pct(m.get("autoattack_acc"))
        if aa and m.get("autoattack_n_examples"):
            aa += f" (n={m['autoattack_n_examples']})"
        rows.append(f"| `{e.name}` | {e.dataset} | `{e.recipe}` | {_pct(m.get('clean_acc'))} | "
                    f"{_pct(m.get('pgd20_acc'))} | {aa} | {threat} | {status} |")
    return "\n".join(rows)
