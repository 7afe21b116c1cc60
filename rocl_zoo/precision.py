"""Training precision, chosen at run time: bf16 autocast where the hardware computes bf16 natively, fp32 elsewhere.

Measured on a Zen 4 CPU with AVX512-BF16 (2 threads, cnn4_rocl, batch 256): bf16 autocast + channels_last trains
2.2x faster than fp32; on a CPU without native bf16 the same autocast runs about 10x slower. So `auto` asks the
hardware, never a guess: bf16 on CUDA and on CPUs with AVX512-BF16 or AMX, fp32 elsewhere.

Only training uses this. The attacks that produce reported robustness numbers (rocl_zoo.evaluate, finetune's
test evaluation, export's parity check) run in fp32.
"""
from __future__ import annotations

import contextlib

import torch

from .errors import ConfigError

SETTINGS = ("auto", "bf16", "off")


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX), as oneDNN sees it."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and fn():
            return True
    return False


def resolve(setting: str, device: torch.device) -> str:
    """'bf16' or 'fp32' for an `amp` setting (auto | bf16 | off) on `device`.

    --amp bf16 on a CPU without native bf16 is refused: it would run about 10x slower than fp32, not faster.
    """
    device = torch.device(device)
    if setting not in SETTINGS:
        raise ConfigError(f"amp must be one of {', '.join(SETTINGS)}, got {setting!r}.")
    native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    if setting == "off":
        return "fp32"
    if setting == "bf16" and not native:
        raise ConfigError(f"amp=bf16 asked for, but this {device.type.upper()} has no native bf16 (no AVX512-BF16 "
                          "or AMX): bf16 would run about 10x slower than fp32 here. Use amp=auto (fp32 on this "
                          "machine) or amp=off.")
    return "bf16" if native else "fp32"


def autocast(precision: str, device: torch.device):
    """A context for the forward passes of a training step in `precision` ('bf16' or 'fp32')."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe(precision: str, device: torch.device) -> dict:
    """The precision block of a run's config, metrics and results: what ran, and what the CPU offers."""
    return {"precision": precision, "cpu_native_bf16": cpu_has_native_bf16(), "device_type": torch.device(device).type}
