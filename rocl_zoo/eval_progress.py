"""Resumable evaluation: every finished attack batch kept on disk, keyed by a fingerprint of what was evaluated."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .distributed import world_and_rank
from .utils import write_json


def partial_files(path) -> list[Path]:
    """The files an evaluation's progress at `path` is kept in: one process's, and under torchrun each rank's
    (PATH.rank<R>), those that exist."""
    base = Path(path)
    return [p for p in [base, *base.parent.glob(f"{base.name}.rank*")] if p.is_file()] if base.parent.is_dir() else []


class EvalProgress:
    """The finished batches of one evaluation, saved after each, so that an interrupted run resumes there.

    Valid only for the same weights, images, attacks, seeds and device kind (`fingerprint`): a file from any other
    evaluation is ignored and overwritten. Batches are seeded by their position, so a resumed run's numbers equal
    an uninterrupted one's. Under torchrun each process keeps its own file (PATH.rank<R>) and reads every sibling,
    so a run resumes whatever the number of processes was before.
    """

    def __init__(self, path, fingerprint: str, *, progress: bool = False):
        world, rank = world_and_rank()
        base = Path(path)
        self.path = base if world == 1 else base.with_name(f"{base.name}.rank{rank}")
        self.fingerprint, self.batches = fingerprint, {}
        siblings = partial_files(base)
        for p in siblings:
            try:
                state = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(state, dict) and state.get("fingerprint") == fingerprint:
                self.batches.update(state.get("batches") or {})
        if progress and siblings:
            tqdm.write(f"resuming from {base}: {len(self.batches)} batches already done" if self.batches else
                       f"{base} is from another evaluation (weights, data or attacks differ): starting over")
        self.siblings = siblings

    def get(self, key: str) -> torch.Tensor | None:
        bits = self.batches.get(key)
        return None if bits is None else torch.tensor([b == "1" for b in bits], dtype=torch.bool)

    def put(self, key: str, correct: torch.Tensor) -> None:
        self.batches[key] = "".join("1" if c else "0" for c in correct.tolist())
        write_json(self.path, {"fingerprint": self.fingerprint, "batches": self.batches})

    def remove(self) -> None:
        """Called once the evaluation is whole: this process's file and those it resumed from."""
        for p in {self.path, *self.siblings}:
            p.unlink(missing_ok=True)


def _hash_tensor(h, t: torch.Tensor) -> None:
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _hash_weights(h, model: nn.Module, skip: str | None = None) -> None:
    for name, t in model.state_dict().items():
        if skip and (name == skip or name.startswith(f"{skip}.")):
            continue
        h.update(name.encode())
        _hash_tensor(h, t)


def tensors_digest(*tensors: torch.Tensor) -> str:
    """sha256 over the tensors' bytes, in order: which images and labels a run or an evaluation used."""
    h = hashlib.sha256()
    for t in tensors:
        _hash_tensor(h, t)
    return h.hexdigest()


def weights_digest(model: nn.Module) -> str:
    """sha256 over a model's state dict (names and bytes): which weights a results file measured, whatever file
    or name they were loaded from."""
    h = hashlib.sha256()
    _hash_weights(h, model)
    return h.hexdigest()


def encoder_digest(model: nn.Module) -> str | None:
    """`weights_digest` without the classifier's parameters (the module `pretrained_cfg["classifier"]` names):
    which encoder a linear read-out measured, whatever its head; None for a model that names no classifier."""
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if not head:
        return None
    h = hashlib.sha256()
    _hash_weights(h, model, skip=head)
    return h.hexdigest()


def weights_meta(model: nn.Module) -> dict:
    """What a results file records of the weights it measured: `weights_sha256`, and `encoder_sha256` where the
    model names its classifier (`rocl_zoo.results.of_shipped_weights` reads both)."""
    encoder = encoder_digest(model)
    return {"weights_sha256": weights_digest(model), **({"encoder_sha256": encoder} if encoder else {})}


def evaluation_fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: dict,
                           source_model: nn.Module | None = None) -> str:
    """sha256 over the weights (and the transfer source's), the images, the labels and the attack settings."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for m in (model, source_model):
        if m is not None:
            _hash_weights(h, m)
    for t in (x, y):
        _hash_tensor(h, t)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ sanity checks
