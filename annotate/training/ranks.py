"""Where training runs: the device, and under torchrun or a SLURM job of several tasks the
process group of DistributedDataParallel (one process per GPU)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

DISTRIBUTED_TIMEOUT_S = 4 * 3600


@dataclass(frozen=True)
class Ranks:
    """This process's place in a distributed run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag`, on every rank (decisions taken from the clock must be the same on all)."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        torch.distributed.broadcast(value, src=0)
        return bool(value.item())


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def start_ranks(device_name: str) -> Ranks:
    """Join the process group when WORLD_SIZE > 1 (torchrun, or a SLURM job of several tasks
    through submitit); each rank uses the GPU of its LOCAL_RANK, or the CPU with gloo."""
    device = pick_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(device=device)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        # rank 0 alone evaluates each epoch and may first ingest a catalog's spectra: the others
        # wait at a barrier meanwhile, so the collective timeout must outlast both
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=datetime.timedelta(seconds=DISTRIBUTED_TIMEOUT_S))
    return Ranks(torch.distributed.get_rank(), world, device)
