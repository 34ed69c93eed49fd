"""torchrun set-up: NCCL on CUDA devices, gloo on CPU; one process per device. Nothing global beyond the process
group is changed."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(value)
            value /= self.world_size
        return value

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def default_device(local_rank: int) -> torch.device:
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def init(device: torch.device | str | None = None) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    info = Distributed(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    device = torch.device(device) if device is not None else default_device(info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
