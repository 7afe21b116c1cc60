"""Robust transfer learning: take a (robust) encoder to your own data, in four modes.

    python -m rocl_zoo.finetune --model cnn4_rocl.fmnist --dataset digits --mode trades --out runs/digits-trades

    from rocl_zoo.finetune import finetune
    run = finetune("cnn4_rocl.fmnist", "digits", mode="at", out="runs/digits-at", epochs=10)
    run.model, run.results["clean_acc"], run.results["pgd_acc"]

Modes (the RoCL paper's transfer protocols):
- linear         frozen encoder (eval mode, weights and BN statistics untouched), a linear head trained on its
                 features of the un-augmented images (SLF). Features are computed once: same optimisation.
- robust-linear  frozen encoder, the head trained on PGD examples made through the encoder and the current head
                 (ALF / rLE): RoCL's PGD-10 with step 0.007 at 8/255, scaled with eps (0.0223 at 0.1), as
                 `rocl_zoo.evaluate --protocol robust-linear`.
- at             the whole network fine-tuned on PGD examples (adversarial full fine-tuning with PGD-AT).
- trades         the whole network fine-tuned with TRADES: CE(clean) + beta * KL(p(clean) || p(adversarial)),
                 the attack maximising that KL (beta 6).

Defaults: linear modes follow RoCL's linear protocol (150 epochs, SGD lr 0.1, momentum 0.9, wd 5e-4, LR /10 at
20/33/67 % of the epochs, batch 256); AT/TRADES follow AFF (25 epochs, lr 0.1 /10 at 15 and 20 (60/80 %), wd
2e-4, batch 128, PGD-10 with step 2.5 eps / steps = 2/255 at 8/255). eps defaults to 8/255 in l-inf (0.1 on
Fashion-MNIST and digits, as rocl_zoo.evaluate). Attacks used for training run the model in eval mode (BN
running statistics), as TRADES's code does; Madry's PGD-AT code generates in train mode, which also moves the BN
statistics at every attack step. The training forward passes run in train mode (AT/TRADES). Each mode is a step
of rocl_zoo.steps run by the zoo's one loop (rocl_zoo.loop), the same as training.supervised's PGD-AT and
TRADES; `amp="auto"` trains in bf16 autocast where the hardware has native bf16 (rocl_zoo.precision), and the
test evaluation is fp32 whatever it says.

Adapting the encoder to the data. By default the DATA is converted to what the encoder takes
(`rocl_zoo.inference.fit_image`: grey to RGB by repeating the channel, RGB to grey by ITU-R 601 luma, bilinear
antialiased resize to the encoder's input size) and the encoder stays intact. `in_chans=` / `image_size=` change
the model instead: a new channel count adapts the first convolution (grey to RGB: weights repeated / 3; RGB to
grey: weights summed, each channel rescaled by its std) and the in-model normalisation, so a grey image gives
(nearly) the features its RGB copy gave; a new image size only changes the input size (the encoders pool
globally). The classes come from the dataset (a fresh head); a validation split (val_fraction, seeded) is held
out of the training split, since none of the datasets ships one; an imagefolder without a test/ folder also
gives 20 % of its images (seeded) to a test split.

Output folder OUT:
    config.json      the resolved settings (a resumed run must match them; its precision follows the machine:
                     each epoch record says which, classifier/'s config names every one used)
    metrics.jsonl    one line per epoch: loss, accuracy, LR, the training attack's statistics, validation
                     (a training log: accuracies as fractions)
    checkpoint.pt    weights, optimiser, RNG and position, written atomically at each epoch's end (and every
                     checkpoint_every steps, and on Ctrl-C or SIGTERM); read with torch.load(weights_only=True)
    classifier/      the fine-tuned classifier in the Hub layout (rocl_zoo.load, timm "local-dir:", model card)
    results.json     rocl_zoo.evaluate's results file on the test split (clean, PGD-20, AutoAttack on request;
                     accuracies in percent, rocl_zoo.results); results/ files it under
                     rocl_zoo.results.relpath(encoder, "finetune-<mode>", threat, "finetune", n, dataset)
A finished OUT is never overwritten without resume=True (continue) or overwrite=True (start again: old files
are replaced only as new ones are written). Errors about the model or the data are raised before anything is
written.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__, cli, precision
from .attack_suite import DEFAULT_ATTACKS, parse_attacks
from .cli import add_runtime_args
from .eval_progress import encoder_digest, weights_digest
from .evaluate import evaluate
from .hub import load, save_pretrained
from .inference import model_input_size
from .threat import eps_str
from .utils import check_output_path, hardware_name, resolve_device, write_json
from .errors import ConfigError, RoclZooError
from .adapt import build_classifier, fixed_subset, load_data, to_float
from .finetune_modes import DEFAULT_BETA, DEFAULT_STEPS, MODES, resolve_settings, train_mode
from .loop import RunFolder, TrainingInterrupted, trained_precision

CONFIG_NAME, METRICS_NAME, CHECKPOINT_NAME, RESULTS_NAME, CLASSIFIER_DIR = (
    "config.json", "metrics.jsonl", "checkpoint.pt", "results.json", "classifier")
OUTPUT_NAMES = (CONFIG_NAME, METRICS_NAME, CHECKPOINT_NAME, RESULTS_NAME, CLASSIFIER_DIR)
# Training stopped on Ctrl-C, SIGTERM or at max_steps after a checkpoint; resume=True continues it.
FinetuneInterrupted = TrainingInterrupted


@dataclass
class FinetuneResult:
    model: nn.Module                  # the fine-tuned classifier, eval mode, on the device
    results: dict                     # rocl_zoo.evaluate's results dict on the test split
    metrics: list = field(default_factory=list)  # one dict per epoch
    out: Path | None = None
    config: dict = field(default_factory=dict)


def _resolve_model(model, device) -> tuple[nn.Module, str]:
    if isinstance(model, nn.Module):
        cfg = getattr(model, "pretrained_cfg", None) or {}
        return model, str(cfg.get("source") or cfg.get("architecture") or type(model).__name__)
    return load(model, device="cpu"), str(model)


# ------------------------------------------------------------------------------------------------ outputs


def _existing_outputs(out: Path) -> list[str]:
    return [n for n in OUTPUT_NAMES if (out / n).exists()] if out.is_dir() else []


def _finished_results(out: Path, suite: str) -> dict | None:
    """The results of a finished run in `out` (in the current schema) when they cover the attack suite asked for,
    else None."""
    from .results import read

    try:
        results = read(out / RESULTS_NAME)
    except RoclZooError:
        return None
    wanted = {a.strip() for a in suite.split(",") if a.strip()}
    if not (out / CLASSIFIER_DIR / "config.json").is_file() or not wanted <= set(results.attacks):
        return None
    return results.data


def autoattack_text(results: dict) -> str:
    """'39.00 %', with the subset it ran on when that is not every evaluated image."""
    aa, sub = results.get("autoattack_acc"), results.get("autoattack_subset")
    if aa is None:
        return "–"
    if not sub:
        return f"{aa:.2f} %"
    return f"{aa:.2f} % (on {sub['n_examples']} of the {results.get('n_examples')} images, where PGD gives " \
           f"{sub['pgd_acc']:.2f} %)"


def card_description(config: dict, metrics: list) -> str:
    """The model card's opening (`rocl_zoo.model_card` writes the rest): what was transferred, how, and the
    validation of the epoch it ships (the last, or with keep_best the best)."""
    mode, ds = config["mode"], config["dataset"]
    last = metrics[-1] if metrics else {}
    which = "Last epoch's"
    if config.get("keep_best") and last.get("best_epoch"):
        last, which = metrics[last["best_epoch"] - 1], f"Best epoch's (epoch {last['best_epoch']}, kept)"
    # metrics.jsonl, a training log, keeps its validation accuracies as fractions; the card states percent
    val = lambda k: "–" if last.get(k) is None else f"{100 * last[k]:.2f} %"  # noqa: E731
    settings = ", ".join(f"{k}={config[k]}" for k in ("epochs", "lr", "batch_size", "weight_decay", "milestones",
                                                       "eps_str", "alpha", "steps", "beta") if k in config)
    return (f"`{config['architecture']}` fine-tuned on `{ds}` ({mode}): the encoder `{config['encoder']}` transferred "
            f"with `python -m rocl_zoo.finetune --mode {mode}`: {MODES[mode]}.\n\nSettings: {settings}. Input: images "
            f"in [0, 1] of shape {list(config['input_size'])} (the data were converted from "
            f"{list(config['source_input_size'])}). {which} validation: clean {val('val_clean_acc')}, robust "
            f"{val('val_robust_acc')}.")


# ------------------------------------------------------------------------------------------------ API


def finetune(model, dataset, *, mode: str = "linear", out=None, test=None, epochs: int | None = None,
             lr: float | None = None, batch_size: int | None = None, weight_decay: float | None = None,
             momentum: float = 0.9, milestones=None, eps=None, alpha=None, steps: int | None = None,
             norm: str = "linf", beta: float | None = None, image_size: int | None = None,
             in_chans: int | None = None, val_fraction: float = 0.1, val_examples: int = 500,
             subset: int | None = None, eval_examples: int = 0, attacks: str | None = None,
             autoattack: bool = False, autoattack_examples: int = 0, seed: int = 0, device="auto", data_root=None,
             download: bool = False, resume: bool = False, overwrite: bool = False, checkpoint_every: int = 0,
             max_steps: int | None = None, amp: str = "auto", keep_best: bool = False,
             progress: bool = True) -> FinetuneResult:
    """Transfer an encoder to a dataset in one of the modes linear, robust-linear, at, trades (see the module doc).

    model: a zoo name, hf-hub:ORG/NAME, a Hub folder, or a model. dataset: a name (fashion_mnist, cifar10,
    cifar100, stl10, svhn, digits, imagefolder:PATH) or a Dataset / (x, y) of training data with `test=` the test
    data. out: the output folder (None: nothing is written, no resume). image_size / in_chans: change the model
    rather than the data. subset: train on a fixed random subset. eval_examples: evaluate on a fixed random
    subset of the test split (0 = all). attacks: the evaluation suite (default clean,pgd20; autoattack=True
    adds AutoAttack, on a fixed random subset of autoattack_examples of them when > 0). keep_best (adversarial
    modes): end with the epoch of the best validation robust accuracy rather than the last. Returns
    FinetuneResult(model, results, metrics, out, config).
    """
    _check_counts(resume=resume, overwrite=overwrite, val_fraction=val_fraction, val_examples=val_examples,
                  eval_examples=eval_examples, autoattack_examples=autoattack_examples,
                  checkpoint_every=checkpoint_every, subset=subset or 0)
    dataset_name = dataset if isinstance(dataset, str) else getattr(dataset, "name", None) or "custom"
    s = resolve_settings(mode, dataset_name, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                         momentum=momentum, milestones=milestones, eps=eps, alpha=alpha, steps=steps, norm=norm,
                         beta=beta)
    suite = _attack_suite(attacks, autoattack, s["eps"], norm)
    device = resolve_device(device)
    out = _check_out(out, resume=resume, overwrite=overwrite)

    # Everything that can fail on the model or the data happens before anything is written.
    encoder, source = _resolve_model(model, device)
    if image_size is not None and int(image_size) < 8:
        raise ConfigError(f"--image-size must be >= 8, got {image_size}.")
    c, h, w = model_input_size(encoder)
    size = (int(image_size), int(image_size)) if image_size is not None else (h, w)
    data = load_data(dataset, test=test, in_chans=int(in_chans) if in_chans is not None else c, size=size,
                     val_fraction=val_fraction, seed=seed, subset=subset, root=data_root, download=download)
    clf = build_classifier(encoder, data["num_classes"], in_chans=in_chans, image_size=size,
                           label_names=data["classes"], seed=seed)
    config = _run_config(s, encoder, source, clf, data, dataset_name, image_size=image_size, in_chans=in_chans,
                         val_fraction=val_fraction, val_examples=val_examples, subset=subset, seed=seed,
                         attacks=suite, autoattack=autoattack, autoattack_examples=autoattack_examples,
                         eval_examples=eval_examples, checkpoint_every=checkpoint_every, keep_best=keep_best,
                         **_runtime(device, amp))
    run, ckpt, finished = _open_run(out, config, suite, resume=resume, overwrite=overwrite, progress=progress)
    if finished is not None:
        return FinetuneResult(load(out / CLASSIFIER_DIR, device=device), finished, list(ckpt["epochs"]), out, config)

    t0 = time.time()
    metrics = train_mode(clf, data, s, device=device, run=run, ckpt=ckpt, config=config,
                         checkpoint_every=checkpoint_every, max_steps=max_steps, progress=progress,
                         val_examples=val_examples, seed=seed, amp=config["precision"], keep_best=keep_best)
    train_time = time.time() - t0
    if max_steps and (not metrics or metrics[-1]["epoch"] < s["epochs"]):
        raise TrainingInterrupted(f"stopped after {max_steps} steps (max_steps), checkpoint written; continue with "
                                  "--resume (resume=True), same settings.")
    results = _test_results(clf, data, s, config, metrics, suite=suite, eval_examples=eval_examples,
                            autoattack_examples=autoattack_examples, progress=progress)
    if out is not None:
        _save_classifier(clf, out, results, config, metrics)
        if progress:
            tqdm.write(f"wrote {out / CLASSIFIER_DIR} and {out / RESULTS_NAME} (training {train_time:.0f} s)")
    return FinetuneResult(clf, results, metrics, out, config)


def _attack_suite(attacks: str | None, autoattack: bool, eps: float, norm: str) -> str:
    """The evaluation's attack list (AutoAttack added when asked for), checked before any slow work."""
    suite = attacks or DEFAULT_ATTACKS
    if autoattack and "autoattack" not in suite:
        suite += ",autoattack"
    parse_attacks(suite, eps, norm)
    return suite


def _check_out(out, *, resume: bool, overwrite: bool) -> Path | None:
    """The output folder, refused where it holds a run that neither --resume nor --overwrite names."""
    if out is None:
        return None
    out = check_output_path(out, folder=True)
    existing = _existing_outputs(out)
    if existing and not (resume or overwrite):
        raise ConfigError(f"{out} already holds a fine-tuning run ({', '.join(existing)}). Pass --resume to continue "
                          f"it, --overwrite to start it again, or choose another --out.")
    return out


def _check_counts(*, resume: bool, overwrite: bool, val_fraction: float, **counts) -> None:
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run, or start it again.")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    for name, v in counts.items():
        if v < 0:
            raise ConfigError(f"{name} must be >= 0, got {v}.")


def _run_config(s: dict, encoder, source: str, clf, data: dict, dataset_name: str, **settings) -> dict:
    """The run's config.json: the resolved settings, what the run starts from, the data it sees, and `settings`."""
    return {**s, "eps_str": eps_str(s["eps"]), "encoder": source,
            # the encoder's weights, not only its name: a run resumes only from the encoder it started from
            "start_encoder_sha256": encoder_digest(encoder) or weights_digest(encoder),
            "architecture": (clf.pretrained_cfg or {}).get("architecture") or type(clf).__name__,
            "dataset": dataset_name, "num_classes": data["num_classes"], "classes": list(data["classes"]),
            "input_size": list(clf.pretrained_cfg["input_size"]),
            "source_input_size": list(data["source_input_size"]),
            "adapt": "model" if (settings["in_chans"] is not None or settings["image_size"] is not None) else "data",
            "n_train": len(data["train"][1]), "n_val": len(data["val"][1]), "n_test": len(data["test"][1]),
            "train_attack": _train_attack(s), **settings}


def _runtime(device, amp: str) -> dict:
    """Where and how the run trains, as its config records it."""
    return {"device": str(device), "hardware": hardware_name(device),
            **precision.describe(precision.resolve(amp, device), device),
            "rocl_zoo_version": __version__, "torch": torch.__version__}


def _open_run(out: Path | None, config: dict, suite: str, *, resume: bool, overwrite: bool, progress: bool):
    """(run folder, checkpoint to resume, results of a finished run that covers `suite`), Nones without `out`."""
    if out is None:
        return None, None, None
    run = RunFolder(out)
    if resume and not run.holds_run() and progress:
        tqdm.write(f"--resume: no run in {out} yet; starting one.")
    ckpt = run.start(config, resume=resume, overwrite=overwrite)
    total = config["epochs"] * math.ceil(config["n_train"] / config["batch_size"])
    finished = _finished_results(out, suite) if ckpt is not None and ckpt["step"] >= total else None
    if finished is not None and progress:
        tqdm.write(f"{out} is finished; nothing to do (results in {out / RESULTS_NAME}).")
    return run, ckpt, finished


def _train_attack(s: dict) -> dict | None:
    """The training attack as the run's config records it (none for a linear head on clean features)."""
    if s["mode"] == "linear":
        return None
    return {"attack": "trades-kl" if s["mode"] == "trades" else "pgd", "norm": s["norm"], "eps": s["eps"],
            "alpha": s["alpha"], "steps": s["steps"], "random_start": True, "model_mode": "eval"}


def _test_results(clf, data: dict, s: dict, config: dict, metrics: list, *, suite: str, eval_examples: int,
                  autoattack_examples: int, progress: bool) -> dict:
    """The attack suite on the test split (fp32), as a results file of protocol finetune-<mode>, naming the encoder
    it started from and the classifier it measured (`start_encoder_sha256`, `weights_sha256`:
    rocl_zoo.results.of_shipped_weights hides fine-tunings of an encoder the zoo no longer ships, and those whose
    classifier a zoo entry made from them does not ship)."""
    xte, yte = fixed_subset(*data["test"], eval_examples, config["seed"])
    meta = {"model": config["encoder"], "dataset": config["dataset"], "split": "test",
            "protocol": f"finetune-{s['mode']}",
            "protocol_config": {k: config[k] for k in ("mode", "epochs", "lr", "batch_size", "weight_decay",
                                                       "milestones", "train_attack", "input_size",
                                                       "source_input_size", "n_train", "seed")},
            "start_encoder_sha256": config["start_encoder_sha256"], "weights_sha256": weights_digest(clf),
            "finetune_train_time_s": round(sum(m.get("time_s", 0) for m in metrics), 3),
            "train_precision": trained_precision(metrics, config["precision"]),
            "rocl_zoo_version": __version__}
    if s["mode"] == "trades":
        meta["protocol_config"]["beta"] = s["beta"]
    if config["keep_best"]:  # the weights are this epoch's, not the last one's
        meta["protocol_config"]["best_epoch"] = metrics[-1]["best_epoch"]
    return evaluate(clf, to_float(xte, "cpu"), yte, attacks=suite, eps=s["eps"], norm=s["norm"],
                    seed=config["seed"], num_classes=data["num_classes"], autoattack_examples=autoattack_examples,
                    progress=progress, meta=meta)


def _save_classifier(clf, out: Path, results: dict, config: dict, metrics: list) -> None:
    """The classifier as a Hub folder (with its card) and the results file, in the run folder."""
    card_metrics = {k: results.get(k) for k in ("clean_acc", "pgd_acc", "autoattack_acc", "robust_acc",
                                                 "eps_str", "threat_model", "n_examples")}
    save_pretrained(clf, out / CLASSIFIER_DIR, dataset=config["dataset"], recipe=f"finetune-{config['mode']}",
                    metrics=card_metrics, label_names=config["classes"],
                    extra={"encoder": config["encoder"],
                           "finetune": {**{k: v for k, v in config.items() if k not in ("classes",)},
                                        "precision": results["train_precision"]}},
                    results=[(RESULTS_NAME, results)], description=card_description(config, metrics))
    results["classifier"] = str(out / CLASSIFIER_DIR)
    write_json(out / RESULTS_NAME, results)


# ------------------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    modes = "\n".join(f"  {k:<14} {v}" for k, v in MODES.items())
    p = argparse.ArgumentParser(
        prog="python -m rocl_zoo.finetune",
        description="Transfer a (robust) encoder to a dataset and evaluate it: writes OUT/classifier (Hub layout: "
                    "rocl_zoo.load, timm), OUT/results.json (clean + PGD-20 on the test split), "
                    "OUT/metrics.jsonl, OUT/config.json and OUT/checkpoint.pt (resumable).\n\nmodes:\n" + modes,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="defaults: linear modes 150 epochs, lr 0.1 /10 at 20/33/67 %%, wd 5e-4, batch 256; at/trades 25 "
               "epochs, lr 0.1 /10 at 15 and 20, wd 2e-4, batch 128; PGD-10, step 2.5 eps/steps; eps 8/255 "
               "(0.1 on fashion_mnist and digits); TRADES beta 6.\n\nexamples:\n"
               "  python -m rocl_zoo.finetune --model cnn4_rocl.fmnist --dataset digits --mode at --out runs/d-at\n"
               "  python -m rocl_zoo.finetune --model resnet18_rocl.cifar10 --dataset cifar100 --mode trades \\\n"
               "      --eps 8/255 --out runs/c100-trades --autoattack\n"
               "  python -m rocl_zoo.finetune ... --resume     # continue after Ctrl-C or a crash")
    p.add_argument("--model", required=True, metavar="SOURCE",
                   help="encoder: zoo name (arch.tag), hf-hub:ORG/NAME[@REV] or a Hub-layout folder")
    p.add_argument("--dataset", required=True, metavar="NAME",
                   help="fashion_mnist, cifar10, cifar100, stl10, svhn, digits or imagefolder:PATH "
                        "(PATH/<class>/<image>, or PATH/train/... and PATH/test/...)")
    p.add_argument("--mode", required=True, choices=list(MODES), help="see 'modes' above")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    g = p.add_argument_group("optimisation (defaults per mode)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--lr", type=float, help="SGD learning rate (default 0.1)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--momentum", type=float, default=0.9, help="(default 0.9)")
    g.add_argument("--milestones", help="comma-separated epochs where the LR is divided by 10 (e.g. 15,20)")
    g = p.add_argument_group("training attack (robust-linear, at, trades) and threat model")
    g.add_argument("--eps", help="budget in [0, 1] pixel units, e.g. 8/255 or 0.1")
    g.add_argument("--alpha", help="attack step size (default: 2.5 * eps / steps for at and trades, RoCL's "
                                   "0.007 * eps / (8/255) for robust-linear)")
    g.add_argument("--steps", type=int, help=f"attack steps (default {DEFAULT_STEPS})")
    g.add_argument("--norm", default="linf", choices=["linf", "l2"], help="(default linf)")
    g.add_argument("--beta", type=float, help=f"TRADES beta (default {DEFAULT_BETA:g})")
    _add_adapting_args(p.add_argument_group("adapting model and data"))
    _add_run_control_args(p.add_argument_group("evaluation and run control"))
    return p


def _add_adapting_args(g) -> None:
    """How the model and the data are fitted to each other, and the validation split."""
    g.add_argument("--image-size", type=int, help="train the model at this size (default: the model's input size; "
                                                   "the data are resized to it)")
    g.add_argument("--in-chans", type=int, choices=[1, 3],
                   help="change the model's input channels (first conv adapted) instead of converting the data")
    g.add_argument("--val-fraction", type=float, default=0.1, help="held out of the training split (default 0.1)")
    g.add_argument("--val-examples", type=int, default=500, help="validation examples scored per epoch (default 500)")
    g.add_argument("--keep-best", action="store_true", help="adversarial modes: end with the epoch of the best "
                                                            "validation robust accuracy, not the last")
    g.add_argument("--subset", type=int, help="train on a fixed random subset of this many training images")
    g.add_argument("--download", action="store_true", help="let torchvision download the dataset")


def _add_run_control_args(g) -> None:
    """The test evaluation, checkpoints and resuming, precision and threads."""
    g.add_argument("--attacks", default=DEFAULT_ATTACKS, help="evaluation suite, as rocl_zoo.evaluate "
                                                              "(default %(default)s)")
    g.add_argument("--autoattack", action="store_true", help="add AutoAttack (standard) to the evaluation")
    g.add_argument("--autoattack-examples", type=int, default=0, metavar="K",
                   help="run AutoAttack on a fixed random K of the evaluated test images only, with clean and PGD "
                        "on the same K in the results (default 0: all)")
    g.add_argument("--eval-examples", type=int, default=0, help="test examples to evaluate (default 0 = all)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--overwrite", action="store_true", help="start again in an --out that holds a run")
    g.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also checkpoint every this many steps (default: at each epoch's end)")
    g.add_argument("--max-steps", type=int, metavar="N", help="stop after N training steps with a checkpoint "
                   "(--resume continues the same run)")
    g.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                   help="training precision: auto = bf16 autocast on CUDA and on CPUs with native bf16, fp32 "
                        "elsewhere; the test evaluation is fp32 whatever this says (default auto)")
    g.add_argument("--seed", type=int, default=0)
    add_runtime_args(g)
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _milestones_arg(text):
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--milestones takes comma-separated epoch numbers, got {text!r}.") from None


def main(argv=None) -> int:
    return cli.run(_main, build_parser().parse_args(argv))


def _main(args) -> int:
    run = finetune(args.model, args.dataset, mode=args.mode, out=args.out, epochs=args.epochs, lr=args.lr,
                   batch_size=args.batch_size, weight_decay=args.weight_decay, momentum=args.momentum,
                   milestones=_milestones_arg(args.milestones), eps=args.eps, alpha=args.alpha,
                   steps=args.steps, norm=args.norm, beta=args.beta, image_size=args.image_size,
                   in_chans=args.in_chans, val_fraction=args.val_fraction, val_examples=args.val_examples,
                   subset=args.subset, eval_examples=args.eval_examples, attacks=args.attacks,
                   autoattack=args.autoattack, autoattack_examples=args.autoattack_examples, seed=args.seed,
                   device=args.device, data_root=args.data_root, download=args.download, resume=args.resume,
                   overwrite=args.overwrite, checkpoint_every=args.checkpoint_every, max_steps=args.max_steps,
                   amp=args.amp, keep_best=args.keep_best, progress=not args.quiet)
    r = run.results
    fmt = lambda v: "–" if v is None else f"{v:.2f} %"  # noqa: E731
    print(f"{args.mode}: clean {fmt(r.get('clean_acc'))}, PGD {fmt(r.get('pgd_acc'))}, AutoAttack "
          f"{autoattack_text(r)} ({r.get('threat_model')} eps {r.get('eps_str')}, "
          f"{r.get('n_examples')} test images) -> {run.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
