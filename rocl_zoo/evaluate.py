"""Robustness evaluation: a model, its test images and an attack suite in; one results file out.

    python -m rocl_zoo.evaluate cnn4_rocl.fmnist --attacks clean,pgd20,autoattack --out results/x.json
    python -m rocl_zoo.evaluate ENCODER --protocol linear --epochs 20 --dataset fashion_mnist --sanity
    python -m rocl_zoo.evaluate --table results/
    torchrun --nproc_per_node=4 -m rocl_zoo.evaluate cnn4_rocl.fmnist --attacks clean,autoattack --n-examples 0 \
        --out results/x.json     # each process attacks every 4th batch; the merged file equals one process's

From Python: `evaluate(model, x, y, attacks=..., eps=..., norm=...)` returns the results dict. Its parts have
homes of their own: the attack specs and the batch runner `rocl_zoo.attack_suite`, resuming
`rocl_zoo.eval_progress`, the gradient-masking checks `rocl_zoo.sanity`, reading results back and the markdown table
`rocl_zoo.results`, the linear protocols (SLF / ALF) `rocl_zoo.linear`, corruptions `rocl_zoo.corruption_eval`.

A results file describes one model under one threat model (norm, eps). It carries RobustBench's keys
(clean_acc, autoattack_acc, eps, dataset, threat_model "Linf"/"L2", architecture) and ours: every attack's config,
accuracy and wall time, n_examples, seed and batch size, hardware, wall time and the sanity flags. Every accuracy
is in percent (schema `rocl_zoo.results.SCHEMA`; the sanity checks' own values stay fractions, as their tolerances
are); where a file belongs under results/ and how it is read back: `rocl_zoo.results`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__, cli, precision
from . import attacks as A
from .attack_suite import DEFAULT_ATTACKS, correct_under, fraction, parse_attacks
from .cli import add_runtime_args, model_and_dataset
from .distributed import Dist, barrier, world_and_rank
from .data import load_dataset
from .errors import ConfigError, DataError
from .eval_progress import EvalProgress, evaluation_fingerprint, weights_meta
from .hub import load, save_pretrained
from .linear import as_tensors, train_linear_head
from .loop import RunFolder
from .results import SCHEMA, read_all, render_table
from .sanity import check_autoattack, run_sanity_checks
from .threat import THREAT_MODELS, alf_step, default_eps, eps_str, parse_eps
from .utils import check_output_path, hardware_name, remove_stale_temporaries, resolve_device, write_json


def _attacked_views(model: nn.Module, source_model: nn.Module | None, probe: torch.Tensor):
    """The model and the transfer source as the attacks see them: BatchNorm folded where that gives the same logits
    on `probe` (`rocl_zoo.attacks.checked_attack_view`)."""
    net = A.checked_attack_view(model, probe)
    return net, A.checked_attack_view(source_model, probe) if source_model is not None else None


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attacks="clean,pgd20", eps: float = 8 / 255,
             norm: str = "linf", batch_size: int = 256, seed: int = 0, source_model: nn.Module | None = None,
             source_name: str | None = None, sanity: bool = False, sanity_examples: int = 200,
             num_classes: int | None = None, autoattack_examples: int = 0, progress: bool = True,
             meta: dict | None = None, resume=None, fold_bn: bool = True) -> dict:
    """Run the attack suite on (x, y) and return the results dict (see the module docstring).

    attacks: a comma-separated string or a list of specs (see `rocl_zoo.attack_suite.parse_attack`). source_model:
    also run every white-box attack as a black-box transfer from it ("transfer-<name>"). autoattack_examples: run
    AutoAttack on a fixed random subset of this many examples only (0 = all); "autoattack_subset" then holds clean
    and PGD accuracy on the same subset. Accuracies are in percent: full precision in the "attacks" block, rounded
    to two decimals in RobustBench's keys. resume: a file that keeps every finished attack batch (see
    `rocl_zoo.eval_progress.EvalProgress`); the same call after an interruption picks up there, and the file is
    removed once the evaluation is done. fold_bn: attack a channels_last copy with every BatchNorm folded into its
    convolution (`rocl_zoo.attacks.checked_attack_view`: used where it gives the model's logits and input gradients;
    faster on a CPU, `benchmarks/bench_fold.py`); False attacks the model as it is.
    """
    cfgs = parse_attacks(attacks, eps, norm, x[0].numel())
    device = next(model.parameters()).device
    out_dim = _output_dim(model, source_model, source_name, x)  # checks the transfer source too: always run
    num_classes = num_classes or out_dim
    if autoattack_examples < 0:
        raise ConfigError(f"autoattack_examples must be >= 0, got {autoattack_examples}.")
    t_start = time.time()
    # AutoAttack is the slowest attack by far; its subset is a prefix of the sanity checks' fixed permutation
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    aa_idx = perm[:autoattack_examples] if 0 < autoattack_examples < len(y) else None
    jobs = _attack_jobs(cfgs, source_model, source_name)
    log = None
    if resume is not None:
        settings = {"jobs": [c for c, _ in jobs], "eps": eps, "norm": norm, "batch_size": batch_size, "seed": seed,
                    "autoattack_examples": autoattack_examples, "device": device.type}  # GPU numbers differ a bit
        log = EvalProgress(resume, evaluation_fingerprint(model, x, y, settings, source_model), progress=progress)
    resumed = len(log.batches) if log else 0
    # after the fingerprint, which names the model's own weights
    net, source_net = _attacked_views(model, source_model, x[:8].to(device)) if fold_bn else (model, source_model)
    jobs = [(c, source_net if src is not None else None) for c, src in jobs]
    results, per_example = _run_jobs(net, x, y, jobs, aa_idx, batch_size=batch_size, seed=seed, progress=progress,
                                     log=log, resumed=resumed)
    clean_names, white_pgd, aa_names = _names_by_role(results, norm, eps)
    out = _summary(model, results, per_example, clean_names, white_pgd, aa_names, eps=eps, norm=norm, n=len(y),
                   seed=seed, batch_size=batch_size, meta=meta)
    out["bn_folded"] = net is not model  # how the attacks saw it (False: asked not to, or fx could not trace it)
    if source_model is not None:
        out["transfer_from"] = source_name
    if resumed:
        out["resumed_batches"] = resumed  # attacked by an earlier, interrupted run: its wall time is not in here
    out.update(_autoattack_fields(per_example, aa_names, aa_idx, clean_names, white_pgd))
    if sanity:  # under torchrun every process runs its share of their batches, as of the attacks' (merged alike)
        out["sanity"] = _sanity(net, x, y, perm[:min(sanity_examples, len(y))], results, per_example, white_pgd,
                                aa_names, aa_idx, eps=eps, norm=norm, num_classes=num_classes,
                                source_model=source_net, source_name=source_name, batch_size=batch_size,
                                seed=seed, progress=progress)
    out["wall_time_s"] = round(time.time() - t_start, 3)
    if log:
        barrier()  # no process removes the batches it kept (and its siblings') while another may still fail
        log.remove()
    return out


def _autoattack_fields(per_example: dict, aa_names: list, aa_idx, clean_names: list, white_pgd: list) -> dict:
    """How many images AutoAttack ran on and, on a subset, the weaker attacks' accuracy on the same images (to
    compare like with like)."""
    if not aa_names:
        return {}
    fields = {"autoattack_n_examples": len(per_example[aa_names[0]])}
    if aa_idx is not None:
        fields["autoattack_subset"] = {"n_examples": len(aa_idx),
                                       "clean_acc": _pct(_min_on(per_example, clean_names, aa_idx)),
                                       "pgd_acc": _pct(_min_on(per_example, white_pgd, aa_idx))}
    return fields


def _attack_jobs(cfgs: list[dict], source_model: nn.Module | None, source_name: str | None) -> list[tuple]:
    """(attack config, the model whose gradients it follows: None = the model itself) for each attack, and each
    white-box one again as a transfer from `source_model` where there is one."""
    jobs = [(c, None) for c in cfgs]
    if source_model is not None:
        jobs += [({**c, "name": f"transfer-{c['name']}", "transfer_from": source_name}, source_model)
                 for c in cfgs if c["attack"] in ("fgsm", "pgd")]
    return jobs


def _output_dim(model: nn.Module, source_model: nn.Module | None, source_name: str | None, x: torch.Tensor) -> int:
    """The model's number of outputs; a transfer source must give as many."""
    device = next(model.parameters()).device
    with torch.no_grad(), A.attack_mode(model):
        out_dim = model(x[:1].to(device)).shape[1]
    if source_model is not None:
        with torch.no_grad(), A.attack_mode(source_model):
            src_dim = source_model(x[:1].to(device)).shape[1]
        if src_dim != out_dim:
            raise ConfigError(f"the transfer source {source_name or ''} gives {src_dim} outputs but the model "
                              f"{out_dim}: transfer needs a classifier over the same classes (an encoder has no "
                              f"head: evaluate it with --protocol linear and transfer from the saved classifier).")
    return out_dim


def _run_jobs(model, x, y, jobs, aa_idx, *, batch_size, seed, progress, log, resumed):
    """Each attack's results entry and per-example outcome (AutoAttack on its subset when there is one)."""
    device = next(model.parameters()).device
    results: dict = {}
    per_example: dict[str, torch.Tensor] = {}
    for cfg, src in jobs:
        t0 = time.time()
        on_subset = aa_idx is not None and cfg["attack"] == "autoattack"
        xa, ya = (x[aa_idx], y[aa_idx]) if on_subset else (x, y)
        stats: dict = {}
        correct = correct_under(model, xa, ya, cfg, batch_size=batch_size, seed=seed, source_model=src,
                                progress=progress, device=device, log=log, stats=stats)
        per_example[cfg["name"]] = correct
        results[cfg["name"]] = {"config": cfg, "acc": 100 * fraction(correct),
                                "wall_time_s": round(time.time() - t0, 3),
                                **({"n_examples": len(ya)} if on_subset else {})}
        if resumed and world_and_rank()[0] == 1:  # its wall time covers only the examples this run attacked
            results[cfg["name"]]["attacked_here"] = stats.get("attacked", 0)
        if progress:
            tqdm.write(f"{cfg['name']:>20}: {results[cfg['name']]['acc']:.2f} %  ({time.time() - t0:.1f} s)")
    return results, per_example


def _in_threat(cfg: dict, norm: str, eps: float) -> bool:
    return cfg.get("norm") == norm and abs(cfg.get("eps", -1) - eps) < 1e-12


def _names_by_role(results: dict, norm: str, eps: float) -> tuple[list[str], list[str], list[str]]:
    """The names of the clean pass, of the white-box PGD attacks and of standard AutoAttack run in the threat
    model."""
    clean = [n for n, r in results.items() if r["config"]["attack"] == "clean"]
    white_pgd = [n for n, r in results.items() if r["config"]["attack"] == "pgd" and _in_threat(r["config"], norm, eps)
                 and "transfer_from" not in r["config"]]
    aa_names = [n for n, r in results.items() if r["config"]["attack"] == "autoattack"
                and _in_threat(r["config"], norm, eps) and r["config"].get("version") == "standard"]
    return clean, white_pgd, aa_names


def _min_on(per_example: dict, names, idx=None) -> float | None:
    """The lowest accuracy (a fraction) among the named attacks, on the examples `idx` (default all)."""
    return min((fraction(per_example[n] if idx is None else per_example[n][idx]) for n in names), default=None)


def _pct(frac: float | None) -> float | None:
    """A fraction as RobustBench's keys state it: percent, two decimals."""
    return None if frac is None else round(100 * frac, 2)


def _summary(model, results: dict, per_example: dict, clean_names, white_pgd, aa_names, *, eps, norm, n, seed,
             batch_size, meta) -> dict:
    """The results file's body: RobustBench's keys, every attack, and how and where it ran."""
    device = next(model.parameters()).device
    white = [k for k, r in results.items() if (_in_threat(r["config"], norm, eps) or r["config"]["attack"] == "clean")
             and "n_examples" not in r]  # an attack run on a subset has no say on the other examples
    worst = fraction(torch.stack([per_example[k] for k in white]).all(0)) if white else None
    cfg_meta = dict(meta or {})
    arch = cfg_meta.pop("architecture", None) or (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    return {
        "schema": SCHEMA,
        "model": cfg_meta.pop("model", None),
        "architecture": arch,
        "dataset": cfg_meta.pop("dataset", None),
        "threat_model": THREAT_MODELS[norm],
        "eps": eps,
        "eps_str": eps_str(eps),
        "clean_acc": _pct(_min_on(per_example, clean_names)),
        "autoattack_acc": _pct(_min_on(per_example, aa_names)),
        "pgd_acc": _pct(_min_on(per_example, white_pgd)),
        "robust_acc": _pct(worst),  # per example, the worst case over every attack run in this threat model
        "attacks": results,
        "n_examples": n,
        "seed": seed,
        "batch_size": batch_size,  # batch i's attacks draw from seed + i
        **cfg_meta,
        "hardware": hardware_name(device),
        **precision.describe("fp32", device),  # evaluation attacks always run in fp32
        "torch": torch.__version__,
    }


def _sanity(model, x, y, sub, results, per_example, white_pgd, aa_names, aa_idx, *, eps, norm, num_classes,
            source_model, source_name, batch_size, seed, progress) -> dict:
    """The gradient-masking checks on the examples `sub`, reusing the accuracies already measured on them."""
    device = next(model.parameters()).device
    k = len(sub)
    pgd20 = [n for n in white_pgd if results[n]["config"].get("steps") == 20
             and results[n]["config"].get("restarts") == 1 and results[n]["config"].get("loss") == "ce"]
    sub_aa = None
    if aa_names and aa_idx is None:
        sub_aa = fraction(per_example[aa_names[0]][sub])
    elif aa_names and k <= len(aa_idx):  # both subsets are prefixes of the same permutation
        sub_aa = fraction(per_example[aa_names[0]][:k])
    t0 = time.time()
    # AutoAttack is compared with the strongest PGD-type attack run (CE or CW loss, any steps)
    report = run_sanity_checks(model, x[sub].to(device), y[sub].to(device), eps=eps, norm=norm,
                               num_classes=num_classes, pgd_acc=_min_on(per_example, pgd20[:1], sub),
                               autoattack_acc=sub_aa, best_pgd_acc=_min_on(per_example, white_pgd, sub),
                               source_model=source_model, source_name=source_name, batch_size=batch_size, seed=seed,
                               progress=progress)
    if aa_names and aa_idx is not None and k > len(aa_idx):  # AutoAttack vs PGD on AutoAttack's subset
        checks = [c for c in report["checks"] if c["name"] != "autoattack_vs_pgd"]
        checks.append(check_autoattack(_min_on(per_example, white_pgd, aa_idx), fraction(per_example[aa_names[0]]),
                                       len(aa_idx)))
        flags = [c["name"] for c in checks if c["ok"] is False]
        report.update(checks=checks, flags=flags, passed=not flags)
    report["wall_time_s"] = round(time.time() - t0, 3)
    if progress:
        for c in report["checks"]:
            mark = {True: "ok  ", False: "FLAG", None: "skip"}[c["ok"]]
            tqdm.write(f"  sanity {mark} {c['name']}: {c['message']}")
    return report


# ---------------------------------------------------------------------------------------------------- CLI


def _add_threat_model_args(g) -> None:
    """The data, the threat model and the attacks run against it."""
    g.add_argument("--dataset", help="dataset name (fashion_mnist, cifar10, cifar100, stl10, svhn, digits, "
                                     "imagefolder:PATH); default: the one the model was trained on")
    g.add_argument("--split", default="test", choices=["train", "test"], help="split to attack (default test)")
    g.add_argument("--download", action="store_true", help="allow torchvision to download the dataset")
    g.add_argument("--norm", default="linf", choices=["linf", "l2"], help="threat model's norm (default linf)")
    g.add_argument("--threat-model", type=str.lower, choices=["linf", "l2", "corruptions"],
                   help="RobustBench's: Linf or L2 (the same as --norm), or corruptions: accuracy on 15 common "
                        "corruptions x 5 severities and their mean (rocl_zoo.corruptions)")
    g.add_argument("--corruptions", default="all", metavar="TYPES",
                   help="with --threat-model corruptions: comma-separated types (default all)")
    g.add_argument("--eps", help="threat model's budget in [0, 1] pixel units, e.g. 8/255 or 0.5 (default: "
                                 "linf 8/255, 0.1 on fashion_mnist and digits; l2 0.5)")
    g.add_argument("--attacks", default=DEFAULT_ATTACKS,
                   help="comma-separated: clean, fgsm, pgd<N>[-linf|-l2][-cw][x<R>] (pgd20, pgd20-l2, pgd100x5), "
                        "cw (PGD-30, CW margin loss), autoattack (standard; needs rocl-zoo[eval]), apgd-ce, apgd (APGD-CE + "
                        "APGD-DLR); "
                        f"@EPS sets one attack's budget (pgd20-l2@1.0). Default {DEFAULT_ATTACKS}")
    g.add_argument("--n-examples", type=int, default=1000,
                   help="attack a fixed random subset of this many test examples (default 1000; 0 = all)")
    g.add_argument("--autoattack-examples", type=int, default=0, metavar="K",
                   help="run AutoAttack on a fixed random K of the --n-examples only (its Square stage costs "
                        "thousands of queries per robust image); the results file adds clean and PGD accuracy on "
                        "the same K (default 0: all)")
    g.add_argument("--batch-size", type=int, default=256, help="attack batch size (default 256)")
    g.add_argument("--no-fold-bn", dest="fold_bn", action="store_false",
                   help="attack the model as it is (default: a copy with BatchNorm folded into the convolutions, "
                        "used where it gives the model's logits and input gradients: the same function, faster)")
    g.add_argument("--transfer-from", metavar="SOURCE",
                   help="also run each FGSM/PGD attack as black-box transfer from this model")
    g.add_argument("--sanity", action="store_true",
                   help="gradient-masking checks (eps monotone, large eps reaches chance, more steps/restarts "
                        "do not help, black-box not stronger, AutoAttack not above PGD), flagged in the results")
    g.add_argument("--sanity-examples", type=int, default=200, help="examples the sanity checks use (default 200)")


def _add_protocol_args(g) -> None:
    """How a frozen encoder gets its linear head (SLF / ALF) before it is attacked."""
    g.add_argument("--protocol", default="none", choices=["none", "linear", "robust-linear"],
                   help="none: the model is already a classifier; linear: train a linear head on frozen features "
                        "(SLF); robust-linear: on PGD-10 examples (ALF). Default none")
    g.add_argument("--protocol-label", metavar="NAME",
                   help="with --protocol none: how the classifier's head was made, for tables and claims (e.g. "
                        "robust-linear for a classifier saved by --protocol robust-linear). Default none")
    g.add_argument("--epochs", type=int, default=150, help="linear head epochs (default 150; LR /10 at 20/33/67 %%)")
    g.add_argument("--lr", type=float, default=0.1, help="linear head SGD learning rate (default 0.1)")
    g.add_argument("--linear-batch-size", type=int, default=256, help="linear head batch size (default 256)")
    g.add_argument("--train-examples", type=int, default=0,
                   help="train the head on a fixed random subset of this many examples (default 0 = all)")
    g.add_argument("--train-eps", help="robust-linear PGD budget (default: --eps)")
    g.add_argument("--train-alpha", help="robust-linear PGD step (default: RoCL's 0.007 at 8/255, scaled with the "
                                         "budget: 0.0223 at 0.1)")
    g.add_argument("--train-steps", type=int, default=10, help="robust-linear PGD steps (default 10)")
    g.add_argument("--save-classifier", metavar="DIR",
                   help="where to save encoder + head in the Hub layout (default: next to --out, <out>.classifier/); "
                        "until it is saved the head's training is kept in DIR.partial/, so that the same command "
                        "continues an interrupted one")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rocl_zoo.evaluate",
        description="Evaluate the adversarial robustness of a rocl-zoo model and write a results file "
                    "(RobustBench's keys + every attack's config). With --protocol linear / robust-linear the "
                    "model is a frozen encoder and a linear head is trained first (SLF / ALF).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m rocl_zoo.evaluate cnn4_rocl.fmnist_at --attacks clean,fgsm,pgd20,cw --eps 0.1 \\\n"
               "      --n-examples 1000 --sanity --out results/cnn4_rocl.fmnist_at/none/Linf-0.1/attacks-n1000.json\n"
               "      # results/<model>/<protocol>/<threat model>/<suite>-n<examples>.json: rocl_zoo.results\n"
               "  python -m rocl_zoo.evaluate ./my_encoder --protocol robust-linear --epochs 25 --dataset cifar10\n"
               "  python -m rocl_zoo.evaluate MODEL --transfer-from cnn4_rocl.fmnist_simclr   # black-box\n"
               "  python -m rocl_zoo.evaluate --table results/ > results/README.md\n"
               "  torchrun --nproc_per_node=4 -m rocl_zoo.evaluate MODEL --attacks clean,autoattack --out r.json\n"
               "      # several processes (or machines, torchrun's rendezvous): each attacks its share of the\n"
               "      # batches; the merged results equal a one-process run; an interrupted run resumes")
    p.add_argument("source", nargs="?", help="zoo name (arch.tag), hf-hub:ORG/REPO[@REV] or a Hub-layout folder")
    _add_threat_model_args(p.add_argument_group("data and threat model"))
    _add_protocol_args(p.add_argument_group("protocol (frozen encoder + linear head)"))
    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="FILE.json",
                   help="results file (default: print JSON to stdout). Finished attack batches are kept in "
                        "FILE.json.partial until the attacks are done: the same command run again after an "
                        "interruption resumes there")
    g.add_argument("--name", help="the model's name in the results file and tables (default: SOURCE as given; "
                                  "e.g. the zoo name a run folder will ship as)")
    g.add_argument("--table", metavar="DIR", help="render every results file under DIR as a markdown table, then exit")
    g.add_argument("--seed", type=int, default=0, help="seed for the subset and the random starts (default 0)")
    add_runtime_args(g)
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> dict:
    """The CLI's work: load, check, (train a linear head,) attack, write the results file."""
    if args.threat_model == "corruptions":  # no attacks, no budget: all of it lives in rocl_zoo.corruption_eval
        from .corruption_eval import run_cli

        return run_cli(args)
    _check_args(args)
    if args.out:
        check_output_path(args.out, folder=False)
    procs = Dist(args.device)  # under torchrun: the process group; each process attacks its share of the batches
    device = procs.device if procs.world > 1 else resolve_device(args.device)
    progress = not args.quiet and procs.main
    model, dataset = model_and_dataset(args.source, args.dataset, device)
    if args.out and procs.main:
        remove_stale_temporaries(args.out)
    eps = parse_eps(args.eps) if args.eps is not None else default_eps(dataset, args.norm)
    parse_attacks(args.attacks, eps, args.norm)  # fail on a bad attack list before any slow work
    source_model = load(args.transfer_from, device=device) if args.transfer_from else None
    test = _load_dataset(dataset, args.split, args.data_root, args.download)
    x, y = _test_images(model, test, args, dataset)
    parse_attacks(args.attacks, eps, args.norm, x[0].numel())  # now with the images' size: bounds l2 budgets
    classes = list(getattr(test, "classes", None) or [])
    t0 = time.time()
    model, protocol_cfg = _protocol_head(model, args, dataset, classes, eps, progress)
    meta = {"model": args.name or args.source, "source": args.source, **weights_meta(model),
            "dataset": dataset, "split": args.split, "protocol": protocol_cfg["protocol"],
            "protocol_config": protocol_cfg, "rocl_zoo_version": __version__}
    result = evaluate(model, x, y, attacks=args.attacks, eps=eps, norm=args.norm, batch_size=args.batch_size,
                      seed=args.seed, source_model=source_model, source_name=args.transfer_from,
                      sanity=args.sanity, sanity_examples=args.sanity_examples,
                      num_classes=len(classes) or None, autoattack_examples=args.autoattack_examples,
                      progress=progress, meta=meta, resume=args.out and f"{args.out}.partial", fold_bn=args.fold_bn)
    result["wall_time_s"] = round(time.time() - t0, 3)
    if args.protocol != "none" and procs.main:
        _save_classifier(model, args, dataset, protocol_cfg, result)
    if procs.world > 1:
        result["processes"] = procs.world
    if procs.main and args.out:
        write_json(args.out, result)
        if progress:
            print(f"wrote {args.out}", file=sys.stderr)
    elif procs.main:
        print(json.dumps(result, indent=2))
    procs.close()
    return result


def _load_dataset(name: str, split: str, root=None, download: bool = False):
    return load_dataset(name, split, root=root, download=download)


def _check_args(args: argparse.Namespace) -> None:
    """Refuse contradictory or out-of-range flags before any slow work."""
    if args.threat_model and args.threat_model != args.norm:
        if args.norm != "linf":
            raise ConfigError(f"--threat-model {args.threat_model} and --norm {args.norm} disagree; give one.")
        args.norm = args.threat_model
    if not args.source:
        raise ConfigError("give a model SOURCE (zoo name, hf-hub:ORG/REPO or folder), or --table DIR.")
    for flag in ("n_examples", "train_examples", "autoattack_examples"):
        if getattr(args, flag) < 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 0.")
    if min(args.batch_size, args.sanity_examples, args.epochs, args.linear_batch_size, args.train_steps) < 1:
        raise ConfigError("--batch-size, --linear-batch-size, --sanity-examples, --epochs and --train-steps must be "
                          ">= 1.")
    if args.protocol_label and args.protocol != "none":
        raise ConfigError(f"--protocol-label names the protocol of a classifier evaluated as it is; with --protocol "
                          f"{args.protocol} the protocol is {args.protocol}: drop one of them.")


def _test_images(model, test, args: argparse.Namespace, dataset: str):
    """The fixed subset to attack, refused when its images do not fit the model."""
    x, y = as_tensors(test, args.n_examples or None, args.seed)
    in_chans = getattr(model, "in_chans", None)
    if in_chans is not None and x.shape[1] != in_chans:
        raise DataError(f"{dataset} has {x.shape[1]}-channel images but {args.source} takes {in_chans} channels; "
                        f"pick the dataset the model was trained for.")
    size = tuple((getattr(model, "pretrained_cfg", None) or {}).get("input_size") or ())[-2:]
    if size and tuple(x.shape[-2:]) != size:
        # global pooling accepts any size, and would give a meaningless number: refuse instead
        raise DataError(f"{dataset} has {x.shape[-2]}x{x.shape[-1]} images but {args.source} takes "
                        f"{size[0]}x{size[1]}; evaluate it on data of its input size (a classifier made by "
                        f"rocl_zoo.finetune on resized data has that evaluation in its results.json).")
    return x, y


def _protocol_head(model, args: argparse.Namespace, dataset: str, classes: list, eps: float, progress: bool):
    """(classifier, protocol record): the model as it is, or its encoder with a linear head trained here."""
    protocol_cfg: dict = {"protocol": args.protocol_label or args.protocol}
    if args.protocol_label:
        protocol_cfg["head_trained_before"] = True  # the head came with the classifier: nothing trained here
    if args.protocol != "none":
        t0 = time.time()
        robust = args.protocol == "robust-linear"
        train_eps = parse_eps(args.train_eps) if args.train_eps is not None else eps
        train_alpha = parse_eps(args.train_alpha) if args.train_alpha is not None else alf_step(train_eps)
        train = _load_dataset(dataset, "train", args.data_root, args.download)
        keep = _head_progress(args)
        model = train_linear_head(model, train, num_classes=len(classes) or None, robust=robust,
                                  epochs=args.epochs, lr=args.lr, eps=train_eps, alpha=train_alpha,
                                  steps=args.train_steps, norm=args.norm,
                                  n_examples=args.train_examples or None, seed=args.seed, progress=progress,
                                  label_names=classes or None, batch_size=args.linear_batch_size, resume=keep)
        # a resumed head cost its steps in every session, not only this one's wall time
        spent = max(time.time() - t0, sum(r.get("time_s", 0) for r in RunFolder(keep).epochs()) if keep else 0)
        protocol_cfg.update(epochs=args.epochs, lr=args.lr, momentum=0.9, weight_decay=5e-4,
                            batch_size=args.linear_batch_size,
                            train_examples=args.train_examples or len(train), frozen_encoder=True,
                            features_precomputed=not robust, train_time_s=round(spent, 3))
        if robust:
            protocol_cfg.update(train_attack={"attack": "pgd", "norm": args.norm, "eps": train_eps,
                                              "alpha": train_alpha, "steps": args.train_steps,
                                              "random_start": True})
    elif getattr(model, "num_classes", 1) == 0:
        raise ConfigError(f"{args.source} is an encoder without a classifier head; use --protocol linear or "
                          f"robust-linear to train one.")
    if classes and getattr(model, "num_classes", len(classes)) != len(classes):
        raise DataError(f"{args.source} has {model.num_classes} classes but {dataset} has {len(classes)}; "
                        f"evaluate it on its own dataset or use --protocol linear.")
    return model, protocol_cfg


def _classifier_folder(args: argparse.Namespace) -> str | None:
    """Where the classifier trained here is saved: --save-classifier, or next to --out (None: neither given)."""
    return args.save_classifier or (str(Path(args.out).with_suffix("")) + ".classifier" if args.out else None)


def _head_progress(args: argparse.Namespace) -> str | None:
    """The run folder an interrupted head's training resumes from (FOLDER.partial, removed once the classifier is
    saved); one process's only: under torchrun every process trains the same head."""
    folder = _classifier_folder(args)
    return f"{folder}.partial" if folder and world_and_rank()[0] == 1 else None


def _save_classifier(model, args: argparse.Namespace, dataset: str, protocol_cfg: dict, result: dict) -> None:
    """Encoder + the head trained here, as a Hub folder (--save-classifier, or next to --out)."""
    folder = _classifier_folder(args)
    if not folder:
        return
    metrics = {k: result[k] for k in ("clean_acc", "pgd_acc", "autoattack_acc", "robust_acc", "eps_str",
                                       "threat_model", "n_examples")}
    save_pretrained(model, folder, dataset=dataset, metrics=metrics,
                    recipe=f"{args.protocol} evaluation of {args.source}", extra={"encoder": args.source, "protocol": protocol_cfg})
    result["classifier"] = str(folder)
    keep = _head_progress(args)
    if keep:
        shutil.rmtree(keep, ignore_errors=True)


def main(argv=None) -> int:
    return cli.run(_main, build_parser().parse_args(argv))


def _main(args) -> int:
    if args.table:
        sys.stdout.write(render_table(read_all(args.table)))
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
