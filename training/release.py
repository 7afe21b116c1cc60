"""Ship a trained classifier as a zoo entry: embedded weights, checksum and measured metrics in the registry.

    python -m training.release cnn4_rocl.fmnist runs/fmnist_rocl/classifier \
        --results results/cnn4_rocl.fmnist/linear/Linf-0.1/pgd-n10000.json [more results files]

1. `rocl_zoo.export` writes the verified Hub folder (weights, config, results, model card) into
   `<weights dir>/<name>/` (default `rocl_zoo/weights/`, the package's embedded weights: `rocl_zoo.load(name)`
   needs no network).
2. Files in the classifier's own results folder (results/<name>/<protocol>/) that measured other weights (an
   earlier release's) are removed, so that the README's tables never mix two models under one name.
3. The registry `<weights dir>/registry.json` gets the weights' sha256, the metrics of the first results file
   (the entry's headline threat model; accuracies in percent, torchvision's style) and a quick check: clean and
   PGD-20 accuracy on the first 500 images (`--check-examples`) of a fixed test permutation, which
   `tests/test_zoo_weights.py` recomputes from the shipped files. Without results files the registry gets the
   sha256 and the quick check only, at the dataset's usual l-inf budget. `--recheck` measures a shipped
   entry's quick check again (on another number of images, say) without touching its weights or metrics.
4. `python scripts/update_readme.py` (which `training.reproduce` runs after its work) renders the README's zoo
   table from the registry.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from rocl_zoo import zoo
from rocl_zoo.cli import run
from rocl_zoo.errors import ConfigError
from rocl_zoo.eval_progress import encoder_digest, weights_digest
from rocl_zoo.results import FINETUNE, LINEAR_READ_OUTS, Result, folder_name, read
from rocl_zoo.threat import CORRUPTIONS, default_eps
from rocl_zoo.utils import sha256_file, write_json

CHECK_EXAMPLES, CHECK_SEED = 500, 0


def headline_metrics(result: Result) -> dict:
    """The registry's metrics from one results file: accuracies in percent."""
    d, pgd20 = result.data, result.accuracy("pgd20")
    metrics = {
        "clean_acc": d["clean_acc"], "pgd20_acc": None if pgd20 is None else pgd20.pct,
        "autoattack_acc": d.get("autoattack_acc"),
        "norm": result.threat_model, "eps": result.eps, "split": d.get("split", "test"),
        "n_examples": result.n, "dataset": result.dataset, "protocol": result.protocol,
        "hardware": d.get("hardware"),
    }
    if d.get("autoattack_subset"):  # AutoAttack ran on fewer of the examples (--autoattack-examples)
        metrics["autoattack_n_examples"] = d["autoattack_subset"]["n_examples"]
    return metrics


def best_autoattack(metrics: dict, first: Result, others: list[tuple[str, Result]]) -> None:
    """AutoAttack is often run on fewer examples, in a file of its own: when the headline file has none, the
    one in its threat model on the most examples (the first of equals), with that file's shipped name."""
    for shipped, other in others:
        aa = other.data.get("autoattack_acc")
        if aa is None or (other.eps, other.threat_model) != (first.eps, first.threat_model):
            continue
        n = (other.data.get("autoattack_subset") or {}).get("n_examples", other.n)  # --autoattack-examples
        if n > metrics.get("autoattack_n_examples", 0):
            metrics.update(autoattack_acc=aa, autoattack_n_examples=n, autoattack_results=shipped)


def quick_check(model, dataset: str, eps: float, norm: str, n: int = CHECK_EXAMPLES) -> dict:
    """Clean and PGD-20 accuracy on the first n of a fixed test permutation: cheap enough for the test suite to
    recompute."""
    from rocl_zoo.data import load_dataset
    from rocl_zoo.evaluate import evaluate
    from rocl_zoo.linear import as_tensors

    x, y = as_tensors(load_dataset(dataset, "test"), n, CHECK_SEED)
    res = evaluate(model, x, y, attacks="clean,pgd20", eps=eps, norm=norm, seed=CHECK_SEED, progress=False)
    return {"n_examples": n, "seed": CHECK_SEED, "eps": eps, "norm": norm.lower(),
            "clean_acc": res["attacks"]["clean"]["acc"], "pgd20_acc": res["attacks"]["pgd20"]["acc"]}


def training_budget(folder: Path) -> list[dict]:
    """The runs behind a classifier folder, encoder first (`rocl_zoo.loop.RunFolder.budget`): the folder's own run
    (the folder it sits in, when that holds a metrics.jsonl; a linear head's training otherwise, `head_budget`)
    and, through the `encoder` its config names, the encoder's, and so on back."""
    from rocl_zoo.loop import RunFolder

    stages, seen = [], set()
    while folder is not None and folder.resolve() not in seen:
        seen.add(folder.resolve())
        config = folder / "config.json"
        rz = (json.loads(config.read_text()).get("rocl_zoo") or {}) if config.is_file() else {}
        budget = RunFolder(folder.parent).budget(shipped=folder.name) or head_budget(folder, rz.get("protocol"))
        if budget:
            stages.insert(0, budget)
        # an encoder folder may be gone (the flagship's is not committed) while its run's metrics.jsonl is here
        folder = Path(rz["encoder"]) if isinstance(rz.get("encoder"), str) else None
    return stages


def head_budget(folder: Path, protocol: dict | None) -> dict | None:
    """A linear head's training (`rocl_zoo.evaluate --save-classifier`) as a budget stage: its epochs and time from
    the protocol config it carries, its hardware from the results file written beside it (`<folder>.json`, as
    training/matrix.py's head items write it), if there."""
    from rocl_zoo.utils import hardware_clock, hardware_threads

    if not protocol or protocol.get("train_time_s") is None:
        return None
    beside = folder.with_name(folder.name + ".json")
    hardware = json.loads(beside.read_text()).get("hardware") if beside.is_file() else None
    hours = protocol["train_time_s"] / 3600 * hardware_threads(hardware)
    return {"run": f"{protocol.get('protocol', 'linear')} head", "epochs": protocol.get("epochs"),
            "shipped_epoch": protocol.get("epochs"), "hardware": hardware or "not recorded",
            "clock": hardware_clock(hardware), "hours": round(hours, 2)}


def retire_superseded(name: str, results: list[Path], model, weights_changed: bool = True) -> list[Path]:
    """Remove the results files of the shipped classifier that measured other weights, so that no table mixes them
    with the new ones. In its own results folder (results/<name>/<protocol>/, the first results file's): a file
    whose `weights_sha256` is not the model's, or, from before results named their weights and only when the
    release replaces the entry's weights, whose `source` is not the first file's. Where it is a linear read-out,
    in the other read-out's folder (the ALF head beside a shipped SLF one): a file whose `encoder_sha256` is not
    the model's encoder's, or, only when the weights change, that names no encoder; in its fine-tunings' folders
    (results/<name>/finetune-*), the same by `start_encoder_sha256`. The removed paths (git keeps them)."""
    if not results:
        return []
    folder = Path(results[0]).resolve().parents[1]
    if folder.parent.name != name:  # not the results/<model>/<protocol>/<threat model>/ layout
        return []
    digest, encoder, source = weights_digest(model), encoder_digest(model), read(results[0]).data.get("source")

    def own(data: dict) -> bool:
        if "weights_sha256" in data:
            return data["weights_sha256"] == digest
        return not weights_changed or data.get("source") == source

    def same_encoder(data: dict, key: str = "encoder_sha256") -> bool:
        return data[key] == encoder if key in data else not weights_changed

    def started_here(data: dict) -> bool:
        return same_encoder(data, "start_encoder_sha256")

    checks = [(folder, own)]
    if folder.name in LINEAR_READ_OUTS and encoder:
        checks += [(folder.parent / p, same_encoder) for p in LINEAR_READ_OUTS if p != folder.name]
    if encoder:  # fine-tunings of the entry's encoder, on any dataset (results/<name>/finetune-<mode>[.dataset]/)
        checks += [(p, started_here) for p in sorted(folder.parent.glob(FINETUNE + "*"))]
    shipped = {Path(p).resolve() for p in results}
    gone = []
    for where, keep in checks:
        for path in sorted(where.rglob("*.json")):
            if path.resolve() not in shipped and not keep(read(path).data):
                path.unlink()
                gone.append(path)
    return gone


def release(name: str, classifier, results: list[Path] = (), weights_dir: Path | None = None,
            check_examples: int = CHECK_EXAMPLES) -> dict:
    from rocl_zoo.export import export
    from rocl_zoo.hub import load

    entry = zoo.get_entry(name)
    if entry.name != name:
        raise ConfigError(f"give the full zoo name (arch.tag), e.g. {entry.name}.")
    weights_dir = Path(weights_dir or zoo.WEIGHTS_DIR)
    read_back = [(f"{name}/{folder_name(p)}", read(p)) for p in results]  # as export names the copies
    out = export(classifier, Path(weights_dir) / name, onnx=False, results=list(results), dataset=entry.dataset,
                 recipe=entry.recipe, repo_id=entry.hf_hub_id, overwrite=True, quiet=False,
                 training_budget=training_budget(Path(classifier)))
    metrics, eps, norm = {}, default_eps(entry.dataset, "linf"), "linf"  # no results: the dataset's usual budget
    if read_back:
        (shipped, first), others = read_back[0], read_back[1:]
        metrics = {**headline_metrics(first), "results": shipped}
        if metrics["autoattack_acc"] is None:
            best_autoattack(metrics, first, others)
        eps, norm = first.eps, first.threat_model.lower()
        for shipped, other in others:  # the corruptions threat model: its mean beside the headline numbers
            if other.threat_model == CORRUPTIONS:
                metrics.update(corruptions_acc=other.data.get("corruptions_acc"), corruptions_results=shipped)
    shipped_model = load(out)
    metrics["check"] = quick_check(shipped_model, entry.dataset, eps, norm, check_examples)
    record = {"sha256": sha256_file(out / entry.filename), "metrics": metrics}
    registry_path, registry = read_registry(weights_dir)
    changed = registry.get(name, {}).get("sha256") != record["sha256"]
    for path in retire_superseded(name, list(results), shipped_model, changed):
        print(f"removed {path}: it measured other weights than {name}'s new ones", file=sys.stderr)
    registry[name] = record
    write_json(registry_path, dict(sorted(registry.items())))
    return record


def read_registry(weights_dir: Path | None) -> tuple[Path, dict]:
    """(path, records) of the registry in `weights_dir` (default: the package's weights folder); {} if none yet."""
    path = Path(weights_dir or zoo.WEIGHTS_DIR) / zoo.REGISTRY_NAME
    return path, json.loads(path.read_text()) if path.is_file() else {}


def recheck(name: str, weights_dir: Path | None = None, check_examples: int = CHECK_EXAMPLES) -> dict:
    """Measure a released entry's quick check again, on `check_examples` images, from its shipped weights (their
    sha256 checked against the registry first); the registry's record keeps everything else."""
    from rocl_zoo.hub import load

    entry = zoo.get_entry(name)
    registry_path, registry = read_registry(weights_dir)
    if name not in registry:
        raise ConfigError(f"{name} is not released in {registry_path}: release it first (python -m training.release "
                          f"{name} CLASSIFIER --results ...).")
    folder = registry_path.parent / name
    if sha256_file(folder / entry.filename) != registry[name]["sha256"]:
        raise ConfigError(f"{folder / entry.filename} is not the file the registry records (sha256 differs): "
                          "release the weights again instead of re-checking them.")
    old = registry[name]["metrics"]["check"]
    registry[name]["metrics"]["check"] = quick_check(load(folder), entry.dataset, old["eps"], old["norm"],
                                                     check_examples)
    write_json(registry_path, registry)
    return registry[name]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.release", description=__doc__.split("\n")[0])
    p.add_argument("name", help="zoo entry, arch.tag (`rocl_zoo.list_models()`)")
    p.add_argument("classifier", nargs="?", help="the trained classifier: a Hub-layout folder")
    p.add_argument("--results", nargs="+", type=Path, default=[],
                   help="results files of rocl_zoo.evaluate; the first gives the registry's headline metrics "
                        "(default: none; the registry then holds the checksum and the quick check)")
    p.add_argument("--weights-dir", type=Path, default=None, metavar="DIR",
                   help="where the entry's folder and registry.json go (default: $ROCL_ZOO_WEIGHTS, else the "
                        "package's rocl_zoo/weights/)")
    p.add_argument("--check-examples", type=int, default=CHECK_EXAMPLES, metavar="N",
                   help="test images of the quick check the registry records and the test suite repeats "
                        f"(default: {CHECK_EXAMPLES}; fewer for a model whose PGD-20 is slow on a CPU)")
    p.add_argument("--recheck", action="store_true",
                   help="no CLASSIFIER: measure the released entry's quick check again on --check-examples images "
                        "(its weights, checksum and metrics stay)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return run(_main, p.parse_args(argv))


def _main(args) -> int:
    if args.check_examples < 1:
        raise ConfigError("--check-examples must be at least 1.")
    if args.recheck != (args.classifier is None):
        raise ConfigError("give a CLASSIFIER folder to release, or --recheck without one.")
    if args.recheck:
        print(json.dumps(recheck(args.name, args.weights_dir, args.check_examples), indent=2))
        return 0
    record = release(args.name, args.classifier, args.results, weights_dir=args.weights_dir,
                     check_examples=args.check_examples)
    print(json.dumps(record, indent=2))
    print("the README's zoo table comes from the registry: `python scripts/update_readme.py` refreshes it "
          "(`python -m training.reproduce` does after its runs); `python -m training.reproduce --record "
          f"release/{args.name}` records what this release was made from", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
