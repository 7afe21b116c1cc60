"""Training checkpoints shared by pretraining, the supervised baselines and fine-tuning.

Written through a temporary file and a rename (a crash never leaves half a checkpoint), read back with
`torch.load(weights_only=True)` (no arbitrary unpickling), tagged with a format string so a file from another
tool is refused instead of half-loaded.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import IntegrityError
from .utils import atomic_write


def save_checkpoint(path, state: dict, *, format: str) -> None:
    """Save `state` (tensors, numbers, strings, containers of them) atomically, tagged with `format`."""
    with atomic_write(path) as f:
        torch.save({**state, "format": format}, f)


def load_checkpoint(path, *, format: str, hint: str = "Delete it to start over, or restore it from a copy.") -> dict:
    """Load a checkpoint written with the same `format`; a truncated or foreign file raises IntegrityError."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds of error for a damaged file
        raise IntegrityError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e}). {hint}") from e
    if not isinstance(state, dict) or state.get("format") != format:
        raise IntegrityError(f"{path} is not a {format} checkpoint (it says {state.get('format') if isinstance(state, dict) else type(state).__name__!r}). {hint}")
    return state


def rng_state() -> dict:
    """The global torch RNG states (CPU, and every CUDA device when there is one)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
