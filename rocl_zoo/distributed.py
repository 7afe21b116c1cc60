"""Processes started by torchrun: the process group, each process's share of the work, and merging the shares.

Training (training/) runs DDP through `Dist`; evaluation (rocl_zoo.evaluate) splits its attack batches
round-robin over the processes with `my_share` and merges the per-batch outcomes with `merge` on every rank, so
the merged result equals a one-process run on the same images and seed (batches are seeded by position).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .utils import resolve_device


class Dist:
    """The process group (torchrun sets RANK/WORLD_SIZE/LOCAL_RANK) or a single process."""

    def __init__(self, device: str = "auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.main = self.rank == 0

    def barrier(self):
        barrier()

    def any_rank(self, flag: bool) -> bool:
        """Whether `flag` is set on any process; every process gets the same answer."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def world_and_rank() -> tuple[int, int]:
    """(processes, this one's rank) of the initialised process group; (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def barrier() -> None:
    """Wait for every process of the initialised group; nothing without one."""
    if world_and_rank()[0] > 1:
        dist.barrier()


def my_share(items: list) -> list:
    """This process's items: every world-th one, starting at its rank (round-robin balances slow batches)."""
    world, rank = world_and_rank()
    return items[rank::world]


def merge(share: dict) -> dict:
    """Every process's `share` (a picklable dict) merged into one, on every process."""
    world, _ = world_and_rank()
    if world == 1:
        return dict(share)
    parts: list = [None] * world
    dist.all_gather_object(parts, share)
    merged: dict = {}
    for part in parts:
        merged.update(part)
    return merged
