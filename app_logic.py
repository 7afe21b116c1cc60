"""What the Gradio demo (app.py) computes, without Gradio: models, image checks, attacks, curves, neighbours.

Kept apart from the UI so tests and `benchmarks/bench_demo.py` call it directly. Everything here raises
`rocl_zoo.errors.RoclZooError` subclasses with messages meant for the page; app.py turns them into `gr.Error`.

Two models are compared throughout: the robust one (RoCL, `--model`) and a standard, non-robust one of the same
architecture (`--baseline`). Images are float tensors in [0, 1] at each model's input size, quantised to 8 bits
so that what the page shows (and lets users download) is exactly what the models classify.
"""
from __future__ import annotations

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
from rocl_zoo import attacks
from rocl_zoo.errors import ConfigError, DataError, WeightsUnavailableError
from rocl_zoo.hub import parse_source
from rocl_zoo.threat import madry_step
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


@dataclass
class DemoModel:
    """A model the demo shows, with where it came from and, if it is untrained, why (shown as a banner)."""
    role: str
    source: str
    model: nn.Module
    warning: str | None = None

    @property
    def name(self) -> str:
        return ROLE_NAMES[self.role]

    @property
    def labels(self) -> list[str]:
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        names = cfg.get("label_names")
        return [str(n) for n in names] if names else [str(i) for i in range(self.model.num_classes)]

    def describe(self) -> str:
        """One markdown line: role, source, architecture, dataset and recorded metrics."""
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        rz = cfg.get("rocl_zoo") or {}
        bits = [f"**{self.name}**: `{self.source}`", f"architecture `{cfg.get('architecture', '?')}`"]
        if rz.get("dataset"):
            bits.append(f"dataset {rz['dataset']}")
        metrics = rz.get("metrics") or {}
        shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                          if isinstance(v, (int, float, str)))
        if shown:
            bits.append(shown)
        if self.warning:
            bits.append("**UNTRAINED (random weights)**")
        return "; ".join(bits)


def load_demo_model(source: str, role: str, allow_untrained: bool = True) -> DemoModel:
    """`rocl_zoo.load(source)`; a zoo name whose weights are not published yet falls back to the untrained
    architecture (with a warning the page shows), so the demo starts before the zoo is trained. Any other
    failure (a bad folder, corrupt weights) raises: silently showing something else would mislead."""
    try:
        return DemoModel(role, str(source), rocl_zoo.load(source))
    except WeightsUnavailableError as e:
        if not allow_untrained or parse_source(source)[0] != "zoo":
            raise
        model = rocl_zoo.create_model(str(source)).eval()
        warning = (f"No trained weights for `{source}` ({e}) The {ROLE_NAMES[role]} slot shows the UNTRAINED "
                   f"architecture with random weights: its predictions and robustness mean nothing. Pass a "
                   f"trained model with `{'--model' if role == ROBUST else '--baseline'} FOLDER`.")
        return DemoModel(role, str(source), model, warning)


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
    """The robust and the standard model, the bundled examples and their features (the neighbour bank)."""

    def __init__(self, robust: DemoModel, baseline: DemoModel, examples: ExampleSet | None = None, topk: int = 5):
        self.models = {ROBUST: robust, BASELINE: baseline}
        self.examples = examples or ExampleSet.load()
        self.topk = topk
        bank = [ex.path for ex in self.examples.fashion]
        self.bank_images = {r: quantize(prepare_images(bank, m.model)) for r, m in self.models.items()}
        self.bank_features = {r: nn.functional.normalize(extract_features(m.model, self.bank_images[r]), dim=1)
                              for r, m in self.models.items()}

    @property
    def warnings(self) -> list[str]:
        return [m.warning for m in self.models.values() if m.warning]

    def _view(self, role: str, img) -> torch.Tensor:
        return quantize(prepare_images(img, self.models[role].model))

    def true_label(self, path, role: str = ROBUST) -> int | None:
        """The label of a bundled Fashion-MNIST example, if the model classifies Fashion-MNIST's classes."""
        ex = self.examples.lookup(path)
        if ex is None or ex.label is None or self.models[role].labels != self.examples.classes:
            return None
        return ex.label

    def predict(self, path) -> dict:
        """Class probabilities of both models, the robust model's view of the image, and the true class."""
        img = read_image(path)
        out = {"view": to_uint8(self._view(ROBUST, img)[0])}
        for role, m in self.models.items():
            out[role] = probabilities(m.model, self._view(role, img))
        label = self.true_label(path)
        out["true"] = self.examples.classes[label] if label is not None else None
        return out

    def _negatives(self, role: str, x: torch.Tensor) -> torch.Tensor:
        """One clean bundled image per class, minus the attacked image itself (it cannot be its own negative)."""
        imgs, seen = [], set()
        for ex, img in zip(self.examples.fashion, self.bank_images[role]):
            if ex.label not in seen and not torch.equal(img, x[0]):
                seen.add(ex.label)
                imgs.append(img)
        return torch.stack(imgs[:INSTANCE_NEGATIVES]) if imgs else x[:0]

    def _reference(self, role: str, path, x: torch.Tensor) -> int:
        """The class whose confidence we track: the true one when known, else the model's clean prediction."""
        label = self.true_label(path, role)
        if label is None:
            with torch.no_grad():
                label = int(self.models[role].model(x).argmax(1))
        return label

    def attack(self, path, method: str, eps, steps, target: str = ROBUST) -> dict:
        """Attack `target` (white-box) and show both models before and after (the other one sees a transfer)."""
        method, eps, steps = check_attack_args(method, eps, steps)
        if target not in self.models:
            raise ConfigError(f"target must be one of {', '.join(self.models)}, got {target!r}.")
        img = read_image(path)
        model = self.models[target].model
        x = self._view(target, img)
        ref = self._reference(target, path, x)
        x_adv = quantize_toward(x, run_attack(model, x, torch.tensor([ref]), method, eps, steps,
                                              self._negatives(target, x) if method == "instance" else None))
        delta = x_adv - x
        out = {"adversarial": to_uint8(x_adv[0]), "perturbation": perturbation_image(delta[0]),
               "linf": float(delta.abs().max()), "l2": float(delta.flatten().norm()),
               "reference": self.models[target].labels[ref], "reference_is_true": self.true_label(path) is not None,
               "before": {}, "after": {}}
        for role, m in self.models.items():
            out["before"][role] = probabilities(m.model, self._view(role, x))
            out["after"][role] = probabilities(m.model, self._view(role, x_adv))
        out["summary"] = self._summary(out, method, eps, steps, target)
        return out

    def _summary(self, out: dict, method: str, eps: float, steps: int, target: str) -> str:
        ref = out["reference"]
        kind = "true class" if out["reference_is_true"] else "clean prediction of the attacked model"
        lines = [f"**{METHODS[method][0]}** on **{ROLE_NAMES[target]}**, eps = {eps:g}"
                 f"{'' if method == 'fgsm' else f', {steps} steps'}: perturbation l-inf {out['linf']:.3f}, "
                 f"l2 {out['l2']:.3f}. Tracked class: **{ref}** ({kind}).", "",
                 "| model | attack | before | after | confidence in tracked class |", "|---|---|---|---|---|"]
        for role in self.models:
            before, after = out["before"][role], out["after"][role]
            b, a = next(iter(before)), next(iter(after))
            how = "white-box" if role == target else "transfer"
            lines.append(f"| {ROLE_NAMES[role]} | {how} | {b} ({before[b]:.0%}) | {a} ({after[a]:.0%}) | "
                         f"{before.get(ref, 0):.0%} -> {after.get(ref, 0):.0%} |")
        return "\n".join(lines)

    def curve(self, path, method: str, eps, steps) -> list[dict]:
        """Confidence in the tracked class against eps, each model attacked white-box with the chosen method at
        CURVE_FACTORS x eps. Rows {eps, confidence, model} for a line plot."""
        method, eps, steps = check_attack_args(method, eps, steps)
        img = read_image(path)
        rows = []
        for role, m in self.models.items():
            x = self._view(role, img)
            ref = self._reference(role, path, x)
            negatives = self._negatives(role, x) if method == "instance" else None
            for f in CURVE_FACTORS:
                e = min(f * eps, EPS_MAX[METHODS[method][1]])
                x_e = x if e == 0 else quantize_toward(x, run_attack(m.model, x, torch.tensor([ref]), method, e,
                                                                     steps, negatives))
                with torch.no_grad():
                    conf = float(m.model(x_e).softmax(1)[0, ref])
                rows.append({"eps": round(e, 6), "confidence": conf, "model": m.name})
        return rows

    def neighbours(self, path, adv_path=None, k: int = 5) -> dict:
        """Nearest bundled Fashion-MNIST examples (cosine similarity of pooled features) of the image and of its
        attacked version, per model, with the cosine similarity between the clean and attacked features."""
        img = read_image(path)
        adv = read_image(adv_path) if adv_path is not None else None
        out = {}
        for role, m in self.models.items():
            feats = [nn.functional.normalize(extract_features(m.model, self._view(role, im)), dim=1)
                     for im in ([img] if adv is None else [img, adv])]
            res = {"clean": self._nearest(role, feats[0], k), "attacked": [], "similarity": None}
            if adv is not None:
                res["attacked"] = self._nearest(role, feats[1], k)
                res["similarity"] = float((feats[0] * feats[1]).sum())
            out[role] = res
        return out

    def _nearest(self, role: str, feat: torch.Tensor, k: int) -> list[tuple[str, str]]:
        """The k most similar bank images as (path, "similarity class"): the number first, as captions get cut."""
        sims = (self.bank_features[role] @ feat[0]).tolist()
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        return [(str(self.examples.fashion[i].path), f"{sims[i]:.2f} {self.examples.fashion[i].caption}")
                for i in order]


def build_demo(model: str = "cnn4_rocl.fmnist", baseline: str = "cnn4_rocl.fmnist_simclr",
               samples_dir: Path | None = None) -> Demo:
    """Load both models (falling back to untrained zoo architectures, with warnings) and the examples."""
    return Demo(load_demo_model(model, ROBUST), load_demo_model(baseline, BASELINE), ExampleSet.load(samples_dir))


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
