"""What every command line of the zoo shares: its runtime flags and how an error reaches the user."""
from __future__ import annotations

import sys
from typing import Callable

from .errors import ConfigError, RoclZooError
from .hub import load, model_dataset


def add_runtime_args(p, *, data: bool = True) -> None:
    """--device, --threads and, for commands that read a dataset, --data-root (on a parser or an argument group)."""
    p.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu or cuda (default auto)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    if data:
        p.add_argument("--data-root", help="dataset folder (default $ROCL_ZOO_DATA or ~/.cache/rocl_zoo/data)")


def model_and_dataset(source: str, dataset: str | None, device):
    """A command's model (`rocl_zoo.load`, verified) and the dataset it runs on: --dataset, else the one the model
    records it was trained on."""
    model = load(source, device=device)
    dataset = dataset or model_dataset(model)
    if not dataset:
        raise ConfigError(f"{source} does not record its dataset; pass --dataset NAME.")
    return model, dataset


def run(body: Callable, args) -> int:
    """body(args) with --threads applied: a zoo error prints `error: ...` and exits 2 (a missing optional package
    too), Ctrl-C or SIGTERM during training `interrupted: ...` and 130 (its checkpoint is written); else body's
    code or 0."""
    from .loop import TrainingInterrupted

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return body(args) or 0
    except TrainingInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 130
    except (RoclZooError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
