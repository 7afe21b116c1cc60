"""Export a model as a verified Hugging Face Hub folder: safetensors, config.json, model.onnx, results, model card.

    python -m rocl_zoo.export runs/fmnist_rocl --out export/cnn4_rocl.fmnist --onnx
    python -m rocl_zoo.export cnn4_rocl.fmnist --out export/x --onnx --results results_linf.json

The folder is built in a hidden sibling and moved into place only once it has verified itself:
- `onnx.checker` passes and the graph has a dynamic batch axis;
- ONNX Runtime's logits match PyTorch's within 1e-4 (max absolute difference) on random and real images, with
  100 % top-1 agreement;
- adversarial examples made with PGD on the PyTorch model give ONNX Runtime the same robust accuracy (within
  0.5 point) and logits;
- the folder reloads with `rocl_zoo.load` to bit-identical logits, and every recorded sha256 matches.
On any failure nothing is written and `ExportError` (an `IntegrityError`) reports the numbers.

Results files (written by `python -m rocl_zoo.evaluate`, read by `rocl_zoo.results`, which brings an older
schema to the current one) go into the folder, in the current schema, and into the model card's `model-index`.
Fields read: clean_acc, autoattack_acc, eps, threat_model ("Linf"/"L2"), dataset, split, architecture,
n_examples, attacks {name: {"acc", "config": {...}}}, and, when present, robust_acc, protocol, seed, hardware,
wall_time_s, sanity, recipe. Every accuracy is in percent, in the files and in the card.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .cli import run
from .errors import ConfigError, IntegrityError, RoclZooError
from .threat import default_eps, eps_str
from .hub import CARD_NAME, CONFIG_NAME, HF_PREFIX, WEIGHTS_NAME, architecture_of, parse_source, save_pretrained, verify_file
from .onnx import INPUT_NAME, META_ARCHITECTURE, META_INPUT_SIZE, META_LABELS, ONNX_NAME, OUTPUT_NAME
from .inference import model_input_size, prepare_images
from .utils import atomic_write, check_output_path, current_umask, sha256_file, write_json
from .zoo import ZOO, get_entry

DEFAULT_OPSET = 18
LOGIT_ATOL = 1e-4          # max |logit difference| ONNX Runtime vs PyTorch
ROBUST_ACC_TOL = 0.5       # points of robust accuracy on the adversarial batch
RESULTS_GLOB = "results*.json"
DATASET_NAMES = {"fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "stl10": "STL-10",
                 "svhn": "SVHN", "digits": "scikit-learn digits"}
PAPER = "Kim, Tack, Hwang: Adversarial Self-Supervised Contrastive Learning, NeurIPS 2020 (arXiv:2006.07589)"


class ExportError(IntegrityError):
    """An export that failed its own verification; nothing was written."""


# ------------------------------------------------------------------------------------------------ ONNX


def _dynamic_batch(proto) -> bool:
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return bool(dims) and not dims[0].HasField("dim_value")


def export_onnx(model: nn.Module, path, *, opset: int = DEFAULT_OPSET, dynamo: bool = False) -> Path:
    """Write `model` as ONNX (input `images` (batch, C, H, W) in [0, 1], output `logits`) with a dynamic batch axis,
    atomically, after `onnx.checker` passes. dynamo=False uses the TorchScript exporter (fast and reliable for
    these convolutional nets in torch 2.x); dynamo=True the torch.export-based one."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = model_input_size(model)
    x = torch.rand(2, c, h, w)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notices
            with contextlib.redirect_stdout(sys.stderr):  # the dynamo exporter prints progress
                if dynamo:
                    torch.onnx.export(model, (x,), tmp, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                      opset_version=opset, dynamo=True, external_data=False,
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
                else:
                    torch.onnx.export(model, (x,), tmp, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                      opset_version=opset, dynamo=False, do_constant_folding=True,
                                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        proto = onnx.load(tmp)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        labels = cfg.get("label_names")
        props = {META_ARCHITECTURE: architecture_of(model), META_INPUT_SIZE: json.dumps([c, h, w])}
        if labels is not None and len(labels) == model.num_classes:
            props[META_LABELS] = json.dumps([str(v) for v in labels])
        onnx.helper.set_model_props(proto, props)
        proto.producer_name = "rocl_zoo.export"
        try:
            onnx.checker.check_model(proto, full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"onnx.checker rejects the exported graph ({e}); try another --opset or --dynamo.") from e
        if not _dynamic_batch(proto):
            raise ExportError("the exported ONNX graph has a fixed batch size; it must have a dynamic batch axis.")
        onnx.save(proto, tmp)
        os.chmod(tmp, 0o644)  # mkstemp made it private; the folder's other files are world-readable
        os.replace(tmp, path)
    finally:
        model.train(was_training)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


# ------------------------------------------------------------------------------------------------ verification


def real_inputs(model: nn.Module, dataset: str | None, n: int, images=None) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """n real images at the model's input size: `images` if given, else the dataset's test split, else
    scikit-image's sample photographs. Returns (x, labels or None, description)."""
    if images is not None:
        x = prepare_images(images, model)[:n]
        return x, None, f"{len(x)} user images"
    if dataset:
        try:
            from .data import load_dataset

            ds = load_dataset(dataset, "test")
            idx = np.linspace(0, len(ds) - 1, num=min(n, len(ds))).round().astype(int)
            pairs = [ds[int(i)] for i in idx]
            x = prepare_images(torch.stack([p[0] for p in pairs]), model)
            y = torch.tensor([int(p[1]) for p in pairs])
            if model.num_classes and int(y.max()) < model.num_classes:
                return x, y, f"{len(x)} {dataset} test images"
            return x, None, f"{len(x)} {dataset} test images"
        except (ImportError, AttributeError, RoclZooError, OSError, RuntimeError, ValueError):
            pass
    try:
        import skimage.data as sk

        names = ["astronaut", "coffee", "chelsea", "camera", "rocket", "coins", "moon", "page", "horse",
                 "hubble_deep_field", "immunohistochemistry", "text", "brick", "grass", "gravel", "cell"]
        photos = []
        for name in names:
            with contextlib.suppress(Exception):
                img = np.asarray(getattr(sk, name)())
                photos.append(img.astype(np.float32) if img.dtype == bool else img)
        if photos:
            x = prepare_images(photos, model)
            x = torch.cat([x, x.flip(-1), x.flip(-2)])[:n]  # more views when n exceeds the photographs
            return x, None, f"{len(x)} scikit-image sample photographs"
    except ImportError:
        pass
    raise ExportError("no real images to check the ONNX model on: the dataset is not readable here and "
                      "scikit-image is not installed. Pass images (--images a.png b.png ...).")


def verify_onnx(model: nn.Module, onnx_path, *, x_real: torch.Tensor, y_real: torch.Tensor | None = None,
                real_desc: str = "real images", n_random: int = 16, eps: float = 8 / 255, norm: str = "linf",
                pgd_steps: int = 10, atol: float = LOGIT_ATOL, robust_tol: float = ROBUST_ACC_TOL) -> dict:
    """Compare ONNX Runtime with PyTorch; return the numbers, or raise ExportError with them."""
    from .onnx import OnnxClassifier

    clf = OnnxClassifier(onnx_path, providers=["CPUExecutionProvider"], verify=False)
    model.eval()

    @torch.no_grad()
    def torch_logits(x):
        return model(x).float().numpy()

    report = {"atol": atol, "real_inputs": real_desc}
    c, h, w = model_input_size(model)
    x_rand = torch.rand(n_random, c, h, w, generator=torch.Generator().manual_seed(0))
    xs = torch.cat([x_rand, x_real])
    a_all = torch_logits(xs)  # one PyTorch pass for both checks
    # ONNX Runtime at batch sizes 1 and n-1, neither the export's: this also checks the dynamic batch axis.
    b_all = np.concatenate([clf.logits(xs[:1].numpy()), clf.logits(xs[1:].numpy())])
    report["onnx_batch_sizes"] = [1, len(xs) - 1]
    failures = []
    for what, sl in {"random": slice(0, n_random), "real": slice(n_random, None)}.items():
        a, b = a_all[sl], b_all[sl]
        diff = float(np.abs(a - b).max())
        report[f"max_abs_diff_{what}"] = diff
        report[f"n_{what}"] = len(a)
        if not diff <= atol:  # also catches NaN
            failures.append(f"max |logit difference| on {what} inputs is {diff:.3g} > {atol:g}")
        if model.num_classes:
            agree = float((a.argmax(1) == b.argmax(1)).mean() * 100)
            report[f"top1_agreement_{what}"] = agree
            if agree < 100:
                failures.append(f"top-1 agreement on {what} inputs is {agree:.2f} % < 100 %")
    if model.num_classes and pgd_steps > 0 and eps > 0:
        from .attacks import pgd

        y = y_real if y_real is not None else torch.from_numpy(a_all[n_random:].argmax(1))
        x_adv = pgd(model, x_real, y, eps=eps, steps=pgd_steps, norm=norm, random_start=True)
        a, b = torch_logits(x_adv), clf.logits(x_adv.numpy())
        acc_t = float((a.argmax(1) == y.numpy()).mean() * 100)
        acc_o = float((b.argmax(1) == y.numpy()).mean() * 100)
        diff = float(np.abs(a - b).max())
        report.update(adversarial={"attack": f"pgd{pgd_steps}", "eps": eps, "norm": norm, "n": len(y),
                                   "labels": "dataset labels" if y_real is not None else "PyTorch predictions",
                                   "robust_acc_torch": acc_t, "robust_acc_onnx": acc_o,
                                   "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean() * 100),
                                   "max_abs_diff": diff})
        if not abs(acc_t - acc_o) <= robust_tol:
            failures.append(f"robust accuracy under PGD-{pgd_steps} is {acc_t:.2f} % in PyTorch but {acc_o:.2f} % "
                            f"in ONNX Runtime (tolerance {robust_tol} point)")
        if not diff <= atol:
            failures.append(f"max |logit difference| on adversarial inputs is {diff:.3g} > {atol:g}")
    if failures:
        raise ExportError("the ONNX model does not reproduce the PyTorch model: " + "; ".join(failures) +
                          ". Nothing was written. Try --dynamo or another --opset, and report the model if it persists.")
    import onnxruntime

    report["onnxruntime"] = onnxruntime.__version__
    return report


# ------------------------------------------------------------------------------------------------ results and card


def read_results(paths: Iterable) -> list[tuple[str, dict]]:
    """[(name in the folder, results dict in the current schema)] for results files; refuses unreadable ones."""
    from .results import folder_name, read

    out = [(folder_name(p), read(p).data) for p in paths]
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"results files with the same name {names}; rename them (results_<threat>.json).")
    return out


def _norm_of(res: dict) -> str:
    norm = str(res.get("norm") or res.get("threat_model") or "linf").lower()
    return {"linf": "linf", "l_inf": "linf", "l2": "l2", "corruptions": "corruptions"}.get(norm, norm)


_NOT_SETTINGS = {"name", "attack", "norm", "eps", "threat_model"}


def result_metrics(res: dict) -> list[dict]:
    """One {config, name, value (percent), attack, settings} per accuracy in a results file: clean, each attack,
    AutoAttack, and the per-example worst case over the attacks (corruptions: clean and their mean)."""
    from .corruptions import is_corruptions, result_metrics as corruption_metrics

    if is_corruptions(res):
        return corruption_metrics(res)
    norm, eps = _norm_of(res), res.get("eps")
    threat = f"{norm}_{eps_str(eps)}"
    out = []
    clean = res.get("clean_acc")
    for name, spec in (res.get("attacks") or {}).items():
        acc, cfg = spec.get("acc"), spec.get("config") or {}
        kind = str(cfg.get("attack", name))
        if acc is None:
            continue
        if kind == "clean":
            clean = clean if clean is not None else round(acc, 2)
            continue
        a_norm = _norm_of(cfg) if cfg.get("norm") else norm
        a_eps = cfg.get("eps", eps)
        settings = {k: v for k, v in cfg.items() if k not in _NOT_SETTINGS and v is not None}
        subset = f", on {spec['n_examples']} of the examples" if "n_examples" in spec else ""
        if subset:  # e.g. AutoAttack on a fixed random subset (rocl_zoo.evaluate --autoattack-examples)
            settings["n_examples"] = spec["n_examples"]
        out.append({"config": f"{name}_{a_norm}_{eps_str(a_eps)}", "name": f"{name} accuracy ({a_norm}, eps="
                    f"{eps_str(a_eps)}{subset})", "value": round(acc, 2), "attack": name, "kind": kind,
                    "settings": settings})
    if res.get("autoattack_acc") is not None and not any(m["kind"].lower() in ("autoattack", "aa") for m in out):
        out.append({"config": f"autoattack_{threat}", "name": f"AutoAttack accuracy ({norm}, eps={eps_str(eps)})",
                    "value": res["autoattack_acc"], "attack": "autoattack", "kind": "autoattack", "settings": {}})
    if res.get("robust_acc") is not None and len(out) > 1:
        out.append({"config": f"worst_case_{threat}", "name": f"Worst case over the attacks ({norm}, eps="
                    f"{eps_str(eps)})", "value": res["robust_acc"], "attack": "worst case", "kind": "worst_case",
                    "settings": {"over": ", ".join(m["attack"] for m in out  # not those run on a subset
                                                   if "n_examples" not in m["settings"])}})
    if clean is not None:
        out.insert(0, {"config": "clean", "name": "Clean accuracy", "value": clean, "attack": "clean",
                       "kind": "clean", "settings": {}})
    return out


def eval_results(results: Sequence[tuple[str, dict]], dataset: str | None):
    """huggingface_hub EvalResults, one per distinct metric config (the first results file wins a duplicate)."""
    from huggingface_hub import EvalResult

    seen, out = set(), []
    for _, res in results:
        ds = res.get("dataset") or dataset or "unknown"
        for m in result_metrics(res):
            key = (ds, res.get("split", "test"), m["config"])
            if key in seen:
                continue
            seen.add(key)
            out.append(EvalResult(task_type="image-classification", task_name="Image Classification",
                                  dataset_type=ds, dataset_name=DATASET_NAMES.get(ds, ds),
                                  dataset_split=res.get("split", "test"), metric_type="accuracy",
                                  metric_value=m["value"], metric_name=m["name"], metric_config=m["config"]))
    return out


def _round(values):
    return [round(float(v), 4) for v in values] if isinstance(values, (list, tuple)) else values


def _fmt(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def build_card(config: dict, results: Sequence[tuple[str, dict]], *, model_name: str, repo_id: str | None = None,
               parity: dict | None = None, description: str | None = None, files: Sequence[str] = ()) -> str:
    """README.md: YAML metadata (ModelCardData with a model-index of the results) and the text a user needs."""
    from huggingface_hub import ModelCard, ModelCardData

    from .corruptions import card_lines as corruption_card, is_corruptions

    rz = config.get("rocl_zoo") or {}
    arch = config["architecture"]
    dataset = rz.get("dataset") or next((r.get("dataset") for _, r in results if r.get("dataset")), None)
    recipe = rz.get("recipe") or next((r.get("recipe") for _, r in results if isinstance(r.get("recipe"), str)), None)
    ev = eval_results(results, dataset)
    data = ModelCardData(model_name=model_name, library_name="timm", license="mit", pipeline_tag="image-classification",
                         datasets=[dataset] if dataset else None, metrics=["accuracy"] if ev else None,
                         tags=["image-classification", "timm", "adversarial-robustness", "self-supervised-learning",
                               "rocl", "rocl-zoo"], eval_results=ev or None)
    c, h, w = config["pretrained_cfg"]["input_size"]
    L = [f"# {model_name}", ""]
    L += [description or f"`{arch}` trained with the rocl-zoo recipe `{recipe}` on "
          f"{DATASET_NAMES.get(dataset, dataset)}.", "",
          f"- Architecture: `{arch}` ({config.get('num_features')}-d features, {config.get('num_classes')} classes)",
          f"- Dataset: {DATASET_NAMES.get(dataset, dataset)} (`{dataset}`)",
          f"- Input: images in [0, 1], shape ({c}, {h}, {w}); the model normalises inside "
          f"(mean {_round(rz.get('normalization', {}).get('mean'))}, std "
          f"{_round(rz.get('normalization', {}).get('std'))}), so "
          f"eps is in pixel units.",
          f"- Zoo: rocl-zoo, built around RoCL ({PAPER}).", ""]
    L += ["## Evaluation", ""]
    if not results:
        L += ["No evaluation results were attached to this export. Measure them with `python -m rocl_zoo.evaluate` "
              "and re-export with `--results`.", ""]
    for fname, res in results:
        ds = res.get("dataset") or dataset
        if is_corruptions(res):
            L += corruption_card(fname, res, DATASET_NAMES.get(ds, ds))
            continue
        L += [f"### {_norm_of(res)}, eps = {eps_str(res.get('eps'))} (`{fname}`)", "",
              f"- Dataset: {DATASET_NAMES.get(ds, ds)}, split `{res.get('split', 'test')}`, "
              f"n_examples = {res.get('n_examples')}",
              f"- Threat model: {_norm_of(res)}, eps = {eps_str(res.get('eps'))}" +
              (f" ({res.get('eps')})" if eps_str(res.get("eps")) != str(res.get("eps")) else "")]
        for key, label in (("protocol", "Protocol"), ("seed", "Seed"), ("hardware", "Hardware")):
            if res.get(key) is not None:
                L.append(f"- {label}: {res[key]}")
        if res.get("wall_time_s") is not None:
            L.append(f"- Wall time: {res['wall_time_s']:.0f} s")
        sanity = res.get("sanity")
        if isinstance(sanity, dict) and "passed" in sanity:
            flags = sanity.get("flags") or []
            L.append("- Gradient-masking sanity checks: " + ("passed" if sanity["passed"] else
                     "FLAGGED: " + "; ".join(str(f) for f in flags)))
        L += ["", "| Attack | Settings | Accuracy |", "|---|---|---|"]
        for m in result_metrics(res):
            settings = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in m["settings"].items()) or "-"
            L.append(f"| {m['attack']} | {settings} | {_fmt(m['value'])} |")
        L.append("")
    if recipe and recipe.startswith("reproduce "):  # an entry of the experiment matrix that is not one recipe
        L += ["## Recipe", "", f"Made by `python -m training.{recipe}` in the rocl-zoo repository (its steps and "
              "budgets: `training/matrix.py`)."]
    elif recipe and model_name in ZOO:
        L += ["## Recipe", "", f"Recipe `{recipe}`: `python -m training.reproduce {model_name}` in the rocl-zoo "
              "repository remakes this entry, its training, evaluation and release (`training/matrix.py`)."]
    elif recipe:
        kind = (rz.get("training") or {}).get("kind")
        trainer = {"rocl": "pretrain", "simclr": "pretrain", "at": "supervised", "trades": "supervised"}.get(kind)
        how = f"`python -m training.{trainer} --recipe {recipe}`" if trainer else \
            f"recipe `{recipe}` of `python -m training.pretrain` or `training.supervised` (`--list-recipes`)"
        L += ["## Recipe", "", f"Trained with {how} in the rocl-zoo repository, evaluated with "
              "`python -m rocl_zoo.evaluate` and exported with `python -m rocl_zoo.export`."]
    else:
        L += ["## Recipe", "", "Not recorded: this model was exported from a source without a recipe name."]
    details = rz.get("recipe_config") or next((r["recipe"] for _, r in results if isinstance(r.get("recipe"), dict)), None)
    if details:
        L += ["", "```json", json.dumps(details, indent=2, default=str), "```"]
    load = [f'model = rocl_zoo.load("hf-hub:{repo_id}")  # sha256-verified, eval mode',
            f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True)'] if repo_id else \
        ['model = rocl_zoo.load("path/to/this/folder")  # sha256-verified, eval mode']
    if model_name in ZOO:
        load.append(f'model = rocl_zoo.load("{model_name}")  # the zoo entry, embedded in the package')
    L += ["", "## How to load", "", "```python", "import rocl_zoo, timm", "", *load,
          'rocl_zoo.predict(model, ["image.png"], topk=3)', "```", ""]
    if ONNX_NAME in files:
        L += ["ONNX Runtime (`pip install rocl-zoo[onnx]`):", "", "```python",
              "from rocl_zoo.onnx import OnnxClassifier",
              'clf = OnnxClassifier("path/to/this/folder")' + (f'  # or hf_hub_download("{repo_id}", "model.onnx")'
                                                               if repo_id else ""),
              'clf.predict(["image.png"], topk=3)', "```", ""]
    if parity:
        adv = parity.get("adversarial") or {}
        L += ["## Export verification", "",
              f"`model.onnx` (dynamic batch axis, opset {parity.get('opset')}, exporter {parity.get('exporter')}) "
              f"against PyTorch, ONNX Runtime {parity.get('onnxruntime')} on the CPU:", "",
              f"- max |logit difference|: {parity['max_abs_diff_random']:.2e} on {parity['n_random']} random "
              f"images, {parity['max_abs_diff_real']:.2e} on {parity['real_inputs']} (tolerance {parity['atol']:g})"]
        if "top1_agreement_real" in parity:
            L.append(f"- top-1 agreement: {parity['top1_agreement_random']:.0f} % random, "
                     f"{parity['top1_agreement_real']:.0f} % real")
        if adv:
            L.append(f"- {adv['attack']} ({adv['norm']}, eps {eps_str(adv['eps'])}) on PyTorch, {adv['n']} images: "
                     f"robust accuracy {adv['robust_acc_torch']:.2f} % PyTorch vs {adv['robust_acc_onnx']:.2f} % "
                     f"ONNX Runtime, max |logit difference| {adv['max_abs_diff']:.2e}")
        L.append("")
    if files:
        L += ["## Files", ""] + [f"- `{f}`" for f in files] + [""]
    L += ["## Citation", "", "```bibtex", "@inproceedings{kim2020adversarial,",
          "  title={Adversarial Self-Supervised Contrastive Learning},",
          "  author={Kim, Minseon and Tack, Jihoon and Hwang, Sung Ju},",
          "  booktitle={Advances in Neural Information Processing Systems}, year={2020}}", "```", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(L)))


# ------------------------------------------------------------------------------------------------ export


def _carried(rz: dict) -> dict:
    """What the source's config records beyond what save_pretrained writes anew (its training settings, the
    protocol that made its head): an export keeps it."""
    written = ("version", "dataset", "recipe", "normalization", "metrics", "files", "export")
    return {k: v for k, v in rz.items() if k not in written}


def _source_results(source) -> list[Path]:
    """The results files that come with a source: a folder's results*.json, a zoo entry's shipped ones."""
    if isinstance(source, nn.Module):
        return []
    kind, value, _ = parse_source(source)
    if kind == "zoo":
        folder = get_entry(value).embedded_dir
    elif kind == "folder":
        folder = Path(value)
    else:
        return []
    return sorted(folder.glob(RESULTS_GLOB)) if folder.is_dir() else []


def _check_results_fit(results, arch: str, dataset: str | None) -> None:
    for name, res in results:
        if res.get("architecture") and res["architecture"].split(".")[0] != arch:
            raise ConfigError(f"{name} holds results of {res['architecture']!r}, not {arch!r}: pass this model's "
                              f"results file.")
        if dataset and res.get("dataset") and res["dataset"] != dataset:
            raise ConfigError(f"{name} holds results on {res['dataset']!r} but the model was trained on {dataset!r}.")


def export(source, out, *, onnx: bool = True, opset: int = DEFAULT_OPSET, results: Sequence | None = None,
           images=None, dataset: str | None = None, recipe: str | None = None, repo_id: str | None = None,
           overwrite: bool = False, dynamo: bool = False, n_check: int = 32, pgd_steps: int = 10,
           eps: float | None = None, norm: str | None = None, quiet: bool = True) -> Path:
    """Write the verified Hub folder for `source` (a model, zoo name, hf-hub:ORG/NAME or folder) at `out`.

    results: results JSON files (default: the source folder's results*.json). images: real images for the
    parity check (default: the dataset's test split). eps/norm/pgd_steps: the parity attack (default: the first
    results file's threat model, else eps 8/255, 0.1 on Fashion-MNIST). Returns `out`.
    """
    from .hub import load

    def say(msg):
        if not quiet:
            print(msg, file=sys.stderr)

    out = check_output_path(out, folder=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):  # the staging folder of an export that was killed
        shutil.rmtree(stale, ignore_errors=True)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; pass --overwrite (overwrite=True) to replace it.")
    model = source if isinstance(source, nn.Module) else load(source)
    was_training = model.training
    model.eval()
    cfg = getattr(model, "pretrained_cfg", None) or {}
    rz = dict(cfg.get("rocl_zoo") or {})
    arch = architecture_of(model)
    tag = cfg.get("tag")
    model_name = repo_id.split("/")[-1] if repo_id else (f"{arch}.{tag}" if tag else arch)
    entry = ZOO.get(model_name)  # the zoo entry this folder is published as, if any
    description = entry.description + "." if entry is not None else None
    dataset = dataset or rz.get("dataset") or (entry.dataset if entry is not None else None)
    recipe = recipe or (entry.recipe if entry is not None else None) or rz.get("recipe")
    result_files = list(results) if results is not None else _source_results(source)
    parsed = read_results(result_files)
    _check_results_fit(parsed, arch, dataset)
    if not parsed:
        warnings.warn(f"exporting {arch} without results: the model card will have no model-index. Pass --results "
                      f"(from `python -m rocl_zoo.evaluate`).", stacklevel=2)
    dataset = dataset or next((r.get("dataset") for _, r in parsed if r.get("dataset")), None)
    first = parsed[0][1] if parsed else {}
    eps = float(eps if eps is not None else first.get("eps") or default_eps(dataset))  # corruptions: no eps
    norm = norm or (_norm_of(first) if parsed else "linf")
    if norm not in ("linf", "l2"):
        norm = "linf"
    retag = entry is not None and entry.name.partition(".")[2] != tag
    if retag:  # a model made from another entry's config (a baseline trained from cnn4_rocl.fmnist's) carries its
        # tag: the config must name the entry it is published as (the caller's model gets its own back below)
        model.pretrained_cfg = {**cfg, "tag": entry.name.partition(".")[2]}

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        parity = None
        t0 = time.perf_counter()
        if onnx:
            say(f"exporting {ONNX_NAME} (opset {opset}) ...")
            export_onnx(model, stage / ONNX_NAME, opset=opset, dynamo=dynamo)
            x_real, y_real, desc = real_inputs(model, dataset, n_check, images)
            say(f"verifying against PyTorch on random images, {desc} and PGD-{pgd_steps} examples ...")
            parity = verify_onnx(model, stage / ONNX_NAME, x_real=x_real, y_real=y_real, real_desc=desc,
                                 n_random=n_check, eps=eps, norm=norm, pgd_steps=pgd_steps)
            parity.update(opset=opset, exporter="dynamo" if dynamo else "torchscript",
                          seconds=round(time.perf_counter() - t0, 2))
        metrics = {m["config"] if len(parsed) == 1 else f"{Path(n).stem}:{m['config']}": m["value"]
                   for n, r in parsed for m in result_metrics(r)}
        files = [WEIGHTS_NAME, CONFIG_NAME, CARD_NAME] + ([ONNX_NAME] if onnx else []) + [n for n, _ in parsed]
        save_pretrained(model, stage, dataset=dataset, recipe=recipe, metrics=metrics,
                        extra={**_carried(rz), "export": {"parity": parity, "results": [n for n, _ in parsed],
                                                          "repo_id": repo_id}},
                        card="")  # the card needs the final config: written below
        for name, res in parsed:  # in the current schema, whatever the source file's
            write_json(stage / name, res)
        config = json.loads((stage / CONFIG_NAME).read_text())
        records = config["rocl_zoo"]["files"]
        for name in files[3:]:
            records[name] = {"sha256": sha256_file(stage / name), "size": (stage / name).stat().st_size}
        write_json(stage / CONFIG_NAME, config)
        card = build_card(config, parsed, model_name=model_name, repo_id=repo_id, parity=parity,
                          description=description, files=files)
        with atomic_write(stage / CARD_NAME, "w") as f:
            f.write(card)
        verify_folder(stage, reference=model)
        _publishable_modes(stage)
        if out.exists():
            trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, trash / "old")
            os.replace(stage, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        model.train(was_training)
        if retag:
            model.pretrained_cfg = cfg
    say(f"wrote {out}: " + ", ".join(files))
    return out


def _publishable_modes(folder: Path) -> None:
    """mkdtemp makes the staging folder private (0700); give the finished folder the usual mode of a new one."""
    os.chmod(folder, 0o777 & ~current_umask())


def verify_folder(folder, reference: nn.Module | None = None) -> dict:
    """Check an exported folder: every recorded file's sha256 and size, the model card's metadata, and (given
    `reference`) that `rocl_zoo.load(folder)` reproduces its weights and buffers exactly. Returns config.json."""
    from huggingface_hub import ModelCard

    from .hub import load

    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise IntegrityError(f"{folder} has no {CONFIG_NAME}; export it with `python -m rocl_zoo.export`.")
    config = json.loads(config_path.read_text())
    for name, rec in ((config.get("rocl_zoo") or {}).get("files") or {}).items():
        verify_file(folder / name, rec.get("sha256"), rec.get("size"), what=f" (recorded in {config_path})")
    if not (folder / CARD_NAME).is_file():
        raise IntegrityError(f"{folder} has no {CARD_NAME} model card; re-export the folder.")
    try:
        ModelCard.load(folder / CARD_NAME)
    except Exception as e:
        raise IntegrityError(f"{folder / CARD_NAME} has unreadable metadata ({e}); re-export the folder.") from e
    loaded = load(folder, verify=False)  # the checksums were verified just above
    if reference is not None:
        ref = reference.state_dict()
        bad = [k for k, v in loaded.state_dict().items() if k not in ref or not torch.equal(v.cpu(), ref[k].cpu())]
        if bad or len(ref) != len(loaded.state_dict()):
            raise ExportError(f"the exported folder reloads to different weights ({bad[:3]}...); nothing was written.")
    return config


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rocl_zoo.export", description="Write a verified Hugging Face Hub "
                                "folder (model.safetensors, config.json, model.onnx, results, README.md model card).")
    p.add_argument("source", help="training run folder, zoo name, hf-hub:ORG/NAME[@REV] or model folder")
    p.add_argument("--out", required=True, help="folder to write (must not exist, or use --overwrite)")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx and verify it against PyTorch")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    p.add_argument("--dynamo", action="store_true", help="use the torch.export-based ONNX exporter")
    p.add_argument("--results", nargs="+", metavar="FILE.json",
                   help="results files from rocl_zoo.evaluate (default: SOURCE/results*.json)")
    p.add_argument("--images", nargs="+", metavar="IMAGE", help="real images for the ONNX check "
                   "(default: the dataset's test split, else scikit-image's sample photographs)")
    p.add_argument("--n-check", type=int, default=32, help="images per ONNX check (default: %(default)s)")
    p.add_argument("--pgd-steps", type=int, default=10, help="PGD steps of the adversarial check (default: %(default)s)")
    p.add_argument("--eps", type=float, help="eps of the adversarial check (default: the results' eps)")
    p.add_argument("--dataset", help="dataset name for the card, when the source does not record it")
    p.add_argument("--recipe", help="recipe name for the card, when the source does not record it")
    p.add_argument("--repo-id", help="ORG/NAME the folder will be published to (used in the card)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    return run(_main, p.parse_args(argv))


def _main(args) -> int:
    if args.source.startswith(HF_PREFIX) and args.repo_id is None:
        args.repo_id = args.source[len(HF_PREFIX):].partition("@")[0]
    out = export(args.source, args.out, onnx=args.onnx, opset=args.opset, results=args.results,
                 images=args.images, dataset=args.dataset, recipe=args.recipe, repo_id=args.repo_id,
                 overwrite=args.overwrite, dynamo=args.dynamo, n_check=args.n_check, pgd_steps=args.pgd_steps,
                 eps=args.eps, quiet=args.quiet)
    config = json.loads((out / CONFIG_NAME).read_text())
    for name, rec in config["rocl_zoo"]["files"].items():
        print(f"{out / name}  {rec['size']:>12,d} bytes  sha256 {rec['sha256'][:16]}...")
    print(f"{out / CARD_NAME}")
    parity = config["rocl_zoo"].get("export", {}).get("parity")
    if parity:
        print(f"ONNX parity: max |logit diff| {parity['max_abs_diff_random']:.2e} random, "
              f"{parity['max_abs_diff_real']:.2e} real; " +
              (f"robust acc {parity['adversarial']['robust_acc_torch']:.2f} % torch vs "
               f"{parity['adversarial']['robust_acc_onnx']:.2f} % onnx" if parity.get("adversarial") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
