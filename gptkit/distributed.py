"""This process's place among torchrun's processes: rank, world size, device, and the process group."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gptkit.errors import GptkitError
from gptkit.runtime import pick_device


@dataclass
class Processes:
    """This process's place among the torchrun processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def from_main(self, value):
        """Rank 0's value (any picklable object), on every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def start_processes(device_name: str) -> Processes:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes(device=pick_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise GptkitError(f"several processes need CUDA (nccl) or the CPU (gloo), not {device.type}")
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Processes(rank=rank, world_size=world_size, device=device)


def stop_processes(procs: Processes):
    if procs.distributed:
        dist.destroy_process_group()
