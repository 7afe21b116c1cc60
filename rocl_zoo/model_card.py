"""Model cards: the one writer of a model folder's README.md, its YAML metadata (a model-index of the measured
results, as the Hub renders them) and the text a user needs: what the model is, how it was measured, how it was
made, how to load it, how its export was verified.

`build_card(config, results, model_name=...)` takes the folder's config.json and its results files (each in the
current schema, `rocl_zoo.results`); `rocl_zoo.hub.save_pretrained` and `rocl_zoo.export` both write through it.
Every accuracy is in percent.
"""
from __future__ import annotations

import json
from typing import Sequence

from .corruption_eval import entry_name, is_corruptions
from .hub import ONNX_NAME
from .threat import CORRUPTIONS, eps_str, norm_of
from .zoo import ZOO

DATASET_NAMES = {"fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "stl10": "STL-10",
                 "svhn": "SVHN", "digits": "scikit-learn digits"}
PAPER = "Kim, Tack, Hwang: Adversarial Self-Supervised Contrastive Learning, NeurIPS 2020 (arXiv:2006.07589)"
CITATION = ["## Citation", "", "```bibtex", "@inproceedings{kim2020adversarial,",
            "  title={Adversarial Self-Supervised Contrastive Learning},",
            "  author={Kim, Minseon and Tack, Jihoon and Hwang, Sung Ju},",
            "  booktitle={Advances in Neural Information Processing Systems}, year={2020}}", "```", ""]
TRAINERS = {"rocl": "pretrain", "simclr": "pretrain", "at": "supervised", "trades": "supervised"}


def build_card(config: dict, results: Sequence[tuple[str, dict]], *, model_name: str, repo_id: str | None = None,
               parity: dict | None = None, description: str | None = None, files: Sequence[str] = ()) -> str:
    """README.md: YAML metadata (ModelCardData with a model-index of the results) and the text a user needs.

    results: [(file name in the folder, results dict)]; parity: `rocl_zoo.onnx_export.verify_onnx`'s report;
    description: the opening paragraph (default: the architecture, recipe and dataset); files: the folder's files.
    """
    from huggingface_hub import ModelCard, ModelCardData

    rz = config.get("rocl_zoo") or {}
    dataset = rz.get("dataset") or next((r.get("dataset") for _, r in results if r.get("dataset")), None)
    recipe = rz.get("recipe") or next((r.get("recipe") for _, r in results if isinstance(r.get("recipe"), str)), None)
    ev = eval_results(results, dataset)
    data = ModelCardData(model_name=model_name, library_name="timm", license="mit", pipeline_tag="image-classification",
                         datasets=[dataset] if dataset else None, metrics=["accuracy"] if ev else None,
                         tags=["image-classification", "timm", "adversarial-robustness", "self-supervised-learning",
                               "rocl", "rocl-zoo"], eval_results=ev or None)
    lines = (_summary(config, model_name, dataset, recipe, description) + _evaluation(results, dataset)
             + _recipe(rz, recipe, model_name, results) + _budget(rz) + _how_to_load(model_name, repo_id, files)
             + _parity(parity))
    if files:
        lines += ["## Files", ""] + [f"- `{f}`" for f in files] + [""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines + CITATION)))


def _summary(config: dict, model_name: str, dataset: str | None, recipe: str | None, description: str | None):
    rz, arch = config.get("rocl_zoo") or {}, config["architecture"]
    c, h, w = config["pretrained_cfg"]["input_size"]
    norm = rz.get("normalization", {})
    return [f"# {model_name}", "",
            description or f"`{arch}` trained with the rocl-zoo recipe `{recipe}` on "
                           f"{DATASET_NAMES.get(dataset, dataset)}.",
            "",
            f"- Architecture: `{arch}` ({config.get('num_features')}-d features, {config.get('num_classes')} classes)",
            f"- Dataset: {DATASET_NAMES.get(dataset, dataset)} (`{dataset}`)",
            f"- Input: images in [0, 1], shape ({c}, {h}, {w}); the model normalises inside "
            f"(mean {_round(norm.get('mean'))}, std {_round(norm.get('std'))}), so eps is in pixel units.",
            f"- Zoo: rocl-zoo, built around RoCL ({PAPER}).", ""]


def _evaluation(results: Sequence[tuple[str, dict]], dataset: str | None) -> list[str]:
    lines = ["## Evaluation", ""]
    if not results:
        lines += ["No evaluation results come with this folder. Measure them with `python -m rocl_zoo.evaluate` and "
                  "export the folder with `python -m rocl_zoo.export --results`.", ""]
    for fname, res in results:
        ds = res.get("dataset") or dataset
        lines += _corruption_section(fname, res, DATASET_NAMES.get(ds, ds)) if is_corruptions(res) else \
            _threat_section(fname, res, ds)
    return lines


def _threat_section(fname: str, res: dict, ds: str | None) -> list[str]:
    """One results file under one threat model: how it was measured, then one row per accuracy."""
    eps = res.get("eps")
    lines = [f"### {norm_of(res)}, eps = {eps_str(eps)} (`{fname}`)", "",
             f"- Dataset: {DATASET_NAMES.get(ds, ds)}, split `{res.get('split', 'test')}`, "
             f"n_examples = {res.get('n_examples')}",
             f"- Threat model: {norm_of(res)}, eps = {eps_str(eps)}"
             + (f" ({eps})" if eps_str(eps) != str(eps) else "")]
    for key, label in (("protocol", "Protocol"), ("seed", "Seed"), ("hardware", "Hardware")):
        if res.get(key) is not None:
            lines.append(f"- {label}: {res[key]}")
    if res.get("wall_time_s") is not None:
        lines.append(f"- Wall time: {res['wall_time_s']:.0f} s")
    sanity = res.get("sanity")
    if isinstance(sanity, dict) and "passed" in sanity:
        lines.append("- Gradient-masking sanity checks: " + ("passed" if sanity["passed"] else
                     "FLAGGED: " + "; ".join(str(f) for f in sanity.get("flags") or [])))
    lines += ["", "| Attack | Settings | Accuracy |", "|---|---|---|"]
    for m in result_metrics(res):
        settings = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in m["settings"].items()) or "-"
        lines.append(f"| {m['attack']} | {settings} | {_fmt(m['value'])} |")
    return lines + [""]


def _recipe(rz: dict, recipe: str | None, model_name: str, results) -> list[str]:
    """How the weights were made, and the command that makes them again."""
    if model_name in ZOO and recipe:
        lines = ["## Recipe", "", f"Recipe `{recipe}`: `{ZOO[model_name].command}` in the rocl-zoo repository "
                 "remakes this entry, its training, evaluation and release (`training/matrix.py`)."]
    elif model_name in ZOO:  # an entry of the experiment matrix that is not one recipe
        lines = ["## Recipe", "", f"Made by `{ZOO[model_name].command}` in the rocl-zoo repository (its steps and "
                 "budgets: `training/matrix.py`)."]
    elif rz.get("finetune") or (rz.get("protocol") and rz.get("encoder")):  # a classifier made from an encoder
        how = f"`python -m rocl_zoo.finetune --mode {rz['finetune'].get('mode')}`" if rz.get("finetune") else \
            f"`python -m rocl_zoo.evaluate --protocol {rz['protocol'].get('protocol')}` (a linear head on the frozen " \
            "encoder)"
        lines = ["## Recipe", "", f"Made from the encoder `{rz.get('encoder')}` by {how}; every setting is in "
                 "config.json (`rocl_zoo` block)."]
    elif recipe:
        trainer = TRAINERS.get((rz.get("training") or {}).get("kind"))
        how = f"`python -m training.{trainer} --recipe {recipe}`" if trainer else \
            f"recipe `{recipe}` of `python -m training.pretrain` or `training.supervised` (`--list-recipes`)"
        lines = ["## Recipe", "", f"Trained with {how} in the rocl-zoo repository, evaluated with "
                 "`python -m rocl_zoo.evaluate` and exported with `python -m rocl_zoo.export`."]
    else:
        lines = ["## Recipe", "", "Not recorded: this model was exported from a source without a recipe name."]
    details = rz.get("recipe_config") or next((r["recipe"] for _, r in results if isinstance(r.get("recipe"), dict)),
                                              None)
    if details:
        lines += ["", "```json", json.dumps(details, indent=2, default=str), "```"]
    return lines


def _budget(rz: dict) -> list[str]:
    """The training runs behind the weights (`training_budget`, written by `training.release`), encoder first."""
    stages = rz.get("training_budget") or []
    if not stages:
        return []
    lines = ["", "## Training budget", "",
             "| Run | Epochs run | Epoch shipped | Hardware | Time |", "|---|---:|---:|---|---:|"]
    for s in stages:
        lines.append(f"| `{s['run']}` | {s['epochs']} | {s['shipped_epoch']} | {s['hardware']} | "
                     f"{s['hours']:.2f} {s['clock']}-hours |")
    return lines + ["", "CPU-hours are torch threads x wall time; GPU-hours are wall time.", ""]


def _how_to_load(model_name: str, repo_id: str | None, files: Sequence[str]) -> list[str]:
    load = [f'model = rocl_zoo.load("hf-hub:{repo_id}")  # sha256-verified, eval mode',
            f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True)'] if repo_id else \
        ['model = rocl_zoo.load("path/to/this/folder")  # sha256-verified, eval mode']
    if model_name in ZOO:
        load.append(f'model = rocl_zoo.load("{model_name}")  # the zoo entry, embedded in the package')
    lines = ["", "## How to load", "", "```python", "import rocl_zoo, timm", "", *load,
             'rocl_zoo.predict(model, ["image.png"], topk=3)', "```", ""]
    if ONNX_NAME in files:
        lines += ["ONNX Runtime (`pip install rocl-zoo[onnx]`):", "", "```python",
                  "from rocl_zoo.onnx import OnnxClassifier",
                  'clf = OnnxClassifier("path/to/this/folder")' + (f'  # or hf_hub_download("{repo_id}", "model.onnx")'
                                                                   if repo_id else ""),
                  'clf.predict(["image.png"], topk=3)', "```", ""]
    return lines


def _parity(parity: dict | None) -> list[str]:
    """The ONNX export's verification against PyTorch, in numbers."""
    if not parity:
        return []
    adv = parity.get("adversarial") or {}
    lines = ["## Export verification", "",
             f"`model.onnx` (dynamic batch axis, opset {parity.get('opset')}, exporter {parity.get('exporter')}) "
             f"against PyTorch, ONNX Runtime {parity.get('onnxruntime')} on the CPU:", "",
             f"- max |logit difference|: {parity['max_abs_diff_random']:.2e} on {parity['n_random']} random "
             f"images, {parity['max_abs_diff_real']:.2e} on {parity['real_inputs']} (tolerance {parity['atol']:g})"]
    if "top1_agreement_real" in parity:
        lines.append(f"- top-1 agreement: {parity['top1_agreement_random']:.0f} % random, "
                     f"{parity['top1_agreement_real']:.0f} % real")
    if adv:
        lines.append(f"- {adv['attack']} ({adv['norm']}, eps {eps_str(adv['eps'])}) on PyTorch, {adv['n']} images: "
                     f"robust accuracy {adv['robust_acc_torch']:.2f} % PyTorch vs {adv['robust_acc_onnx']:.2f} % "
                     f"ONNX Runtime, max |logit difference| {adv['max_abs_diff']:.2e}")
    return lines + [""]


_NOT_SETTINGS = {"name", "attack", "norm", "eps", "threat_model"}


def result_metrics(res: dict) -> list[dict]:
    """One {config, name, value (percent), attack, settings} per accuracy in a results file: clean, each attack,
    AutoAttack, and the per-example worst case over the attacks (corruptions: clean and their mean)."""
    if is_corruptions(res):
        return _corruption_metrics(res)
    norm, eps = norm_of(res), res.get("eps")
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
        a_norm = norm_of(cfg) if cfg.get("norm") else norm
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
        out.insert(0, _clean_metric(clean))
    return out


def _clean_metric(value: float) -> dict:
    return {"config": "clean", "name": "Clean accuracy", "value": value, "attack": "clean", "kind": "clean",
            "settings": {}}


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


def _corruption_metrics(res: dict) -> list[dict]:
    """A corruptions file's metrics for the model-index (`result_metrics`'s format):
    clean accuracy and the mean corruption accuracy; the card's table has the rest."""
    block = res.get("corruptions") or {}
    over = f"{len(block.get('types', []))} types x {len(block.get('severities', []))} severities"
    out = [] if res.get("clean_acc") is None else [_clean_metric(res["clean_acc"])]
    if res.get("corruptions_acc") is not None:
        out.append({"config": CORRUPTIONS, "name": f"Mean corruption accuracy ({over})",
                    "value": res["corruptions_acc"], "attack": CORRUPTIONS, "kind": CORRUPTIONS,
                    "settings": {"over": over, "version": block.get("version")}})
    return out


def _corruption_section(fname: str, res: dict, dataset_name: str) -> list[str]:
    """A corruptions results file's section: the mean in one line, then type x severity."""
    block, attacks = res.get("corruptions") or {}, res.get("attacks") or {}
    types, sevs = block.get("types") or [], block.get("severities") or []
    lines = [f"### Common corruptions (`{fname}`)", "",
             f"- Mean corruption accuracy: {res.get('corruptions_acc', float('nan')):.2f} % over {len(types)} "
             f"corruption types x {len(sevs)} severities (clean {res.get('clean_acc', float('nan')):.2f} %)",
             f"- Dataset: {dataset_name}, split `{res.get('split', 'test')}`, n_examples = {res.get('n_examples')}",
             f"- Corrupted images: MNIST-C's types (Mu & Gilmer 2019) at 5 severities, made by `rocl_zoo.corruptions` "
             f"(version {block.get('version')}, seed {block.get('seed')}; each type's sha256 in the results file)"]
    for key, label in (("protocol", "Protocol"), ("hardware", "Hardware")):
        if res.get(key) is not None:
            lines.append(f"- {label}: {res[key]}")
    lines += ["", "| Corruption | " + " | ".join(f"severity {s}" for s in sevs) + " | Mean |",
              "|---|" + "---:|" * (len(sevs) + 1)]
    for c in types:
        accs = [(attacks.get(entry_name(c, s)) or {}).get("acc") for s in sevs]
        lines.append(f"| {c} | " + " | ".join("–" if a is None else f"{a:.2f}" for a in accs)
                     + f" | {(block.get('by_type') or {}).get(c, float('nan')):.2f} |")
    by_sev = block.get("by_severity") or {}
    lines += ["| **mean** | " + " | ".join(f"{by_sev.get(str(s), float('nan')):.2f}" for s in sevs)
              + f" | **{res.get('corruptions_acc', float('nan')):.2f}** |", ""]
    return lines
