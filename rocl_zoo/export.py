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
On any failure nothing is written and `ExportError` (an `IntegrityError`) reports the numbers. The ONNX graph and
its checks: `rocl_zoo.onnx_export`; the card: `rocl_zoo.model_card`.

Results files (written by `python -m rocl_zoo.evaluate`, read by `rocl_zoo.results`, which brings an older
schema to the current one) go into the folder, in the current schema, and into the model card's `model-index`.
Fields read: clean_acc, autoattack_acc, eps, threat_model ("Linf"/"L2"), dataset, split, architecture,
n_examples, attacks {name: {"acc", "config": {...}}}, and, when present, robust_acc, protocol, seed, hardware,
wall_time_s, sanity, recipe. Every accuracy is in percent, in the files and in the card.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from .cli import run
from .errors import ConfigError, ExportError, IntegrityError
from .hub import (CARD_NAME, CONFIG_NAME, HF_PREFIX, WEIGHTS_NAME, architecture_of, load, parse_source,
                  save_pretrained, verify_file)
from .model_card import build_card, result_metrics
from .onnx import ONNX_NAME
from .onnx_export import DEFAULT_OPSET, export_onnx, real_inputs, verify_onnx
from .results import read_results
from .threat import default_eps, norm_of
from .utils import atomic_write, check_output_path, current_umask, sha256_file, write_json
from .zoo import ZOO, get_entry

RESULTS_GLOB = "results*.json"


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


def _writable_out(out, overwrite: bool) -> Path:
    """The export's folder, checked: empty or absent unless overwriting; a killed export's staging folder removed."""
    out = check_output_path(out, folder=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; pass --overwrite (overwrite=True) to replace it.")
    return out


def export(source, out, *, onnx: bool = True, opset: int = DEFAULT_OPSET, results: Sequence | None = None,
           images=None, dataset: str | None = None, recipe: str | None = None, repo_id: str | None = None,
           overwrite: bool = False, dynamo: bool = False, n_check: int = 32, pgd_steps: int = 10,
           eps: float | None = None, norm: str | None = None, quiet: bool = True,
           training_budget: list[dict] | None = None) -> Path:
    """Write the verified Hub folder for `source` (a model, zoo name, hf-hub:ORG/NAME or folder) at `out`.

    results: results JSON files (default: the source folder's results*.json). images: real images for the
    parity check (default: the dataset's test split). eps/norm/pgd_steps: the parity attack (default: the first
    results file's threat model, else eps 8/255, 0.1 on Fashion-MNIST). training_budget: the runs that made the
    weights (`training.release.training_budget`), for config.json and the card. Returns `out`.
    """
    def say(msg):
        if not quiet:
            print(msg, file=sys.stderr)

    out = _writable_out(out, overwrite)
    model = source if isinstance(source, nn.Module) else load(source)
    was_training = model.training
    model.eval()
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch, tag = architecture_of(model), cfg.get("tag")
    model_name, entry, dataset, recipe = _published_as(arch, cfg, repo_id, dataset, recipe)
    parsed = read_results(list(results) if results is not None else _source_results(source))
    _check_results_fit(parsed, arch, dataset)
    if not parsed:
        warnings.warn(f"exporting {arch} without results: the model card will have no model-index. Pass --results "
                      f"(from `python -m rocl_zoo.evaluate`).", stacklevel=2)
    dataset = dataset or next((r.get("dataset") for _, r in parsed if r.get("dataset")), None)
    first = parsed[0][1] if parsed else {}
    eps = float(eps if eps is not None else first.get("eps") or default_eps(dataset))  # corruptions: no eps
    norm = norm or (norm_of(first) if parsed else "linf")
    retag = entry is not None and entry.name.partition(".")[2] != tag
    if retag:  # a model made from another entry's config (a baseline trained from cnn4_rocl.fmnist's) carries its
        # tag: the config must name the entry it is published as (the caller's model gets its own back below)
        model.pretrained_cfg = {**cfg, "tag": entry.name.partition(".")[2]}
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        parity = None
        if onnx:
            say(f"exporting {ONNX_NAME} (opset {opset}), verifying it against PyTorch ...")
            parity = _onnx_with_parity(model, stage, dataset=dataset, images=images, opset=opset, dynamo=dynamo,
                                       n_check=n_check, pgd_steps=pgd_steps, eps=eps,
                                       norm=norm if norm in ("linf", "l2") else "linf")
        files = _write_stage(model, stage, parsed, dataset=dataset, recipe=recipe, parity=parity, repo_id=repo_id,
                             model_name=model_name, training_budget=training_budget,
                             description=entry.description + "." if entry is not None else None)
        verify_folder(stage, reference=model)
        _publishable_modes(stage)
        _swap_into_place(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        model.train(was_training)
        if retag:
            model.pretrained_cfg = cfg
    say(f"wrote {out}: " + ", ".join(files))
    return out


def _published_as(arch: str, cfg: dict, repo_id: str | None, dataset: str | None, recipe: str | None) -> tuple:
    """(model name, its zoo entry or None, dataset, recipe) of the folder: the caller's words first, then the zoo
    entry's, then what the model's config says made it."""
    tag = cfg.get("tag")
    model_name = repo_id.split("/")[-1] if repo_id else (f"{arch}.{tag}" if tag else arch)
    entry = ZOO.get(model_name)
    made = cfg.get("rocl_zoo") or {}
    dataset = dataset or made.get("dataset") or (entry.dataset if entry is not None else None)
    recipe = recipe or (entry.recipe if entry is not None else made.get("recipe"))
    return model_name, entry, dataset, recipe


def _onnx_with_parity(model: nn.Module, stage: Path, *, dataset, images, opset, dynamo, n_check, pgd_steps, eps,
                      norm) -> dict:
    """model.onnx written into `stage` and checked against PyTorch: the parity report, or ExportError."""
    t0 = time.perf_counter()
    export_onnx(model, stage / ONNX_NAME, opset=opset, dynamo=dynamo)
    x_real, y_real, desc = real_inputs(model, dataset, n_check, images)
    parity = verify_onnx(model, stage / ONNX_NAME, x_real=x_real, y_real=y_real, real_desc=desc, n_random=n_check,
                         eps=eps, norm=norm, pgd_steps=pgd_steps)
    parity.update(opset=opset, exporter="dynamo" if dynamo else "torchscript",
                  seconds=round(time.perf_counter() - t0, 2))
    return parity


def _write_stage(model: nn.Module, stage: Path, parsed, *, dataset, recipe, parity, repo_id, model_name,
                 description, training_budget=None) -> list[str]:
    """Weights, config.json (every file's sha256), the results files and the card, into `stage`: its file names."""
    rz = (getattr(model, "pretrained_cfg", None) or {}).get("rocl_zoo") or {}
    metrics = {m["config"] if len(parsed) == 1 else f"{Path(n).stem}:{m['config']}": m["value"]
               for n, r in parsed for m in result_metrics(r)}
    files = [WEIGHTS_NAME, CONFIG_NAME, CARD_NAME] + ([ONNX_NAME] if parity is not None else []) + [n for n, _ in parsed]
    save_pretrained(model, stage, dataset=dataset, recipe=recipe, metrics=metrics,
                    extra={**_carried(rz), **({"training_budget": training_budget} if training_budget else {}),
                           "export": {"parity": parity, "results": [n for n, _ in parsed], "repo_id": repo_id}},
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
    return files


def _swap_into_place(stage: Path, out: Path) -> None:
    """Move the verified stage to `out`, replacing an older folder only once the new one is whole."""
    if out.exists():
        trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, trash / "old")
        os.replace(stage, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(stage, out)


def _publishable_modes(folder: Path) -> None:
    """mkdtemp makes the staging folder private (0700); give the finished folder the usual mode of a new one."""
    os.chmod(folder, 0o777 & ~current_umask())


def verify_folder(folder, reference: nn.Module | None = None) -> dict:
    """Check an exported folder: every recorded file's sha256 and size, the model card's metadata, and (given
    `reference`) that `rocl_zoo.load(folder)` reproduces its weights and buffers exactly. Returns config.json."""
    from huggingface_hub import ModelCard

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
