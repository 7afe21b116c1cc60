"""Small helpers shared by the whole package."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from .errors import ConfigError
from .precision import cpu_has_native_bf16


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Write `path` through a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600 files; give the usual mode of a new file
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(path) -> None:
    """What a write killed midway left behind: for a folder, every `.*.tmp` inside it; for a file, its own
    temporaries beside it (`.<name>.*.tmp`, its `.partial` files' too). Call it on start-up, before writing."""
    path = Path(path)
    found = path.rglob(".*.tmp") if path.is_dir() else path.parent.glob(f".{path.name}.*.tmp")
    for tmp in list(found):
        tmp.unlink(missing_ok=True)


def check_output_path(path, *, folder: bool, flag: str = "--out") -> Path:
    """Refuse, before any work, an output that cannot be written at the end: a folder where a file is wanted, a
    file where a folder is, or a path under a file."""
    path = Path(path).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file; name a folder (it is created).")
    if not folder and path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; name the file to write, e.g. {path / 'results.json'}.")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {path}: {parent} is a file, so nothing can be written under it.")
            break
    return path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' picks CUDA when there is a GPU, else the CPU; asking for CUDA without one is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto.")
    return device


def hardware_name(device: torch.device | str | None = None) -> str:
    """A one-line description of the machine, for results files and benchmarks."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    import platform

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    # Two CPUs of one model name can differ 10x in speed (native bf16 or not): the line names the vector ISA too
    isa = torch.backends.cpu.get_cpu_capability() + (", native bf16" if cpu_has_native_bf16() else "")
    return f"{cpu} ({isa}), {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def hardware_threads(hardware: str | None) -> int:
    """The torch threads a `hardware_name` line names: 'Intel Xeon, 2 cores, 2 torch threads' -> 2 (1 when it does
    not say: CPU time is threads x wall time)."""
    words = (hardware or "").replace(",", " ").split()
    return next((int(words[i - 1]) for i, w in enumerate(words) if w == "torch" and i and words[i - 1].isdigit()), 1)


def hardware_clock(hardware: str | None) -> str:
    """'GPU' for a `hardware_name` line of a CUDA device (its time is wall time), else 'CPU' (threads x wall)."""
    return "GPU" if "CUDA" in (hardware or "") else "CPU"
