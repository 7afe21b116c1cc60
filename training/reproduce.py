"""Remake the zoo's numbers from the experiment matrix (training/matrix.py), running only what is missing.

    python -m training.reproduce --dry-run                    # every item: state, CPU cost, command
    python -m training.reproduce cnn4_rocl.fmnist_at          # one entry: train, evaluate, release
    python -m training.reproduce all                          # the whole zoo, in dependency order
    python -m training.reproduce eval/cnn4_rocl.fmnist_at/none/Linf-0.1/apgd-n10000   # one item
    python -m training.reproduce ITEM_B ITEM_A                # in the order named, each after what it needs

An item is `done` when its outputs exist and were made from the inputs it has now, `stale` when its inputs or
settings changed since (the weights it measured, its recipe), `partial` when an interrupted run left a checkpoint
or a `.partial` file (it resumes there), `missing` otherwise. An item runs when it is selected and not done, or
when an item that runs needs it and it is not done; a classifier that is shipped in the zoo counts as made even
where its run folder is not on this machine and neither is the run it was made from (evaluations then read the
shipped weights: the same tensors).
What each item was made from is recorded in results/stamps.json. Costs are CPU-seconds (threads x wall time)
estimated from the rates the committed results and training records measured; `?` where none was measured.
Ctrl-C, or SIGTERM to this process (`kill PID`), stops the running item where it resumes from (a training run
after its step, with a checkpoint; an evaluation at its last finished batch) and then this process.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rocl_zoo.eval_progress import partial_files
from rocl_zoo.loop import RunFolder, epoch_cost, epoch_hardware
from rocl_zoo.utils import hardware_clock, hardware_threads, write_json
from training.matrix import SCALES, TRAIN_IMAGES, Item, Paths, entry_items, items as matrix_items, stand_ins
from training.recipes import get_recipe

ROOT = Path(__file__).resolve().parents[1]
STAMPS = "stamps.json"
UNRECORDED = "made before what it needs was remade"  # a stamp no digest equals: the item is stale


# ----------------------------------------------------------------------------------------------- state

def content_hash(path: Path) -> str | None:
    """What a file holds; for weights, their tensors only (a re-export that keeps them keeps the hash, whatever
    metadata it writes). None if the file is absent."""
    path = Path(path)
    if not path.is_file():
        return None
    data = path.read_bytes()
    h = hashlib.sha256()
    if path.suffix == ".safetensors":  # 8-byte header length, JSON header, tensor bytes
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + size])
        header.pop("__metadata__", None)
        h.update(json.dumps(header, sort_keys=True).encode())
        data = data[8 + size:]
    h.update(data)
    return h.hexdigest()


class Matrix:
    """The matrix's items resolved against this machine: which classifiers exist, and where."""

    def __init__(self, paths: Paths, scale: str = "full"):
        self.paths, self.scale = paths, scale
        self.items = matrix_items(paths, scale)
        self.stand_ins = stand_ins(paths)
        self.stamps_path = paths.results / STAMPS
        self.stamps = json.loads(self.stamps_path.read_text()) if self.stamps_path.is_file() else {}
        self.recorded: dict = {}  # what this process stamped (the rest of self.stamps may be out of date)
        self.hashes: dict = {}

    def stand_in(self, folder: Path) -> str | None:
        """The shipped zoo entry that stands in for a run folder not on this machine (None: none, or it is here)."""
        name = self.stand_ins.get(Path(folder))
        if name and not (Path(folder) / "model.safetensors").exists() and \
                (self.paths.weights / name / "model.safetensors").is_file():
            return name
        return None

    def resolve(self, item: Item) -> tuple[list, list]:
        """(argv, inputs) with each absent run folder the item reads replaced by the shipped entry that stands in
        for it; the folders it writes stay (a head's --save-classifier is the folder its entry would stand in for)."""
        made = {Path(o) for o in item.outputs} | {Path(o).parent for o in item.outputs}

        def swap(arg: str) -> str:  # a folder, or a `field=folder` setting
            key, eq, value = arg.rpartition("=") if "=" in arg and not arg.startswith("-") else ("", "", arg)
            name = None if Path(value) in made else self.stand_in(Path(value))
            return arg if not name else key + eq + (str(self.paths.weights / name) if item.kind == "release" else name)

        argv = [swap(a) for a in item.argv]
        inputs = [self.paths.weights / name / p.name if (name := self.stand_in(Path(p).parent)) else Path(p)
                  for p in item.inputs]
        return argv, inputs

    def stamp(self, item: Item) -> str | None:
        """A digest of everything the item's outputs depend on; None while an input does not exist yet."""
        _, inputs = self.resolve(item)
        digests = []
        for p in inputs:
            if p not in self.hashes:
                self.hashes[p] = content_hash(p)
            if self.hashes[p] is None:
                return None
            digests.append(self.hashes[p])
        blob = json.dumps({"spec": item.spec, "command": _settings(item.argv, self.paths), "inputs": digests},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def outdated(self, item: Item) -> bool:
        """Whether what the item was made from (its recorded stamp) differs from what it would be made from now."""
        recorded, now = self.stamps.get(item.name), self.stamp(item)
        return bool(recorded and now and recorded != now)

    def state(self, item: Item) -> str:
        if all(Path(o).exists() for o in item.outputs):
            return "stale" if self.outdated(item) else "done"
        if any(Path(p).exists() for p in item.partial):
            return "partial"
        made = [o for o in item.outputs if Path(o).name == "model.safetensors"]  # a classifier, shipped
        # ... made from what is not here either: a run product here (an encoder trained anew) means it is not
        fresh = [p for p in item.inputs if not Path(p).is_relative_to(self.paths.weights) and Path(p).exists()]
        # a curve ships one of its folders (best/): that entry stands for the run; the others (encoder/) are not needed
        stood_in = made and not fresh and any(self.stand_in(Path(o).parent) for o in made)
        # ... unless what it was made from has changed since (a shipped encoder released anew): made again
        return "done" if stood_in and not self.outdated(item) else "missing"

    def plan(self, selected: list[str]) -> list[str]:
        """The items to run now: each selected item that is not done, in the order selected, each after the items
        it needs that are not done. (What a run changes can make other items stale: `after` says which may
        follow.)"""
        states = {name: self.state(it) for name, it in self.items.items()}
        todo: dict[str, None] = {}  # an ordered set

        def visit(name):
            if name not in todo:
                for d in self.items[name].needs:
                    if states[d] != "done":
                        visit(d)
                todo[name] = None

        for name in selected:
            if states[name] != "done":
                visit(name)
        return list(todo)

    def after(self, selected: list[str], todo: list[str]) -> list[str]:
        """Selected items that are done now but need an item that will run: they run again if its outputs change."""
        will = set(todo)
        for name, it in self.items.items():  # matrix order: an item comes after what it needs
            if name in selected and name not in will and any(d in will for d in it.needs):
                will.add(name)
        return [n for n in self.items if n in will and n not in todo]

    def record(self, item: Item, remade: bool = True) -> None:
        """Stamp an item's outputs with what they were made from; `remade`: it just ran, so what was made from its
        outputs with no record of what they were (from before stamps) is stale."""
        self.hashes.clear()  # outputs just changed: what depends on them must be hashed anew
        if self.stamps_path.is_file():  # another reproduce may have recorded items meanwhile: theirs stand
            self.stamps = {**json.loads(self.stamps_path.read_text()), **self.recorded}
        self.recorded[item.name] = self.stamps[item.name] = self.stamp(item)
        for other in self.items.values() if remade else ():
            # a marker, not a record of this process: another process that makes `other` later writes its real
            # stamp (its inputs' digests show what it was made from), which the next merge above must keep
            if item.name in other.needs and other.name not in self.stamps:
                self.stamps[other.name] = UNRECORDED
        write_json(self.stamps_path, dict(sorted(self.stamps.items())))


def _settings(argv: list, paths: Paths) -> list:
    """A command without its paths, threads and resume flags: what its outputs depend on."""
    drop = {"--resume", "--overwrite", "--quiet"}
    return [a for a in argv if a not in drop and not str(a).startswith((str(paths.runs), str(paths.results),
                                                                         str(paths.weights)))]


# ------------------------------------------------------------------------------------------------ cost

# Attacks whose later stages run only on the images still unbroken: their cost per image grows with the robust
# accuracy (AutoAttack on a non-robust classifier takes minutes, on a robust one hours).
SURVIVOR_BOUND = ("autoattack", "apgd")


def survivor_fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares (a, b) of cost = a + b * robust fraction over (robust fraction, cost per image) points; None
    with fewer than two distinct fractions or a negative slope."""
    if len({r for r, _ in points}) < 2:
        return None
    mr, mc = statistics.fmean(r for r, _ in points), statistics.fmean(c for _, c in points)
    b = sum((r - mr) * (c - mc) for r, c in points) / sum((r - mr) ** 2 for r, _ in points)
    return (max(mc - b * mr, 0.0), b) if b > 0 else None


def measured_rates(results_root: Path, runs_root: Path | None = None) -> dict:
    """CPU-seconds per image of each attack (and, for SURVIVOR_BOUND attacks, its fit on robust accuracy), per head
    protocol and per training recipe, from committed records (and the head records in `runs_root`, where a head's
    stays until its classifier ships); and each classifier's PGD-20 accuracy at l-inf 0.1, where measured: a little
    above what the slow attacks leave it, so its estimate errs long. Times measured on a GPU are left out: they say
    nothing of a CPU's."""
    from rocl_zoo.results import read_all

    attack, survivors, robust, head, train = {}, {}, {}, {}, {}
    for r in read_all(runs_root) if runs_root and runs_root.is_dir() else []:
        _add_head_time(head, r)
    for r in read_all(results_root) if results_root.is_dir() else []:
        cores = hardware_threads(r.data.get("hardware"))
        arch = r.data.get("architecture")
        pgd = r.accuracy("pgd20")
        if pgd is not None and r.threat_model == "Linf" and r.eps == 0.1:
            robust[(r.model, r.protocol)] = pgd.pct / 100
        if hardware_clock(r.data.get("hardware")) == "GPU":
            continue
        for name, a in r.attacks.items():
            # a resumed run's wall time covers only the examples it attacked itself
            n = a.get("attacked_here", None if r.data.get("resumed_batches") else a.get("n_examples", r.n))
            if a.get("wall_time_s") and n:
                key = (arch, name.split("@")[0])
                attack.setdefault(key, []).append(a["wall_time_s"] * cores / n)
                if key[1] in SURVIVOR_BOUND and a.get("acc") is not None:
                    survivors.setdefault(key, []).append((a["acc"] / 100, attack[key][-1]))
        s = r.data.get("sanity") or {}
        if s.get("wall_time_s"):
            attack.setdefault((arch, "sanity"), []).append(s["wall_time_s"] * cores / s.get("n_examples", r.n))
        _add_head_time(head, r)
    for config in results_root.rglob("config.json") if results_root.is_dir() else []:
        cfg = json.loads(config.read_text())
        if "name" not in cfg or "kind" not in cfg or hardware_clock(cfg.get("hardware")) == "GPU":
            continue
        rates = [rec["images_per_s"] for rec in RunFolder(config.parent).records() if rec.get("images_per_s")]
        if len(rates) >= 4:  # the upper quartile: a run's rate when nothing else shared its cores
            precision = cfg.get("precision", "fp32")  # records from before precision was recorded: fp32
            per_image = hardware_threads(cfg.get("hardware")) / statistics.quantiles(rates)[2]
            for key in (cfg["name"], _alike(cfg)):
                train.setdefault((key, precision), []).append(per_image)
    med = lambda d: {k: statistics.median(v) for k, v in d.items()}  # noqa: E731
    fits = {k: f for k, v in survivors.items() if (f := survivor_fit(v))}
    return {"attack": med(attack), "attack_files": {k: len(v) for k, v in attack.items()}, "head": med(head),
            "train": med(train), "survivors": fits, "robust": robust}


def _add_head_time(head: dict, r) -> None:
    """File a result's head-training or fine-tuning CPU-seconds under what their cost follows."""
    if hardware_clock(r.data.get("hardware")) == "GPU":
        return
    cores = hardware_threads(r.data.get("hardware"))
    pc = r.data.get("protocol_config") or {}
    if pc.get("train_time_s"):
        head.setdefault((r.data.get("architecture"), pc["protocol"]), []).append(pc["train_time_s"] * cores)
    # a fine-tuning's precision; results from before it was recorded trained in --amp auto's choice on their CPU
    precision = r.data.get("train_precision") or ("bf16" if r.data.get("cpu_native_bf16") else "fp32")
    if r.data.get("finetune_train_time_s") and precision in ("bf16", "fp32"):  # not a run of mixed precision
        head.setdefault((r.protocol + "@" + str(r.dataset), precision), []).append(
            r.data["finetune_train_time_s"] * cores)


def _alike(recipe) -> tuple:
    """What a training step's cost follows: a recipe never run here is estimated from runs that share it."""
    get = recipe.get if isinstance(recipe, dict) else lambda k: getattr(recipe, k)
    return get("kind"), get("arch"), get("attack_steps")


def evaluated_images(item: Item) -> dict:
    """Images each attack has finished in an interrupted evaluation's .partial files (this and every rank's)."""
    done: dict = {}
    for p in (f for base in item.partial for f in partial_files(base)):
        try:
            batches = json.loads(p.read_text()).get("batches") or {}
        except (OSError, ValueError, AttributeError):
            continue
        for key, bits in batches.items():
            attack = key.rsplit("@", 1)[0]
            done[attack] = done.get(attack, 0) + len(bits)
    return done


def run_folder(item: Item) -> RunFolder | None:
    """The run folder a training, fine-tuning or head item resumes from (None for an evaluation's .partial file)."""
    return RunFolder(Path(item.partial[0]).parent) if item.partial and item.kind != "eval" else None


def trained_fraction(item: Item) -> float:
    """How much of an interrupted training, fine-tuning or head run is done: its last logged step over its steps, or
    (a fine-tuning's config counts epochs) its last finished epoch over its epochs; 0 when none."""
    run = run_folder(item)
    if run is None or not run.checkpoint.is_file():
        return 0.0
    cfg = json.loads(run.config.read_text())
    unit, total = ("step", cfg["total_steps"]) if cfg.get("total_steps") else ("epoch", cfg.get("epochs") or 0)
    done = [rec.get(unit, 0) for rec in run.records() if unit == "step" or rec.get("record") == "epoch"]
    return min(max(done, default=0) / total, 1.0) if total else 0.0


def own_rate_left(item: Item, precision: str) -> float | None:
    """CPU-seconds left of an interrupted run, at the median of the epochs it ran on a CPU in `precision`: its own
    measure beats what recipes alike measured elsewhere. None before such an epoch."""
    run = run_folder(item)
    if run is None or not run.config.is_file():
        return None
    cfg = json.loads(run.config.read_text())
    costs = [epoch_cost(r, cfg.get("hardware")) for r in run.epochs()
             if r.get("time_s") and r.get("precision", cfg.get("precision", "fp32")) == precision
             and hardware_clock(epoch_hardware(r, cfg.get("hardware"))) != "GPU"]
    if not costs or not cfg.get("epochs"):
        return None
    return statistics.median(costs) * cfg["epochs"] * (1 - trained_fraction(item))


def estimate(item: Item, rates: dict) -> float | None:
    """CPU-seconds the item should take here, or None where nothing comparable was measured."""
    from rocl_zoo.precision import resolve

    c = item.cost
    arch = c.get("name", "").split(".")[0]
    here = resolve("auto", "cpu")  # the precision this machine trains in
    if item.kind in ("train", "finetune") and (left := own_rate_left(item, here)) is not None:
        return left
    if item.kind == "train":
        train = rates["train"]
        per_image = train.get((c["recipe"], here)) or train.get((_alike(get_recipe(c["recipe"])), here))
        return per_image and per_image * c["epochs"] * TRAIN_IMAGES * (1 - trained_fraction(item))
    if item.kind == "head":
        full = rates["head"].get((arch, c["protocol"]))
        return full and full * (1 - trained_fraction(item))
    if item.kind == "finetune":
        full = _finetune_time(rates, c["key"])
        return full and full * (1 - trained_fraction(item))
    if item.kind == "release":
        pgd = rates["attack"].get((arch, "pgd20"))
        return pgd and 500 * pgd + 30
    total, done = 0.0, evaluated_images(item)
    robust = rates["robust"].get((c["name"], c.get("protocol")))  # its PGD-20, where measured
    for attack in c["attacks"] + (["sanity"] if "--sanity" in item.argv else []):
        per_image = rates["attack"].get((arch, attack))
        fit = rates["survivors"].get((arch, attack))
        if fit and robust is not None:
            per_image = fit[0] + fit[1] * robust
        if per_image is None:
            return None
        total += per_image * max(c["n"] - done.get(attack, 0), 0)
    return total


def _finetune_time(rates: dict, key: str) -> float | None:
    """A fine-tuning's CPU-seconds at the precision this machine trains in; where it was measured only in the other,
    scaled as the training recipes measured in both run (fp32 takes 2.5-4x bf16's time on these CPUs)."""
    from rocl_zoo.precision import resolve

    here = resolve("auto", "cpu")
    other = {"bf16": "fp32", "fp32": "bf16"}[here]
    if (key, here) in rates["head"] or (key, other) not in rates["head"]:
        return rates["head"].get((key, here))
    train = rates["train"]
    ratios = [t / train[(name, other)] for (name, p), t in train.items()
              if p == here and isinstance(name, str) and (name, other) in train]
    return rates["head"][(key, other)] * statistics.median(ratios) if ratios else None


def _fmt_cost(s: float | None) -> str:
    return "?" if s is None else f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"


# ------------------------------------------------------------------------------------------------- run

def command(m: Matrix, item: Item, threads: int, procs: int = 1, eval_batch: int | None = None) -> list:
    argv, _ = m.resolve(item)
    if item.kind in ("train", "finetune"):
        argv.append("--overwrite" if m.state(item) == "stale" else "--resume")
    if eval_batch and item.kind == "eval":  # how it runs, like --threads: not part of what the item is
        if "--batch-size" in argv:
            i = argv.index("--batch-size")
            del argv[i:i + 2]
        argv += ["--batch-size", str(eval_batch)]
    if procs > 1 and item.kind == "eval":  # torchrun: each process attacks its share of the batches
        argv = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *argv]
    return [sys.executable, *argv, "--threads", str(threads)]


def _run_here(argv: list) -> int:
    """`python -m MODULE ARGS` in this process: no interpreter and torch start-up per command."""
    import runpy

    from rocl_zoo import zoo

    saved = sys.argv
    sys.argv = [argv[1], *argv[2:]]
    try:
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
        zoo.refresh()  # a release may have changed the registry
    return code


def _run_child(cmd: list) -> int:
    """The command as a child process; its exit code. Ctrl-C reaches both: the child writes its checkpoint (or keeps
    its finished batches) and this process stops after it. SIGTERM sent to this process alone is passed on to the
    child, then handled the same way."""
    proc = subprocess.Popen(cmd, cwd=ROOT)

    def pass_on(signum, frame):
        proc.send_signal(signal.SIGTERM)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, pass_on)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_item(m: Matrix, item: Item, threads: int, in_process: bool = False, procs: int = 1,
             eval_batch: int | None = None) -> None:
    cmd = command(m, item, threads, procs, eval_batch)
    print(f"\n=== {item.name}\n    {' '.join(cmd[1:])}", flush=True)
    if (run := run_folder(item)) is not None:  # a training runs quietly for hours: where to follow it
        print(f"    its epochs are logged in {_short(run.metrics)}", flush=True)
    t0 = time.time()
    code = _run_here(cmd[1:]) if in_process else _run_child(cmd)
    if code:
        raise SystemExit(f"{item.name} failed (exit {code}); fix it and run the same command again: finished "
                         f"items are kept, an interrupted one resumes.")
    if item.copy:
        src, dst = map(Path, item.copy)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    missing = [str(o) for o in item.outputs if not Path(o).exists()]
    if missing:
        raise SystemExit(f"{item.name} finished but did not write {missing}.")
    m.record(item)
    print(f"    done in {time.time() - t0:.0f} s", flush=True)


def record_by_hand(m: Matrix, names: list[str]) -> int:
    """`--record`: stamp each selected item whose outputs and inputs all exist; say which could not be."""
    unmade = []
    for name in names:
        item = m.items[name]
        if all(Path(o).exists() for o in item.outputs) and m.stamp(item):
            m.record(item, remade=False)
            print(f"recorded {name}")
        else:
            unmade.append(name)
    if unmade:
        print(f"not recorded (an output or an input is missing): {', '.join(unmade)}", file=sys.stderr)
    return 1 if unmade else 0


def select(m: Matrix, names: list[str]) -> list[str]:
    if not names or names == ["all"]:
        return list(m.items)
    picked = []
    for name in names:
        found = entry_items(m.items, name)
        if not found:
            raise SystemExit(f"no item or zoo entry {name!r} in the matrix; `--dry-run` lists them.")
        picked += found
    return picked


def show(m: Matrix, names: list[str], todo: list[str], after: list[str]) -> None:
    rates = measured_rates(m.paths.results, m.paths.runs)
    total, unknown = 0.0, 0
    for name in names + [n for n in after if n not in names]:
        if name in after:
            print(f"then?    {m.state(m.items[name]):12}  {name}   (again if what it needs changes)")
            continue
        item = m.items[name]
        state = m.state(item)
        cost = estimate(item, rates) if name in todo else None
        total += cost or 0
        unknown += name in todo and cost is None
        mark = "run " if name in todo else "    "
        if state == "partial" and item.kind != "eval":  # how far it trained
            state += f" {trained_fraction(item):.0%}"
        print(f"{mark}{state:12} {_fmt_cost(cost) if name in todo else '':>8}  {name}")
        if name in todo:
            print(f"                            python {' '.join(command(m, item, 1)[1:-2])}")
    cost = f"about {_fmt_cost(total)} of CPU time" + (f" plus {unknown} not yet measured" if unknown else "")
    if todo and unknown == len(todo):
        cost = "none of them measured here yet"
    print(f"\n{len(todo)} item{'' if len(todo) == 1 else 's'} to run, {cost}.")


def _short(path: Path) -> Path:
    """A path relative to the repository when it is inside it: the commands run there, and read better."""
    path = Path(path).resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.reproduce", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="zoo entries, item names or prefixes (eval/cnn4_rocl.fmnist_at), or "
                                            "all (default); run in the order named, each after what it needs")
    p.add_argument("--dry-run", action="store_true", help="show each item's state, cost and command; run nothing")
    p.add_argument("--list", action="store_true", help="with --dry-run: every selected item, not only those to run")
    p.add_argument("--record", action="store_true",
                   help="run nothing: record that the selected items' outputs, made by hand (a release run by "
                        "itself), were made from what they need now, so a later change makes them stale")
    p.add_argument("--scale", choices=sorted(SCALES), default="full",
                   help="full: the zoo; toy: every stage for a step on a few images (tests)")
    p.add_argument("--results", type=Path, default=ROOT / "results", help="results folder (default results/)")
    p.add_argument("--runs", type=Path, default=ROOT / "runs", help="run folders (default runs/); the zoo's "
                                                                     "weights go to $ROCL_ZOO_WEIGHTS if set")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of every command")
    p.add_argument("--procs", type=int, default=1, metavar="N",
                   help="run each evaluation as N processes (torchrun; --threads each): the images are split "
                        "between them and the merged numbers equal one process's")
    p.add_argument("--eval-batch", type=int, default=None, metavar="B",
                   help="images per attack batch of every evaluation (default: the matrix's, 100 for AutoAttack "
                        "so that a CPU's .partial saves often); a GPU wants more (scripts/device.sh: 1000). Each "
                        "batch is seeded by its position, so the numbers differ within the attacks' randomness; "
                        "the results file records the batch size, and an evaluation's .partial from another batch "
                        "size starts over")
    p.add_argument("--in-process", action="store_true",
                   help="run the commands in this process instead of one process each (saves seconds of start-up "
                        "per command: the toy scale's test uses it)")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.procs > 1 and args.in_process:
        p.error("--procs starts processes: it does not go with --in-process.")
    if args.eval_batch is not None and args.eval_batch < 1:
        p.error("--eval-batch must be at least 1.")
    from rocl_zoo.zoo import WEIGHTS_DIR

    m = Matrix(Paths(*map(_short, (args.results, args.runs, WEIGHTS_DIR))), args.scale)
    os.chdir(ROOT)  # the matrix's paths are relative to the repository
    selected = select(m, args.names)
    todo = m.plan(selected)
    if args.dry_run:
        show(m, selected if args.list else todo, todo, m.after(selected, todo))
        return 0
    if args.record:
        return record_by_hand(m, selected)
    try:
        done = run_plan(m, selected, todo, args)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to continue.", file=sys.stderr)
        return 130
    if done:
        from rocl_zoo.results import write_index
        from rocl_zoo.zoo import PACKAGE_WEIGHTS_DIR

        write_index(m.paths.results)
        if m.paths.results == Path("results") and WEIGHTS_DIR == PACKAGE_WEIGHTS_DIR:  # the zoo the README shows
            subprocess.run([sys.executable, str(ROOT / "scripts" / "update_readme.py")], check=True)
    print(f"{len(done)} items run; everything selected is done.")
    return 0


def run_plan(m: Matrix, selected: list[str], todo: list[str], args: argparse.Namespace) -> set[str]:
    """Run `todo`, the selection's plan, planning again after each item (what it changed may make others stale);
    return the names run."""
    done: set[str] = set()
    while todo:
        name = todo[0]
        if name in done:
            raise SystemExit(f"{name} ran but is still {m.state(m.items[name])}: its outputs do not match the "
                             f"matrix (see training/matrix.py).")
        run_item(m, m.items[name], args.threads, args.in_process, args.procs, args.eval_batch)
        done.add(name)
        todo = m.plan(selected)
    return done


def cost_markdown(results_root: Path = ROOT / "results", arch: str = "cnn4_rocl") -> str:
    """What each piece of the protocol costs one classifier, from the committed measurements (the README's)."""
    from training.matrix import PROTOCOL, TRANSFER

    measured = measured_rates(results_root)
    rates, counts = measured["attack"], measured["attack_files"]
    pieces = dict.fromkeys([*(a for ev in (*PROTOCOL, TRANSFER) for a in ev.attacks.split(",")), "corruptions"])
    lines = ["| Attack | CPU time per 1,000 images | Measured in |", "|---|---:|---:|"]
    for attack in [*pieces, "sanity"]:
        per = rates.get((arch, attack))
        files = counts.get((arch, attack), 0)
        lines.append(f"| {attack} | {_fmt_cost(None if per is None else 1000 * per)} | {files} files |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
