"""What the Gradio demo (app.py) computes, without Gradio: models, image checks, attacks, curves, neighbours.

Kept apart from the UI so tests and `benchmarks/bench_demo.py` call it directly. Everything here raises
`rocl_zoo.errors.RoclZooError` subclasses with messages meant for the page; app.py turns them into `gr.Error`.

Two models are compared throughout: the model under test (`--model`, or any zoo entry the page lists; by default
the zoo's most robust by its registry numbers) and a standard one (`--baseline`; by default the least robust).
Images are float tensors in [0, 1] at each model's input size, quantised to 8 bits so that what the page shows
(and lets users download) is exactly what the models classify.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

import rocl_zoo
from rocl_zoo import attacks, results
from rocl_zoo.errors import ConfigError, DataError, ModelNotFoundError, WeightsUnavailableError
from rocl_zoo.hub import parse_source
from rocl_zoo.results import Accuracy
from rocl_zoo.threat import THREAT_MODELS, default_eps, madry_step
from rocl_zoo.zoo import ZOO, ZooEntry, get_entry
from rocl_zoo.inference import extract_features, predict, prepare_images

ASSETS = Path(rocl_zoo.__file__).parent / "assets"
FASHION_INDEX = ASSETS / "fashion_mnist.json"

ROBUST, BASELINE = "robust", "baseline"
ROLE_NAMES = {ROBUST: "RoCL (robust)", BASELINE: "Standard (non-robust)"}

# Attack methods: API value -> (page label, norm). The instance-wise attack is l-inf, like RoCL's.
METHODS = {
    "fgsm": ("FGSM", "linf"),
    "pgd_linf": ("PGD l-inf", "linf"),
    "pgd_l2": ("PGD l2", "l2"),
    "instance": ("Instance-wise (RoCL, label-free, on the encoder)", "linf"),
}
EPS_MAX = {"linf": 0.5, "l2": 16.0}     # pixel units of [0, 1] images; beyond these an image is destroyed
STEPS_MAX = 100                          # keeps one request under a few seconds on 2 CPU cores
CURVE_FACTORS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)  # eps grid of the robustness plot, times the chosen eps
MAX_UPLOAD_PIXELS = 4096 * 4096          # larger images are refused before they are decoded
WORK_SIDE = 1024                         # bigger images are shrunk first: the models see 28x28 or 32x32 anyway
INSTANCE_NEGATIVES = 10                  # bundled images used as the instance attack's negatives
INSTANCE_TEMPERATURE = 0.5               # RoCL's


# ------------------------------------------------------------------------------------------------ models

DEMO_DATASET = "fashion_mnist"  # the bundled examples' data: the page offers the zoo entries trained on it
DEMO_NORM = "linf"
DEMO_EPS = default_eps(DEMO_DATASET, DEMO_NORM)  # the zoo's headline threat model is also the page's default attack
DEMO_STEPS = 20                                  # PGD-20, the attack the zoo's tables report
# Before any entry is measured (a fresh tree, weights not released) the page falls back to these two.
FALLBACK_MODEL, FALLBACK_BASELINE = "cnn4_rocl.fmnist", "cnn4_rocl.fmnist_simclr"

# Each zoo entry's short name and what it is, in the page's words (the registry's descriptions are written for
# tables). An entry missing here shows its name and registry description.
KINDS = {
    "cnn4_rocl.fmnist": ("RoCL", "RoCL encoder (self-supervised, no labels) + standard linear head"),
    "cnn4_rocl.fmnist_simclr": ("SimCLR", "SimCLR encoder + standard linear head: no adversarial training"),
    "cnn4_rocl.fmnist_at": ("PGD-AT", "PGD adversarial training: the supervised baseline"),
    "cnn4_rocl.fmnist_trades": ("TRADES", "TRADES adversarial training: supervised"),
    "cnn4_rocl.fmnist_rocl_at": ("RoCL+AT", "RoCL encoder fine-tuned with PGD adversarial training"),
    "cnn4_rocl.fmnist_simclr_at": ("SimCLR+AT", "SimCLR encoder fine-tuned with PGD adversarial training"),
    "cnn4_rocl.fmnist_deacl": ("DeACL", "DeACL encoder (self-supervised: SimCLR distilled under attack) + linear head"),
    "cnn4_rocl.fmnist_dynacl": ("DynACL", "DynACL encoder (self-supervised, no labels) + standard linear head"),
    "cnn4_rocl.fmnist_dynacl_pp": ("DynACL++", "DynACL++ encoder (DynACL + TRADES on k-means pseudo-labels) + "
                                   "linear head"),
    "cnn4_rocl.fmnist_rocl_ip": ("RoCL-IP", "RoCL-IP encoder (RoCL with inferior positives, no labels) + linear head"),
    "cnn4_rocl.fmnist_dynacl_at": ("DynACL+AT", "DynACL encoder fine-tuned with PGD adversarial training"),
}


@dataclass(frozen=True)
class Profile:
    """What the page says about a model: a short name, what it is, and its measured accuracy, each with its n."""
    key: str                                # the page's value for it: the zoo name or the --model/--baseline source
    title: str
    kind: str
    clean: Accuracy | None = None
    pgd20: Accuracy | None = None
    autoattack: Accuracy | None = None
    threat: tuple[str, float] | None = None  # (norm, eps) of the robust numbers
    recipe: str = ""
    description: str = ""
    files: tuple[str, ...] = ()             # where the numbers come from

    @property
    def robust(self) -> Accuracy | None:
        """The lowest robust accuracy measured: the strongest attack tried is the best bound on robustness."""
        return min((a for a in (self.autoattack, self.pgd20) if a), key=lambda a: a.pct, default=None)

    def at_demo_threat(self) -> bool:
        return self.threat is not None and self.threat[0] == DEMO_NORM and math.isclose(self.threat[1], DEMO_EPS)


def zoo_profile(entry: ZooEntry) -> Profile:
    """A zoo entry's profile from the registry (rocl_zoo/weights/registry.json, via rocl_zoo.zoo)."""
    m = entry.metrics
    n = int(m.get("n_examples", 0))

    def acc(key, n_key=None):
        return None if m.get(key) is None else Accuracy(float(m[key]), int(m.get(n_key, n) if n_key else n))

    title, kind = KINDS.get(entry.name, (entry.name, entry.description))
    threat = (str(m["norm"]).lower(), float(m["eps"])) if "norm" in m and "eps" in m else None
    files = tuple(f"rocl_zoo/weights/{m[k]}" for k in ("results", "autoattack_results") if m.get(k))
    return Profile(entry.name, title, kind, acc("clean_acc"), acc("pgd20_acc"),
                   acc("autoattack_acc", "autoattack_n_examples"), threat, entry.recipe, entry.description, files)


def source_profile(source: str, role: str) -> Profile:
    """The profile of a model given by path or Hub id: a zoo entry's from the registry, a folder's from the results
    files inside it (rocl_zoo.results), anything else's without numbers."""
    kind, where, _ = parse_source(source)
    if kind == "zoo":
        try:
            return dataclasses.replace(zoo_profile(get_entry(where)), key=source)
        except ModelNotFoundError:
            pass
    found = []
    if kind == "folder" and Path(where).is_dir():
        try:
            found = results.read_all(Path(where))
        except (ConfigError, DataError):  # an unreadable results file: show no numbers rather than fail
            found = []
    threat = THREAT_MODELS[DEMO_NORM]

    def best(attack):
        return results.most_examples(*(r.accuracy(attack, threat=threat, eps=DEMO_EPS) for r in found))

    return Profile(source, ROLE_NAMES[role], f"your model, `{source}`", best("clean"), best("pgd20"),
                   best("autoattack"), (DEMO_NORM, DEMO_EPS), files=tuple(str(r.path) for r in found))


def _rank(p: Profile) -> tuple:
    """Most robust first: the robust accuracy, then PGD-20, then clean accuracy."""
    return tuple(a.pct if a else -1.0 for a in (p.robust, p.pgd20, p.clean))


def by_robustness(profiles) -> list[Profile]:
    """Measured at the page's threat model, most robust first; the unmeasured after them, in their order."""
    measured = [p for p in profiles if p.robust and p.at_demo_threat()]
    return sorted(measured, key=_rank, reverse=True) + [p for p in profiles if p not in measured]


def zoo_catalogue() -> list[ZooEntry]:
    """The entries the page offers: released, trained on the examples' data, their weights in the package (so the
    page needs no network)."""
    return [e for e in ZOO.values() if e.published and e.dataset == DEMO_DATASET
            and (e.embedded_dir / e.filename).is_file()]


def default_sources(entries: list[ZooEntry] | None = None) -> tuple[str, str]:
    """The page's default pair, computed from the registry: the most robust of `entries` (the zoo's catalogue) is
    the model under test and the least robust the standard model; FALLBACK_* while fewer than two are measured."""
    profiles = [zoo_profile(e) for e in (zoo_catalogue() if entries is None else entries)]
    ranked = [p for p in by_robustness(profiles) if p.robust and p.at_demo_threat()]
    if len(ranked) < 2:
        return FALLBACK_MODEL, FALLBACK_BASELINE
    return ranked[0].key, ranked[-1].key


@dataclass
class DemoModel:
    """A model the demo shows, with where it came from, what the page says about it and, if it is untrained, why
    (shown as a banner). `bank` holds its view and features of the bundled examples, filled by Demo."""
    role: str
    source: str
    model: nn.Module
    warning: str | None = None
    profile: Profile | None = None
    bank: tuple = field(default=(), repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.profile.title if self.profile else ROLE_NAMES[self.role]

    @property
    def labels(self) -> list[str]:
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        names = cfg.get("label_names")
        return [str(n) for n in names] if names else [str(i) for i in range(self.model.num_classes)]

    def describe(self) -> str:
        """One plain line: name, what it is, and clean / PGD-20 / AutoAttack accuracy, each with its n."""
        p = self.profile or source_profile(self.source, self.role)
        numbers = ", ".join(f"{label} {accuracy_text(a, with_n=True)}" for label, a in
                            (("clean", p.clean), ("PGD-20", p.pgd20), ("AutoAttack", p.autoattack)) if a)
        line = f"{self.name}: {p.kind}" + (f"; {numbers}" if numbers else "; not measured")
        return line + (" (UNTRAINED: random weights)" if self.warning else "")


def load_demo_model(source: str, role: str, allow_untrained: bool = True) -> DemoModel:
    """`rocl_zoo.load(source)`; a zoo name whose weights are not published yet falls back to the untrained
    architecture (with a warning the page shows), so the demo starts before the zoo is trained. Any other
    failure (a bad folder, corrupt weights) raises: silently showing something else would mislead."""
    try:
        return DemoModel(role, str(source), rocl_zoo.load(source), profile=source_profile(str(source), role))
    except WeightsUnavailableError as e:
        if not allow_untrained or parse_source(source)[0] != "zoo":
            raise
        model = rocl_zoo.create_model(str(source)).eval()
        warning = (f"No trained weights for `{source}` ({e}) The {ROLE_NAMES[role]} slot shows the UNTRAINED "
                   f"architecture with random weights: its predictions and robustness mean nothing. Pass a "
                   f"trained model with `{'--model' if role == ROBUST else '--baseline'} FOLDER`.")
        return DemoModel(role, str(source), model, warning, source_profile(str(source), role))


# ------------------------------------------------------------------------------------------------ the page's words


def accuracy_text(a: Accuracy | None, with_n: bool = False, interval: bool = False) -> str:
    """84.3 %, or 84.3 % (n = 10,000), or 84.3 % [83.6, 85.0] (n = 10,000); a dash when not measured."""
    if a is None:
        return "–"
    text = f"{a.pct:.1f} %"
    if interval:
        lo, hi = a.interval()
        text += f" [{lo:.1f}, {hi:.1f}]"
    return text + (f" (n = {a.n:,})" if with_n else "")


def _same_n(profiles, column: str) -> int | None:
    ns = {getattr(p, column).n for p in profiles if getattr(p, column)}
    return ns.pop() if len(ns) == 1 else None


def _kind(p: Profile) -> str:
    if p.robust and p.threat and not p.at_demo_threat():
        return f"{p.kind} (attacked at {p.threat[0]} eps {p.threat[1]:g})"
    return p.kind


COLUMNS = {"clean": "clean", "pgd20": "PGD-20", "autoattack": "AutoAttack"}


def _columns(profiles: list[Profile]) -> tuple[dict, str]:
    """Each accuracy column's shared n (None where rows differ) and the columns' titles, n in them when shared."""
    same = {c: _same_n(profiles, c) for c in COLUMNS}
    return same, " | ".join(f"{t} (n = {same[c]:,})" if same[c] else t for c, t in COLUMNS.items())


def zoo_table(profiles: list[Profile], chosen: str, baseline: str) -> str:
    """The page's header: one row per model (name, what it is, clean / PGD-20 / AutoAttack accuracy), n in the
    column's title when every row shares it, else in each cell; ▶ marks the model under test, ○ the standard one."""
    same, head = _columns(profiles)
    rows = [f"| | model | what it is | {head} |", "|:-:|---|---|--:|--:|--:|"]
    for p in profiles:
        mark = ("▶" if p.key == chosen else "") + ("○" if p.key == baseline else "")
        cells = " | ".join(accuracy_text(getattr(p, c), with_n=not same[c]) for c in COLUMNS)
        rows.append(f"| {mark} | **{p.title}** | {_kind(p)} | {cells} |")
    return "\n".join(rows)


def zoo_caption() -> str:
    return (f"Accuracy on Fashion-MNIST test images, clean and under attacks that change each pixel by at most "
            f"{DEMO_EPS:g} (on a 0–1 scale). ▶ the model under test: the most robust unless you pick another. "
            f"○ the standard model beside it.")


def zoo_details(profiles: list[Profile]) -> str:
    """The detail on demand: each number with its 95 % interval and n, how each model was made, where its numbers
    come from."""
    same, head = _columns(profiles)
    rows = [f"| model | zoo entry | {head} | made by |", "|---|---|---|---|---|---|"]
    for p in profiles:
        cells = " | ".join(accuracy_text(getattr(p, c), with_n=not same[c], interval=True) for c in COLUMNS)
        rows.append(f"| **{p.title}** | `{p.key}` | {cells} | {f'`{p.recipe}`' if p.recipe else '–'} |")
    notes = [f"- **{p.title}**: {p.description or p.kind}. Measured in "
             + (", ".join(f"`{f}`" for f in p.files) or "no results file") + "." for p in profiles]
    return "\n".join(rows + ["", *notes, "", f"l-inf threat model, eps = {DEMO_EPS:g} on [0, 1] pixels. Brackets: "
                              "95 % Wilson score interval for n test images. The zoo's numbers come from its registry "
                              "(`rocl_zoo/weights/registry.json`, written by `python -m training.release`); "
                              "AutoAttack runs on a fixed subset of the test set."])


# ------------------------------------------------------------------------------------------------ images


def read_image(path) -> Image.Image:
    """Open an uploaded file as a PIL image, refusing non-images and images over MAX_UPLOAD_PIXELS before
    decoding them; EXIF rotation is applied and big images are shrunk to WORK_SIDE (any mode, 16-bit included).
    Grey, RGB(A), palette and 16-bit images are all accepted: `prepare_images` converts them for each model."""
    if path is None:
        raise DataError("No image: pick an example or upload an image first.")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"The uploaded file {path.name} is gone; upload it again.")
    try:
        img = Image.open(path)
    except Image.DecompressionBombError:
        raise DataError(f"{path.name} is far too large; the demo accepts images up to "
                        f"{MAX_UPLOAD_PIXELS // 1_000_000} megapixels.") from None
    except (OSError, ValueError, SyntaxError):
        raise DataError(f"{path.name} is not an image this demo can read. Upload a PNG, JPEG, BMP, TIFF or "
                        f"WebP image.") from None
    w, h = img.size
    if w * h > MAX_UPLOAD_PIXELS:
        raise DataError(f"{path.name} is {w}x{h} pixels ({w * h / 1e6:.0f} megapixels); the demo accepts images "
                        f"up to {MAX_UPLOAD_PIXELS // 1_000_000} megapixels. Resize it first.")
    if w == 0 or h == 0:
        raise DataError(f"{path.name} is an empty image ({w}x{h}).")
    try:
        img.load()
        img = ImageOps.exif_transpose(img) or img
        if getattr(img, "n_frames", 1) > 1:  # animated GIF/WebP, multi-page TIFF: the first frame
            img.seek(0)
            img = img.copy()
        if max(img.size) > WORK_SIDE:
            img.thumbnail((WORK_SIDE, WORK_SIDE))
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path.name} could not be decoded ({e}); the file is truncated or corrupt.") from None
    return img


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid, so a PNG of the image holds exactly what the model sees."""
    return (x * 255).round() / 255


def quantize_toward(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Quantise an adversarial image (x on the 8-bit grid) by truncating its perturbation towards zero: every
    pixel's change only shrinks, so the result stays inside the attack's l-inf or l2 ball and inside [0, 1]."""
    d = x_adv - x
    # The nudge (1e-3 of a level) keeps an exact-eps step from losing a level to float error.
    levels = torch.round(x * 255) + torch.trunc(d * 255 + 1e-3 * torch.sign(d))
    return levels.clamp(0, 255) / 255  # integer levels / 255: the same floats `quantize` gives


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] to an HxW (grey) or HxWx3 uint8 array."""
    arr = (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)


def perturbation_image(delta: torch.Tensor) -> np.ndarray:
    """delta (C, H, W) amplified to the full range: grey 128 is no change, white the largest increase."""
    scale = float(delta.abs().max())
    return to_uint8(0.5 + delta / (2 * scale) if scale > 0 else torch.full_like(delta, 0.5))


# ------------------------------------------------------------------------------------------------ examples


@dataclass
class Example:
    path: Path
    label: int | None     # index into `classes`, when known
    caption: str


@dataclass
class ExampleSet:
    """The bundled Fashion-MNIST test images (with labels) and the scikit-image samples (without)."""
    fashion: list[Example]
    classes: list[str]
    samples: list[Example] = field(default_factory=list)
    by_sha: dict[str, Example] = field(default_factory=dict)

    @classmethod
    def load(cls, samples_dir: Path | None = None) -> "ExampleSet":
        index = json.loads(FASHION_INDEX.read_text())
        fashion = [Example(ASSETS / name, rec["label"], rec["class"]) for name, rec in index["files"].items()]
        by_sha = {rec["sha256"]: ex for ex, rec in zip(fashion, index["files"].values())}
        return cls(fashion, list(index["classes"]), skimage_samples(samples_dir), by_sha)

    def gallery_examples(self) -> list[Path]:
        """One Fashion-MNIST image per class, then the scikit-image samples: the page's example list."""
        seen, out = set(), []
        for ex in self.fashion:
            if ex.label not in seen:
                seen.add(ex.label)
                out.append(ex.path)
        return out + [ex.path for ex in self.samples]

    def lookup(self, path) -> Example | None:
        """The bundled example a file is (by content: Gradio copies examples into its cache), or None."""
        try:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            return None
        return self.by_sha.get(digest)


SKIMAGE_SAMPLES = ("camera", "astronaut", "coffee", "chelsea", "rocket")


def skimage_samples(folder: Path | None = None) -> list[Example]:
    """scikit-image's bundled sample images (no download) written as PNGs to `folder` (a temporary folder by
    default). Empty when scikit-image is not installed: it is an optional part of the `demo` extra."""
    try:
        import skimage.data
    except ImportError:
        return []
    folder = Path(folder or tempfile.mkdtemp(prefix="rocl_zoo_demo_"))
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in SKIMAGE_SAMPLES:
        path = folder / f"skimage_{name}.png"
        if not path.is_file():
            try:
                Image.fromarray(getattr(skimage.data, name)()).save(path)
            except Exception:  # a sample that needs a download (none of these do today): skip it
                continue
        out.append(Example(path, None, f"scikit-image {name}"))
    return out


# ------------------------------------------------------------------------------------------------ attacks


class PooledEncoder(nn.Module):
    """The model's encoder up to the pooled features (its linear head's input): what the instance-wise attack
    attacks. The zoo's models carry no projector, so the features themselves play the projection's role."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def check_attack_args(method, eps, steps) -> tuple[str, float, int]:
    """Validate the attack panel's values; messages say what range is allowed."""
    if method not in METHODS:
        raise ConfigError(f"Unknown attack method {method!r}; choose one of {', '.join(METHODS)}.")
    norm = METHODS[method][1]
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise ConfigError(f"eps must be a number, got {eps!r}.") from None
    if not (math.isfinite(eps) and 0 < eps <= EPS_MAX[norm]):
        unit = ("l-inf, pixel units of [0, 1] images: 0.1 is about 25/255" if norm == "linf" else
                "l2 norm of the whole perturbation")
        raise ConfigError(f"eps = {eps:g} is out of range for {METHODS[method][0]}: use 0 < eps <= "
                          f"{EPS_MAX[norm]:g} ({unit}).")
    try:
        steps_f = float(steps)
    except (TypeError, ValueError):
        raise ConfigError(f"steps must be a whole number, got {steps!r}.") from None
    if not (math.isfinite(steps_f) and steps_f == int(steps_f) and 1 <= steps_f <= STEPS_MAX):
        raise ConfigError(f"steps = {steps!r} is out of range: use a whole number from 1 to {STEPS_MAX}.")
    return method, eps, int(steps_f)


def run_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str, eps: float, steps: int,
               negatives: torch.Tensor | None = None) -> torch.Tensor:
    """One attack from `rocl_zoo.attacks` on `model` (images -> logits). The instance-wise attack ignores y:
    it maximises NT-Xent between the attacked image's pooled features and the clean image's, with `negatives`
    (other images, clean) as the contrast; with a single image and no negatives its loss would be constant."""
    alpha = madry_step(eps, steps)  # also for the instance attack (its default 0.007 suits 8/255)
    if method == "fgsm":
        return attacks.fgsm(model, x, y, eps)
    if method in ("pgd_linf", "pgd_l2"):
        return attacks.pgd(model, x, y, eps, alpha=alpha, steps=steps, norm=METHODS[method][1])
    if method == "instance":
        batch = x if negatives is None or not len(negatives) else torch.cat([x, negatives.to(x)])
        x_adv = attacks.instance_attack(PooledEncoder(model), batch, batch, eps=eps, alpha=alpha, steps=steps,
                                        temperature=INSTANCE_TEMPERATURE)
        return x_adv[:len(x)]
    raise ConfigError(f"Unknown attack method {method!r}.")


# ------------------------------------------------------------------------------------------------ the demo


def probabilities(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """All class probabilities of one image, best first, through `rocl_zoo.predict`."""
    preds = predict(model, x, topk=model.num_classes)[0]
    return {p["label"]: p["prob"] for p in preds}


class Demo:
    """The models the page offers (one under test, chosen in the page; `robust` by default), the standard model
    beside it, and the bundled examples, with each model's features of them (the neighbour bank)."""

    def __init__(self, robust: DemoModel, baseline: DemoModel, examples: ExampleSet | None = None, topk: int = 5,
                 choices: tuple[DemoModel, ...] | list[DemoModel] = ()):
        self.choices = {m.source: m for m in (robust, *choices)}  # the page's list, keyed by its values
        self.default = robust.source
        self.baseline = baseline
        self.models = {ROBUST: robust, BASELINE: baseline}  # the default pair
        self.examples = examples or ExampleSet.load()
        self.topk = topk
        bank = [ex.path for ex in self.examples.fashion]
        for m in (*self.choices.values(), baseline):
            if not m.bank:
                images = quantize(prepare_images(bank, m.model))
                m.bank = (images, nn.functional.normalize(extract_features(m.model, images), dim=1))

    @property
    def warnings(self) -> list[str]:
        return list(dict.fromkeys(m.warning for m in (*self.choices.values(), self.baseline) if m.warning))

    def pair(self, model: str | None = None) -> dict[str, DemoModel]:
        """{ROBUST: the model under test (`model`, a key of `choices`; the default if None), BASELINE: the standard
        model}."""
        key = model or self.default
        if key not in self.choices:
            raise ConfigError(f"Unknown model {key!r}; choose one of {', '.join(self.choices)}.")
        return {ROBUST: self.choices[key], BASELINE: self.baseline}

    def profiles(self) -> list[Profile]:
        """Every model of the page, the one from the command line first, then the zoo's by robustness."""
        models = [*self.choices.values(), self.baseline]
        profiles = list({p.key: p for p in (m.profile or source_profile(m.source, m.role) for m in models)}.values())
        zoo = by_robustness([p for p in profiles if p.key in ZOO])
        return [p for p in profiles if p.key not in ZOO] + zoo

    def table(self, model: str | None = None) -> str:
        return zoo_table(self.profiles(), model or self.default, self.baseline.source)

    def _view(self, role: str, img, model: str | None = None) -> torch.Tensor:
        return quantize(prepare_images(img, self.pair(model)[role].model))

    def true_label(self, path, m: DemoModel | None = None) -> int | None:
        """The label of a bundled Fashion-MNIST example, if the model classifies Fashion-MNIST's classes."""
        ex = self.examples.lookup(path)
        if ex is None or ex.label is None or (m or self.models[ROBUST]).labels != self.examples.classes:
            return None
        return ex.label

    def predict(self, path, model: str | None = None) -> dict:
        """Class probabilities of both models, the model under test's view of the image, and the true class."""
        img, pair = read_image(path), self.pair(model)
        out = {"view": to_uint8(self._view(ROBUST, img, model)[0]), "names": {r: m.name for r, m in pair.items()}}
        for role, m in pair.items():
            out[role] = probabilities(m.model, self._view(role, img, model))
        label = self.true_label(path, pair[ROBUST])
        out["true"] = self.examples.classes[label] if label is not None else None
        return out

    def _negatives(self, m: DemoModel, x: torch.Tensor) -> torch.Tensor:
        """One clean bundled image per class, minus the attacked image itself (it cannot be its own negative)."""
        imgs, seen = [], set()
        for ex, img in zip(self.examples.fashion, m.bank[0]):
            if ex.label not in seen and not torch.equal(img, x[0]):
                seen.add(ex.label)
                imgs.append(img)
        return torch.stack(imgs[:INSTANCE_NEGATIVES]) if imgs else x[:0]

    def _reference(self, m: DemoModel, path, x: torch.Tensor) -> int:
        """The class whose confidence we track: the true one when known, else the model's clean prediction."""
        label = self.true_label(path, m)
        if label is None:
            with torch.no_grad():
                label = int(m.model(x).argmax(1))
        return label

    def _adversarial(self, m: DemoModel, path, x: torch.Tensor, method: str, eps: float, steps: int) -> tuple:
        """(x_adv on the 8-bit grid, tracked class): `m` attacked white-box at `x`, its view of the image."""
        ref = self._reference(m, path, x)
        x_adv = run_attack(m.model, x, torch.tensor([ref]), method, eps, steps,
                           self._negatives(m, x) if method == "instance" else None)
        return quantize_toward(x, x_adv), ref

    def attack(self, path, method: str, eps, steps, target: str = ROBUST, model: str | None = None) -> dict:
        """Attack `target` (white-box) and show both models before and after (the other one sees a transfer). The
        other model is also attacked on its own ("own"), so the page can say what a direct attack does to it."""
        method, eps, steps = check_attack_args(method, eps, steps)
        pair = self.pair(model)
        if target not in pair:
            raise ConfigError(f"target must be one of {', '.join(pair)}, got {target!r}.")
        img = read_image(path)
        x = self._view(target, img, model)
        x_adv, ref = self._adversarial(pair[target], path, x, method, eps, steps)
        delta = x_adv - x
        out = {"adversarial": to_uint8(x_adv[0]), "perturbation": perturbation_image(delta[0]),
               "linf": float(delta.abs().max()), "l2": float(delta.flatten().norm()),
               "reference": pair[target].labels[ref],
               "reference_is_true": self.true_label(path, pair[ROBUST]) is not None,
               "names": {r: p.name for r, p in pair.items()}, "before": {}, "after": {}, "own": {}}
        for role, p in pair.items():
            out["before"][role] = probabilities(p.model, self._view(role, x, model))
            out["after"][role] = probabilities(p.model, self._view(role, x_adv, model))
            if role != target:
                own = self._view(role, img, model)
                out["own"][role] = probabilities(p.model, self._adversarial(p, path, own, method, eps, steps)[0])
        out["words"] = attack_in_words(method, eps, steps, out["names"], target, out["before"], out["after"],
                                       out["own"])
        out["summary"] = self._summary(out, method, eps, steps, target)
        return out

    def _summary(self, out: dict, method: str, eps: float, steps: int, target: str) -> str:
        """The plain-words sentence, then the numbers: the perturbation's size and each model before and after."""
        ref, names = out["reference"], out["names"]
        kind = "true class" if out["reference_is_true"] else "clean prediction of the attacked model"
        lines = [out["words"], "",
                 f"**{METHODS[method][0]}** on **{names[target]}**, eps = {eps:g}"
                 f"{'' if method == 'fgsm' else f', {steps} steps'}: perturbation l-inf {out['linf']:.3f}, "
                 f"l2 {out['l2']:.3f}. Tracked class: **{ref}** ({kind}).", "",
                 "| model | attack | before | after | confidence in tracked class |", "|---|---|---|---|---|"]
        rows = [(role, "white-box" if role == target else "transfer", out["after"][role]) for role in out["before"]]
        rows += [(role, "white-box, its own attack", after) for role, after in out["own"].items()]
        for role, how, after in rows:
            before = out["before"][role]
            b, a = next(iter(before)), next(iter(after))
            lines.append(f"| {names[role]} | {how} | {b} ({before[b]:.0%}) | {a} ({after[a]:.0%}) | "
                         f"{before.get(ref, 0):.0%} -> {after.get(ref, 0):.0%} |")
        return "\n".join(lines)

    def curve(self, path, method: str, eps, steps, model: str | None = None) -> list[dict]:
        """Confidence in the tracked class against eps, each model attacked white-box with the chosen method at
        CURVE_FACTORS x eps. Rows {eps, confidence, model} for a line plot."""
        method, eps, steps = check_attack_args(method, eps, steps)
        img = read_image(path)
        rows = []
        for role, m in self.pair(model).items():
            x = self._view(role, img, model)
            ref = self._reference(m, path, x)
            negatives = self._negatives(m, x) if method == "instance" else None
            for f in CURVE_FACTORS:
                e = min(f * eps, EPS_MAX[METHODS[method][1]])
                x_e = x if e == 0 else quantize_toward(x, run_attack(m.model, x, torch.tensor([ref]), method, e,
                                                                     steps, negatives))
                with torch.no_grad():
                    conf = float(m.model(x_e).softmax(1)[0, ref])
                rows.append({"eps": round(e, 6), "confidence": conf, "model": m.name})
        return rows

    def neighbours(self, path, adv_path=None, k: int = 5, model: str | None = None) -> dict:
        """Nearest bundled Fashion-MNIST examples (cosine similarity of pooled features) of the image and of its
        attacked version, per model, with the cosine similarity between the clean and attacked features."""
        img = read_image(path)
        adv = read_image(adv_path) if adv_path is not None else None
        out = {}
        for role, m in self.pair(model).items():
            feats = [nn.functional.normalize(extract_features(m.model, self._view(role, im, model)), dim=1)
                     for im in ([img] if adv is None else [img, adv])]
            res = {"clean": self._nearest(m, feats[0], k), "attacked": [], "similarity": None, "name": m.name}
            if adv is not None:
                res["attacked"] = self._nearest(m, feats[1], k)
                res["similarity"] = float((feats[0] * feats[1]).sum())
            out[role] = res
        return out

    def _nearest(self, m: DemoModel, feat: torch.Tensor, k: int) -> list[tuple[str, str]]:
        """The k most similar bank images as (path, "similarity class"): the number first, as captions get cut."""
        sims = (m.bank[1] @ feat[0]).tolist()
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        return [(str(self.examples.fashion[i].path), f"{sims[i]:.2f} {self.examples.fashion[i].caption}")
                for i in order]


def attack_name(method: str, steps: int) -> str:
    """The attack as the page says it: PGD-20, FGSM, ..."""
    return {"fgsm": "FGSM (one gradient step)", "pgd_linf": f"PGD-{steps}", "pgd_l2": f"PGD-{steps} in l2",
            "instance": f"RoCL's label-free instance-wise attack ({steps} steps)"}[method]


def attack_in_words(method: str, eps: float, steps: int, names: dict, target: str, before: dict, after: dict,
                    own: dict | None = None) -> str:
    """What the attack did, in plain words: its budget, then each model's answer, the attacked one first; a model
    that only saw the image (a transfer) also gets its answer when attacked itself (`own`). `names`, `before`,
    `after`, `own`: per role; the last three hold class probabilities, best first."""
    if METHODS[method][1] == "linf":
        budget = f"changed each pixel by at most {eps:g} (on a 0–1 scale)"
    else:
        budget = f"changed the image by at most {eps:g} in l2 norm (pixels on a 0–1 scale)"

    def says(probs: dict, was: str, still: bool = True) -> str:
        top = next(iter(probs))
        verb = "still says" if top == was and still else "says" if top == was else "now says"
        return f"{verb} **{top}** ({100 * probs[top]:.0f} %)" + ("" if top == was else f", not {was}")

    sentences = []
    for role in sorted(before, key=lambda r: r != target):
        was = next(iter(before[role]))
        if role == target:
            sentences.append(f"{names[role]} {says(after[role], was)}")
            continue
        text = f"{names[role]}, shown the same image, {says(after[role], was)}"
        if own and role in own:
            text += f"; when attacked directly the same way, it {says(own[role], was, still=False)}"
        sentences.append(text)
    return f"{attack_name(method, steps)}, aimed at {names[target]}, {budget}: " + ". ".join(sentences) + "."


def build_demo(model: str | None = None, baseline: str | None = None, samples_dir: Path | None = None) -> Demo:
    """The page's models and examples: the zoo's entries for the examples' data (the page's list), `model` under
    test by default and `baseline` as the standard model (each computed from the registry when None; any SOURCE
    of `rocl_zoo.load` overrides it), falling back to untrained zoo architectures with warnings."""
    best, worst = default_sources()
    model, baseline = str(model or best), str(baseline or worst)
    zoo = {e.name: load_demo_model(e.name, ROBUST) for e in zoo_catalogue()}
    robust = zoo.get(model) or load_demo_model(model, ROBUST)
    base = dataclasses.replace(zoo[baseline], role=BASELINE) if baseline in zoo else load_demo_model(baseline,
                                                                                                     BASELINE)
    return Demo(robust, base, ExampleSet.load(samples_dir), choices=list(zoo.values()))


# ------------------------------------------------------------------------------------------------ serving


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model, baseline, *, timeout: float = 120.0, extra_args=()):
    """Run `python app.py` on a free local port until its page answers; return (process, url, seconds taken).

    For the tests and benchmarks/bench_demo.py. The process's output is captured (read it with stop_server);
    RuntimeError if it exits or stays silent for `timeout` seconds.
    """
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    app = Path(__file__).with_name("app.py")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(app), "--model", str(model), "--baseline", str(baseline),
                             "--port", str(port), *extra_args], cwd=app.parent, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, url, time.perf_counter() - t0
        except OSError:
            time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"app.py did not answer on {url} within {timeout} s")


def stop_server(proc) -> str:
    """Stop a server from start_server; return what it printed."""
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""
