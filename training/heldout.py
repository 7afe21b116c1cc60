"""Held-out curves: how a run's robustness develops, measured on training images it never trains on.

A recipe with `holdout=N` keeps a fixed random N of the training split out of training (seeded, the same for
every run of that seed) and, every `eval_every` epochs and at the end, measures clean and PGD accuracy on them
(PGD-`holdout_steps` at the recipe's eps, step eps/4 for 10 steps, random start, fp32, eval mode). A supervised
classifier is attacked as it is; an encoder is read out by a cheap linear probe first (SLF on precomputed
features of `probe_examples` training images for `probe_epochs` epochs), then attacked through encoder + probe.
The numbers go into the epoch's record in metrics.jsonl (`heldout_clean`, `heldout_pgd`, `heldout_best_epoch`),
and, for a recipe that ships its best epoch, whenever the held-out robust accuracy is the best so far the weights
are exported to `<run>/best/`: robust overfitting (Rice et al., ICML 2020) makes the last epoch not always the best
one (a non-robust baseline such as SimCLR ships its last: `ship="last"`). Recipes pick their epochs and
schedules from these curves; `python -m training.heldout RUN...` prints them as tables.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from rocl_zoo.data import ImageTensorDataset
from rocl_zoo.loop import RunFolder, best_epoch, epoch_cost
from rocl_zoo.utils import hardware_clock


def split(ds: ImageTensorDataset, n: int, seed: int) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    """(training part, held-out part): a fixed random n images held out, the rest kept in their order."""
    if not 0 < n < len(ds):
        from rocl_zoo.errors import ConfigError

        raise ConfigError(f"holdout={n} must be between 0 and the {len(ds)} training images (--set holdout=0 "
                          "trains on all of them, without a held-out curve).")
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(10_007 * seed + 1))
    keep, out = perm[n:].sort().values, perm[:n].sort().values
    return (ImageTensorDataset(ds.images[keep], ds.labels[keep], ds.classes, ds.name),
            ImageTensorDataset(ds.images[out], ds.labels[out], ds.classes, f"{ds.name} held out"))


def measure(classifier: torch.nn.Module, held: ImageTensorDataset, eps: float, steps: int) -> dict:
    """Clean and PGD accuracy (percent) of a classifier on the held-out images."""
    from rocl_zoo.evaluate import evaluate
    from rocl_zoo.linear import as_tensors

    x, y = as_tensors(held)
    device = next(classifier.parameters()).device
    r = evaluate(classifier, x.to(device), y.to(device), attacks=f"clean,pgd{steps}", eps=eps, progress=False)
    return {"heldout_clean": round(r["attacks"]["clean"]["acc"], 3),
            "heldout_pgd": round(r["attacks"][f"pgd{steps}"]["acc"], 3)}


def probe(encoder: torch.nn.Module, train: ImageTensorDataset, recipe) -> torch.nn.Module:
    """A linear head on the frozen encoder (SLF on precomputed features): the encoder's classifier for now."""
    from rocl_zoo.linear import train_linear_head

    return train_linear_head(encoder, train, epochs=recipe.probe_epochs, n_examples=recipe.probe_examples,
                             progress=False, seed=0)


def tracker(setup, held: ImageTensorDataset, classifier_of, export_best):
    """The loop's on_epoch_end: held-out numbers every `eval_every` epochs and at the last; `export_best()` when
    the held-out robust accuracy is the best so far. classifier_of() -> the classifier to attack now."""
    recipe = setup.recipe
    last = setup.total // setup.steps_per_epoch
    best = best_epoch((setup.ckpt or {}).get("epochs", []), "heldout_pgd")
    state = {"pgd": best["heldout_pgd"] if best else -1.0, "epoch": best["epoch"] if best else None}

    def on_epoch_end(epoch: int) -> dict:
        done = epoch + 1
        if not setup.dist.main or (done % recipe.eval_every and done != last):
            return {}
        rec = measure(classifier_of(), held, recipe.eps, recipe.holdout_steps)
        if rec["heldout_pgd"] > state["pgd"]:
            state.update(pgd=rec["heldout_pgd"], epoch=done)
            if recipe.ships_best:
                export_best()
        return {**rec, "heldout_best_epoch": state["epoch"]}

    return on_epoch_end


def curve(run: Path, epochs: list[dict] | None = None) -> list[dict]:
    """The held-out measurements of a run folder's metrics.jsonl: epoch, clean, PGD (percent of n held-out
    images), the best epoch so far, and the training time until then in minutes of CPU time (threads x wall), or
    of GPU time (wall) for a run on a GPU. `epochs`: the run's epoch records, where the caller has read them."""
    folder = RunFolder(run)
    config = json.loads(folder.config.read_text())
    n, clock = config.get("holdout"), hardware_clock(config.get("hardware"))
    rows, minutes = [], 0.0
    for rec in epochs if epochs is not None else folder.epochs():
        minutes += epoch_cost(rec, config.get("hardware")) / 60  # a resumed run may have gone on elsewhere
        if "heldout_pgd" in rec:
            rows.append({"epoch": rec["epoch"], "clean": rec["heldout_clean"], "pgd": rec["heldout_pgd"], "n": n,
                         "best": rec["heldout_best_epoch"], "minutes": round(minutes), "clock": clock})
    return rows


def markdown(run: Path) -> str:
    """A run's held-out curve as a table (what the recipes' comments and the README quote)."""
    rows = curve(run)
    best, clock = (rows[-1]["best"], rows[-1]["clock"]) if rows else (None, "CPU")
    lines = [f"| Epoch | Held-out clean % | Held-out PGD-10 % | Training {clock}-minutes |", "|---:|---:|---:|---:|"]
    for r in rows:
        star = " (best)" if r["epoch"] == best else ""
        lines.append(f"| {r['epoch']} | {r['clean']:.2f} | {r['pgd']:.2f}{star} | {r['minutes']} |")
    return "\n".join(lines) + "\n"


def shipped_row(recipe, rows: list[dict]) -> dict | None:
    """The curve's row of the epoch the recipe's run ships so far: its best held-out one, or its last with
    ship="last"; None before its first measurement."""
    if not rows:
        return None
    epoch = rows[-1]["best"] if recipe.ships_best else rows[-1]["epoch"]
    return next((r for r in rows if r["epoch"] == epoch), None)


def best_within(rows: list[dict], minutes: float) -> dict | None:
    """The curve's best held-out robust epoch (the first of equals) among those reached within `minutes` of
    training time; None if the run had measured none by then."""
    return max((r for r in rows if r["minutes"] <= minutes), key=lambda r: r["pgd"], default=None)


def read_run(curves_root: Path, recipe: str) -> tuple[list[dict], int]:
    """A recipe's run under curves_root: (its held-out curve, the epochs it has run)."""
    run = Path(curves_root) / recipe
    epochs = RunFolder(run).epochs()
    return (curve(run, epochs) if epochs else []), (epochs[-1]["epoch"] if epochs else 0)


def status_markdown(curves_root: Path) -> str:
    """Where every recipe with a held-out curve stands: epochs run of its planned ones, the epoch it ships so far
    (its best held-out one, or its last with ship="last") with its numbers and the training time until then (what
    the README shows under its results)."""
    from .recipes import RECIPES

    lines = ["| Recipe | Epochs run | Epoch it ships | Held-out clean % | Held-out PGD-10 % | Time to it | State |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, recipe in RECIPES.items():
        if not recipe.holdout:
            continue
        rows, done = read_run(curves_root, name)
        state = "finished" if done >= recipe.epochs else "under way (resumes from its checkpoint)" if done else \
            "not started"
        best = shipped_row(recipe, rows)
        numbers = f"{best['epoch']} | {best['clean']:.1f} | {best['pgd']:.1f} | {best['minutes']} {best['clock']}-min" \
            if best else "– | – | – | –"
        lines.append(f"| `{name}` | {done} of {recipe.epochs} | {numbers} | {state} |")
    return "\n".join(lines) + "\n"


BUDGETS = (75, 150, 300)  # CPU-minutes: the columns of the equal-compute table


def upstream(recipe) -> str | None:
    """The zoo recipe whose run this one starts from (DeACL's teacher, DynACL++'s encoder), if any."""
    from .matrix import BY_NAME
    from .recipes import RECIPES

    source = recipe.teacher or recipe.start
    if not source:
        return None
    if source in BY_NAME:
        return BY_NAME[source].recipe
    folder = Path(source).parent.name  # results/curves/<recipe>/best, runs/<recipe>/encoder
    return folder if folder in RECIPES else None


def equal_compute_markdown(curves_root: Path, budgets=BUDGETS) -> str:
    """The small CNN's Fashion-MNIST recipes side by side at equal training CPU time: each one's best held-out
    PGD-10 within each budget, the run it starts from counted up to the epoch that run ships. A "≥" marks an
    unfinished run that has not reached the budget: its best so far, a lower bound. GPU runs are left out."""
    from .recipes import RECIPES

    def rows_of(name):
        rows, done = read_run(curves_root, name)
        config = Path(curves_root) / name / "config.json"
        cpu = json.loads(config.read_text()).get("hardware", "?").split(",")[0].replace("(R)", "") if rows else "–"
        return rows, done >= RECIPES[name].epochs, cpu

    head = " | ".join(f"{b} CPU-min" for b in budgets)
    lines = [f"| Recipe | Counts first | CPU | {head} | Best so far: PGD-10 / clean (epoch, CPU-min) |",
             "|---|---|---|" + "---:|" * len(budgets) + "---|"]
    for name, recipe in RECIPES.items():
        if not (recipe.holdout and recipe.ships_best and recipe.arch == "cnn4_rocl"
                and recipe.dataset == "fashion_mnist"):  # robust ones: not SimCLR, which counts as DeACL's teacher
            continue
        rows, finished, cpu = rows_of(name)
        if any(r["clock"] != "CPU" for r in rows):
            continue
        first, offset, cells = upstream(recipe), 0, []
        if first:
            start_rows, start_finished, _ = rows_of(first)
            start = shipped_row(RECIPES[first], start_rows) if start_finished else None
            offset = start["minutes"] if start else None
        for b in budgets:
            best = best_within(rows, b - offset) if offset is not None else None
            short = best is not None and not finished and rows[-1]["minutes"] + offset < b
            cells.append("–" if best is None else f"{'≥ ' if short else ''}{best['pgd']:.1f}")
        best = best_within(rows, float("inf")) if offset is not None else None
        so_far = f"{best['pgd']:.1f} / {best['clean']:.1f} ({best['epoch']}, {best['minutes'] + offset})" if best \
            else "not run yet" if offset is not None else f"waits for `{first}`"
        counts = f"`{first}` ({offset})" if first and offset is not None else f"`{first}`" if first else "–"
        lines.append(f"| `{name}` | {counts} | {cpu} | {' | '.join(cells)} | {so_far} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m training.heldout RUN_FOLDER...
    import sys

    for folder in sys.argv[1:] or sorted(map(str, Path("results/curves").glob("*"))):
        print(f"{folder}\n\n{markdown(folder)}")
