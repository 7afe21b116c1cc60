"""The one training loop of the zoo, with its run folder, checkpoints and exact resume.

    run = RunFolder(out)
    ckpt = run.start(config, resume=args.resume)
    epochs = train_loop(model, opt, step_fn, steps_per_epoch=spe, total=spe * epochs, seed=seed,
                        lr_at=lambda step: ..., run=run, ckpt=ckpt)

`step_fn(step, generator)` makes the batch of `step` and returns a rocl_zoo.steps.StepOut; the loop sets the LR,
backpropagates, steps the optimiser, logs, checkpoints and counts epochs. training.pretrain, training.supervised,
rocl_zoo.finetune and rocl_zoo.linear all train through it.

Exact resume. Every random draw of step s comes from `step_generator(seed, s)` (augmentations, attack starts)
or `epoch_permutation(n, seed, epoch)` (the data order), never from the global RNG, so a run restarted from the
checkpoint of step s draws what the uninterrupted run drew. A checkpoint holds the model, the optimiser, the
step, the epoch's running sums and the epoch records; it is written atomically (a kill never leaves half of
one) every `ckpt_every` steps, at each epoch's end, where the run stops, and on Ctrl-C or SIGTERM (after the
current step).

The run folder: config.json (the resolved settings; a resumed run must match them, VOLATILE keys aside),
metrics.jsonl (a "step" record every `log_every` steps and an "epoch" record at each epoch's end) and
checkpoint.pt.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.profiler import record_function

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .errors import ConfigError, RoclZooError
from .utils import atomic_write, hardware_clock, hardware_threads, remove_stale_temporaries, write_json

CHECKPOINT_FORMAT = "rocl_zoo.train/2"
CORRUPT_HINT = "Delete it to restart the run from its beginning, or pass --overwrite."
# Settings a resumed run may change: they do not touch the optimisation.
VOLATILE = frozenset({
    "device", "threads", "progress", "quiet", "resume", "overwrite", "max_steps", "ckpt_every", "checkpoint_every",
    "log_every", "data_root", "command", "hardware", "cpu_native_bf16", "device_type", "started", "run_id",
    "rocl_zoo_version", "torch", "encoder_source", "attacks", "autoattack", "autoattack_examples", "eval_examples",
    "description", "notes",  # words about a recipe, not its settings
    # a run resumed on a machine of another precision trains on in that machine's (bf16 autocast where it is
    # native, fp32 elsewhere: the other way is ~10x slower); every epoch record names its precision and hardware
    "precision"})


def epoch_spans(epochs: list[dict], key: str, default) -> str:
    """What a run's epoch records say under `key` (`default` where one says nothing): the one value, or each value
    with the epochs that ended under it, where the run was resumed on another machine ("fp32 (epochs 1-4); bf16
    (epochs 5-20)")."""
    spans: list[list] = []  # [value, first epoch, last epoch]
    for rec in epochs:
        v = rec.get(key) or default
        if spans and spans[-1][0] == v:
            spans[-1][2] = rec["epoch"]
        else:
            spans.append([v, rec["epoch"], rec["epoch"]])
    if len(spans) < 2:
        return spans[0][0] if spans else default
    return "; ".join(f"{v} (epoch {a})" if a == b else f"{v} (epochs {a}-{b})" for v, a, b in spans)


def epoch_hardware(rec: dict, default: str | None) -> str | None:
    """The machine an epoch record ran on: its own line (a resumed run's epochs may name another), else `default`,
    the run's."""
    return rec.get("hardware") or default


def epoch_cost(rec: dict, default_hardware: str | None) -> float:
    """An epoch's seconds of its machine's clock: CPU threads x wall time, a GPU's wall time."""
    return rec.get("time_s", 0) * hardware_threads(epoch_hardware(rec, default_hardware))


def trained_precision(epochs: list[dict], default: str) -> str:
    """The precision a run trained in (a run resumed on a machine of another precision trains on in that one's)."""
    return epoch_spans(epochs, "precision", default)


class TrainingInterrupted(RoclZooError):
    """Training stopped on Ctrl-C or SIGTERM after writing a checkpoint; resume continues it."""


# ------------------------------------------------------------------------------------------------ randomness


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of one training step: its augmentations and attack starts."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + 17) % (2 ** 63))


@functools.lru_cache(maxsize=2)
def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch (cached: every step of the epoch asks for it)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch + 1))


def batch_indices(n: int, batch_size: int, seed: int, step: int, steps_per_epoch: int) -> torch.Tensor:
    """The indices of step's batch: its slice of its epoch's permutation (the last one may be short)."""
    epoch, pos = divmod(step, steps_per_epoch)
    return epoch_permutation(n, seed, epoch)[pos * batch_size:(pos + 1) * batch_size]


def multistep_lr(step: int, steps_per_epoch: int, lr: float, milestones, gamma: float = 0.1) -> float:
    """The step schedule every classifier trainer uses: lr times gamma for each milestone (in epochs, possibly
    fractional) that step has reached."""
    return lr * gamma ** sum(step / steps_per_epoch >= m for m in milestones)


# ------------------------------------------------------------------------------------------------ run folder


class RunFolder:
    """<out>/config.json, metrics.jsonl and checkpoint.pt (see the module doc)."""

    def __init__(self, out, main: bool = True):
        self.path = Path(out).expanduser()
        self.main = main
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoint = self.path / "checkpoint.pt"

    def holds_run(self) -> bool:
        return self.checkpoint.exists() or self.config.exists()

    def start(self, config: dict, resume: bool = False, overwrite: bool = False) -> dict | None:
        """Write config.json and return the checkpoint to resume from (None: start from step 0).

        A folder that holds a run is continued only with resume (same settings) and restarted only with overwrite.
        """
        if resume and overwrite:
            raise ConfigError("--resume and --overwrite exclude each other: continue the run, or start it again.")
        # only the main process judges the folder: the others would see the config.json it has just written
        if self.main and self.holds_run() and not (resume or overwrite):
            raise ConfigError(f"{self.path} already holds a run. Pass --resume to continue it, --overwrite to start "
                              "it again, or choose another --out.")
        if self.main:
            remove_stale_temporaries(self.path)  # what a kill during an atomic write left
        ckpt, saved = None, {}
        if resume and self.config.exists():
            try:
                saved = json.loads(self.config.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(f"{self.config} is not readable JSON ({e}); --overwrite starts the run again.") from e
            check_resume(saved, config, self.path)
            if self.checkpoint.exists():
                ckpt = load_checkpoint(self.checkpoint, format=CHECKPOINT_FORMAT, hint=CORRUPT_HINT)
        config["started"] = saved.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if self.main:
            write_json(self.config, config)
            if ckpt is not None:  # lines logged after the checkpoint are logged again by the resumed run
                self.truncate_metrics(ckpt["step"])
            elif self.metrics.exists():
                self.metrics.unlink()
            if ckpt is None and overwrite and self.checkpoint.exists():
                self.checkpoint.unlink()
        return ckpt

    def records(self) -> list[dict]:
        """metrics.jsonl's records in order ([] before the first)."""
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def epochs(self) -> list[dict]:
        """Its epoch records, in order."""
        return [r for r in self.records() if r.get("record") == "epoch"]

    def budget(self, shipped: str = "") -> dict | None:
        """What the run cost (None before its first epoch): epochs run, the epoch the `shipped` export holds
        ('best': the best held-out epoch; a keep_best fine-tuning's classifier: its best validation epoch; else the
        last), its hardware, and hours of that hardware's clock (CPU: threads x wall, as the held-out curves count;
        GPU: wall)."""
        epochs = self.epochs()
        if not epochs:
            return None
        hardware = json.loads(self.config.read_text()).get("hardware") if self.config.exists() else None
        hours = sum(epoch_cost(r, hardware) for r in epochs) / 3600
        clocks = sorted({hardware_clock(epoch_hardware(r, hardware)) for r in epochs})
        best = epochs[-1].get("heldout_best_epoch") if shipped == "best" else epochs[-1].get("best_epoch")
        return {"run": self.path.name, "epochs": epochs[-1]["epoch"], "shipped_epoch": best or epochs[-1]["epoch"],
                "hardware": epoch_spans(epochs, "hardware", hardware), "clock": " + ".join(clocks),
                "hours": round(hours, 2)}

    def truncate_metrics(self, step: int) -> None:
        if not self.metrics.exists():
            return
        keep = [line for line in self.metrics.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]  # the lines as they were written
        with atomic_write(self.metrics, "w") as f:
            f.write("".join(line + "\n" for line in keep))

    def log(self, record: dict) -> None:
        if self.main:
            self.path.mkdir(parents=True, exist_ok=True)
            with open(self.metrics, "a") as f:
                f.write(json.dumps(record) + "\n")


def best_epoch(records: list[dict], key: str) -> dict | None:
    """The epoch record with the highest `key` (the first of equals); None when none has it. What a resumed run
    that keeps its best epoch starts from."""
    return max((r for r in records if key in r), key=lambda r: r[key], default=None)


def check_resume(saved: dict, current: dict, where) -> None:
    """ConfigError naming every setting (VOLATILE ones aside) in which a resumed run differs from its start."""
    current = json.loads(json.dumps(current))  # as config.json holds it: tuples are lists
    diffs = [f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}" for k in sorted(set(saved) | set(current))
             if k not in VOLATILE and saved.get(k) != current.get(k)]
    if diffs:
        raise ConfigError(f"--resume with other settings than the run in {where} ({'; '.join(diffs)}). Resume with "
                          "the same settings, or start a new run (another --out, or --overwrite).")


# ------------------------------------------------------------------------------------------------ the loop


class _StopSignals:
    """While the loop runs in the main thread, Ctrl-C (SIGINT) or SIGTERM (a scheduler's preemption, `timeout`,
    `docker stop`, torchrun passing either on) asks it to stop after the current step; a second signal aborts at
    once, without a checkpoint. Repeats within `SAME` seconds of the first are the same request: a scheduler that
    signals every process of a job reaches a torchrun worker twice, itself and through torchrun."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    SAME = 2.0

    def __init__(self):
        self.requested, self.previous, self.first = False, {}, 0.0

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            if time.monotonic() - self.first < self.SAME:
                return
            raise KeyboardInterrupt
        self.requested, self.first = True, time.monotonic()
        print(f"\n{signal.Signals(signum).name}: stopping after this step (again to abort without a checkpoint)...",
              file=sys.stderr)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False


def _new_running() -> dict:
    return dict(loss=0.0, correct=0, labelled=0, seen=0, time_s=0.0, logs={})


def _accumulate(running: dict, out, n: int, y: torch.Tensor | None, seconds: float) -> None:
    running["loss"] += float(out.loss) * n
    running["seen"] += n
    running["time_s"] += seconds
    if out.logits is not None and y is not None:
        running["correct"] += int((out.logits.argmax(1) == y).sum())
        running["labelled"] += n
    for k, v in out.logs.items():  # keys ending in _max keep the maximum, the others a mean over images
        if k.endswith("_max"):
            running["logs"][k] = max(running["logs"].get(k, float("-inf")), float(v))
        else:
            running["logs"][k] = running["logs"].get(k, 0.0) + float(v) * n


def _epoch_record(epoch: int, step: int, running: dict) -> dict:
    seen = max(running["seen"], 1)
    rec = dict(record="epoch", epoch=epoch + 1, step=step, train_loss=round(running["loss"] / seen, 6))
    if running["labelled"]:
        rec["train_acc"] = round(running["correct"] / running["labelled"], 6)
    rec["train_examples"] = running["seen"]
    for k, v in running["logs"].items():
        rec[k] = round(v if k.endswith("_max") else v / seen, 6)
    rec["time_s"] = round(running["time_s"], 3)
    return rec


def progress_bar(total: int, initial: int, enabled: bool, desc: str):
    """tqdm on a terminal (or with ROCL_ZOO_PROGRESS set), silent in logs and tests."""
    from tqdm.auto import tqdm

    show = enabled and (sys.stderr.isatty() or bool(os.environ.get("ROCL_ZOO_PROGRESS")))
    return tqdm(total=total, initial=initial, disable=not show, desc=desc, unit="step", dynamic_ncols=True,
                leave=False)


def _apply_gradients(opt: torch.optim.Optimizer, objective: torch.Tensor) -> None:
    with record_function("loop/backward"):
        opt.zero_grad(set_to_none=True)
        objective.backward()
    with record_function("loop/optimizer"):
        opt.step()


def _restore(model: nn.Module, opt: torch.optim.Optimizer, ckpt: dict | None) -> tuple[int, dict, list[dict]]:
    """Load a checkpoint into the model, the optimiser and the RNG; return its step, running sums and epochs."""
    if ckpt is None:
        return 0, _new_running(), []
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"])
    return ckpt["step"], ckpt["running"], list(ckpt["epochs"])


def _machine_fields(precision: str | None, config: dict | None) -> dict:
    """What an epoch record says of the machine that ran it (a resumed run's epochs may name another)."""
    fields = {"precision": precision} if precision else {}
    if config and config.get("hardware"):
        fields["hardware"] = config["hardware"]
    return fields


class _Throughput:
    """Images per second since the last read."""

    def __init__(self):
        self.images, self.since = 0, time.perf_counter()

    def read(self) -> float:
        now = time.perf_counter()
        rate, self.images, self.since = self.images / max(now - self.since, 1e-9), 0, now
        return rate


def _step_record(out, step: int, steps_per_epoch: int, lr: float, images_per_s: float) -> dict:
    """The log line of one optimiser step: loss, the step function's own logs, lr and throughput."""
    return dict(record="step", step=step, epoch=round(step / steps_per_epoch, 4), loss=float(out.loss),
                **{k: float(v) for k, v in out.logs.items()}, lr=lr, images_per_s=round(images_per_s, 2),
                time=time.time())


def train_loop(model: nn.Module, opt: torch.optim.Optimizer, step_fn: Callable, *, steps_per_epoch: int,
               total: int, seed: int, lr_at: Callable[[int], float], stop: int | None = None,
               run: RunFolder | None = None, ckpt: dict | None = None, config: dict | None = None,
               log_every: int = 10, ckpt_every: int = 0, on_epoch_end: Callable | None = None,
               progress: bool = True, desc: str = "train", barrier: Callable = lambda: None,
               main: bool = True, precision: str | None = None,
               any_rank: Callable[[bool], bool] = lambda flag: flag,
               resume_hint: str = "Continue with --resume (same settings)") -> list[dict]:
    """Train from step 0 (or the checkpoint's step) to `stop` (default: `total`); return the epoch records.

    step_fn(step, generator) -> StepOut (rocl_zoo.steps). on_epoch_end(epoch) -> dict of extra fields for the
    epoch record (validation). precision: recorded in every epoch record. Ctrl-C or SIGTERM stops after the current
    step with a checkpoint and raises TrainingInterrupted; any_rank(flag) tells whether any process has it set, so
    that under torchrun every process stops after the same step, however the signal reached them; resume_hint
    ends its message (how the caller's user continues the run).
    """
    stop = total if stop is None else min(stop, total)
    step, running, epochs = _restore(model, opt, ckpt)

    saved_config = json.loads(json.dumps(config or {}, default=str))  # plain types only: weights_only loads it

    def checkpoint():
        if run is not None and main:
            save_checkpoint(run.checkpoint, dict(step=step, model=model.state_dict(), optimizer=opt.state_dict(),
                                                 rng=rng_state(), running=running, epochs=epochs,
                                                 config=saved_config), format=CHECKPOINT_FORMAT)
        barrier()

    bar = progress_bar(stop, step, progress and main, desc)
    meter = _Throughput()
    with _StopSignals() as signalled:
        while step < stop:
            epoch = step // steps_per_epoch
            lr = lr_at(step)
            for group in opt.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            out = step_fn(step, step_generator(seed, step))
            _apply_gradients(opt, out.objective)
            step += 1
            _accumulate(running, out, out.batch_size, out.labels, time.perf_counter() - t0)
            meter.images += out.batch_size
            bar.update(1)
            if log_every and (step % log_every == 0 or step == stop) and run is not None:
                rec = _step_record(out, step, steps_per_epoch, lr, meter.read())
                run.log(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['images_per_s']:.0f}")
            epoch_done = step % steps_per_epoch == 0
            if epoch_done:
                rec = _epoch_record(epoch, step, running)
                rec.update(on_epoch_end(epoch) if on_epoch_end is not None else {})
                rec.update(lr=lr, **_machine_fields(precision, config))
                epochs.append(rec)
                if run is not None:
                    run.log(rec)
                running = _new_running()
            stopping = any_rank(signalled.requested)
            if epoch_done or step == stop or stopping or (ckpt_every and step % ckpt_every == 0):
                with record_function("loop/checkpoint"):
                    checkpoint()
            if stopping and step < stop:
                bar.close()
                where = f"; checkpoint written to {run.path}. {resume_hint}" if run else ""
                raise TrainingInterrupted(f"stopped at step {step} of {total}{where}.")
    bar.close()
    return epochs
