"""Where a training step's time goes: the real step of a recipe, run by the real loop under torch.profiler,
split by the phases the code labels (data/augment, step/attack, step/forward, step/loss, loop/backward,
loop/optimizer, loop/checkpoint) plus what is left (logging, Python, the loop's bookkeeping).

    python benchmarks/profile_step.py                          # fmnist_rocl and fmnist_at, 6 profiled steps each
    python benchmarks/profile_step.py --recipe fmnist_at --amp off --steps 10

The checkpoint is written once and its cost divided over the recipe's `ckpt_every` steps, as a run pays it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from rocl_zoo import loop as L  # noqa: E402
from rocl_zoo.utils import hardware_name  # noqa: E402
from training import common as C  # noqa: E402
from training import pretrain, supervised  # noqa: E402

PHASES = ("data/augment", "step/attack", "step/forward", "step/loss", "loop/backward", "loop/optimizer")
TRAINERS = {"fmnist_rocl": pretrain, "fmnist_at": supervised, "fmnist_trades": supervised,
            "fmnist_simclr": pretrain}


def profile_recipe(recipe: str, amp: str, steps: int, out: Path) -> None:
    trainer = TRAINERS[recipe]
    p = argparse.ArgumentParser()
    C.add_common_args(p)
    args = p.parse_args(["--recipe", recipe, "--out", str(out), "--amp", amp, "--quiet", "--overwrite"])
    setup = C.start_run(args, trainer.KINDS)
    torch.manual_seed(0)
    extra = () if trainer is pretrain else (len(setup.ds.classes),)
    model = trainer.build(setup.recipe, setup.info, *extra)
    net, model = C.prepare(model, setup)
    opt = trainer.make_optimizer(net, setup.recipe)
    step_fn = trainer.make_step(setup, net, model, 0)
    net.train()
    common = dict(steps_per_epoch=setup.steps_per_epoch, total=setup.total, seed=0, lr_at=lambda s: 0.1,
                  log_every=setup.recipe.log_every, progress=False, run=setup.run, config=setup.config)
    L.train_loop(net, opt, step_fn, stop=2, **common)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        L.train_loop(net, opt, step_fn, stop=steps, **common)
        wall = (time.perf_counter() - t0) / steps
    t0 = time.perf_counter()
    L.train_loop(net, opt, step_fn, stop=1, ckpt_every=1, **common)  # one step, checkpointed
    ckpt_s = max(time.perf_counter() - t0 - wall, 0.0) / setup.recipe.ckpt_every
    totals = {e.key: e.cpu_time_total / 1e6 / steps for e in prof.key_averages() if e.key in PHASES}
    print(f"\n## {recipe}, {setup.precision}, batch {setup.recipe.batch_size}: {wall:.3f} s a step, "
          f"{setup.recipe.batch_size / wall:.0f} img/s ({hardware_name(setup.dist.device)})")
    print(f"{'phase':18s} {'s/step':>8s} {'share':>6s}")
    rest = wall - ckpt_s
    for phase in PHASES:
        t = totals.get(phase, 0.0)
        rest -= t
        print(f"{phase:18s} {t:8.3f} {100 * t / wall:5.1f}%")
    print(f"{'loop/checkpoint':18s} {ckpt_s:8.3f} {100 * ckpt_s / wall:5.1f}%  (one save / ckpt_every "
          f"{setup.recipe.ckpt_every})")
    print(f"{'the rest':18s} {rest:8.3f} {100 * rest / wall:5.1f}%  (logging, Python, bookkeeping)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", action="append", choices=sorted(TRAINERS), help="default fmnist_rocl and fmnist_at")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in a.recipe or ["fmnist_rocl", "fmnist_at"]:
            profile_recipe(recipe, a.amp, a.steps, Path(tmp) / recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
