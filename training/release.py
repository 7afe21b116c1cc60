"""Ship a trained classifier as a zoo entry: embedded weights, checksum and measured metrics in the registry.

    python -m training.release cnn4_rocl.fmnist results/fmnist_rocl_alf.classifier \
        --results results/cnn4_rocl.fmnist/Linf-0.1.json [more results files]

1. `rocl_zoo.export` writes the verified Hub folder (weights, config, results, model card) into
   `rocl_zoo/weights/<name>/`, the package's embedded weights (`rocl_zoo.load(name)` needs no network).
2. The registry `rocl_zoo/weights/registry.json` gets the weights' sha256 and the metrics of the first results
   file (the entry's headline threat model), plus a quick check: clean and PGD-20 accuracy on a fixed
   500-image test subset, which `tests/test_zoo_weights.py` recomputes from the shipped files.
3. The README's zoo table is regenerated.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from rocl_zoo import zoo
from rocl_zoo.errors import ConfigError, RoclZooError
from rocl_zoo.utils import sha256_file, write_json

CHECK_EXAMPLES, CHECK_SEED = 500, 0


def headline_metrics(result: dict) -> dict:
    """The registry's metrics from one results file (rocl_zoo.evaluate's schema): accuracies as fractions."""
    attacks = result.get("attacks") or {}
    aa = result.get("autoattack_acc")
    metrics = {
        "clean_acc": result["clean_acc"] / 100,
        "pgd20_acc": attacks["pgd20"]["acc"] if "pgd20" in attacks else None,
        "autoattack_acc": None if aa is None else aa / 100,
        "norm": result["threat_model"], "eps": result["eps"], "split": result.get("split", "test"),
        "n_examples": result["n_examples"], "dataset": result["dataset"],
        "protocol": result.get("protocol"), "hardware": result.get("hardware"),
    }
    if result.get("autoattack_subset"):  # AutoAttack ran on fewer of the examples (--autoattack-examples)
        metrics["autoattack_n_examples"] = result["autoattack_subset"]["n_examples"]
    return metrics


def quick_check(model, dataset: str, eps: float, norm: str) -> dict:
    """Clean and PGD-20 accuracy on a fixed test subset: cheap enough for the test suite to recompute."""
    from rocl_zoo.data import load_dataset
    from rocl_zoo.evaluate import evaluate
    from rocl_zoo.linear import as_tensors

    x, y = as_tensors(load_dataset(dataset, "test"), CHECK_EXAMPLES, CHECK_SEED)
    res = evaluate(model, x, y, attacks="clean,pgd20", eps=eps, norm=norm, seed=CHECK_SEED, progress=False)
    return {"n_examples": CHECK_EXAMPLES, "seed": CHECK_SEED, "eps": eps, "norm": norm.lower(),
            "clean_acc": res["attacks"]["clean"]["acc"], "pgd20_acc": res["attacks"]["pgd20"]["acc"]}


def release(name: str, classifier, results: list[Path], weights_dir: Path = zoo.WEIGHTS_DIR) -> dict:
    from rocl_zoo.export import export
    from rocl_zoo.hub import load

    entry = zoo.get_entry(name)
    if entry.name != name:
        raise ConfigError(f"give the full zoo name (arch.tag), e.g. {entry.name}.")
    if not results:
        raise ConfigError("a zoo entry ships with its measured results: pass --results FILE.json.")
    first = json.loads(Path(results[0]).read_text())
    out = export(classifier, weights_dir / name, onnx=False, results=results, dataset=entry.dataset,
                 recipe=entry.recipe, repo_id=entry.hf_hub_id, overwrite=True, quiet=False)
    model = load(out)
    metrics = headline_metrics(first)

    def shipped(path) -> str:  # export copies each results file into the folder as results_<its name>
        return next(f"{name}/{p.name}" for p in sorted(out.glob("results*.json")) if p.name.endswith(Path(path).name))

    metrics["results"] = shipped(results[0])
    if metrics["autoattack_acc"] is None:  # AutoAttack is often run on fewer examples, in a file of its own
        for path in results[1:]:  # the one on the most examples (the first of equals)
            other = json.loads(Path(path).read_text())
            if other.get("autoattack_acc") is not None and other.get("eps") == first["eps"] \
                    and other.get("threat_model") == first["threat_model"]:
                subset = other.get("autoattack_subset") or {}  # --autoattack-examples: fewer than the file's n
                n = subset.get("n_examples", other["n_examples"])
                if n > metrics.get("autoattack_n_examples", 0):
                    metrics.update(autoattack_acc=other["autoattack_acc"] / 100, autoattack_n_examples=n,
                                   autoattack_results=shipped(path))
    metrics["check"] = quick_check(model, entry.dataset, first["eps"], first["threat_model"].lower())
    record = {"sha256": sha256_file(out / entry.filename), "metrics": metrics}
    registry_path = weights_dir / zoo.REGISTRY_NAME
    registry = json.loads(registry_path.read_text()) if registry_path.is_file() else {}
    registry[name] = record
    write_json(registry_path, dict(sorted(registry.items())))
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.release", description=__doc__.split("\n")[0])
    p.add_argument("name", help="zoo entry, arch.tag (see rocl_zoo/zoo.py)")
    p.add_argument("classifier", help="the trained classifier: a Hub-layout folder")
    p.add_argument("--results", nargs="+", type=Path, default=[],
                   help="results files of rocl_zoo.evaluate; the first gives the registry's headline metrics")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        record = release(args.name, args.classifier, args.results)
    except RoclZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2))
    subprocess.run([sys.executable, str(Path(__file__).parents[1] / "scripts" / "update_readme.py")], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
