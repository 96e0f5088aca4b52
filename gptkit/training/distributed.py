"""This process's place among torchrun's processes: rank, world size, device, and the process group."""

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gptkit.errors import GptkitError
from gptkit.machine.runtime import pick_device


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
        # DDP's reducer keeps the process group alive through reference cycles; left to the interpreter's exit, gloo's
        # threads were torn down with it and a process died of SIGABRT after its run was done
        gc.collect()
        dist.destroy_process_group()


def rng_states(procs: Processes) -> dict[str, torch.Tensor]:
    """Every process's torch RNG states (CPU, and CUDA when used), gathered on all processes."""
    states = {"cpu": torch.get_rng_state()}
    if procs.device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(procs.device)
    if not procs.distributed:
        return {f"rng.{kind}.0": s for kind, s in states.items()}
    gathered = [None] * procs.world_size
    dist.all_gather_object(gathered, {k: v.tolist() for k, v in states.items()})
    return {
        f"rng.{kind}.{rank}": torch.tensor(s, dtype=torch.uint8)
        for rank, st in enumerate(gathered)
        for kind, s in st.items()
    }


def restore_rng(tensors: dict[str, torch.Tensor], procs: Processes, seed: int):
    cpu = tensors.get(f"rng.cpu.{procs.rank}")
    if cpu is None:  # resumed with more processes than saved it
        torch.manual_seed(seed + procs.rank)
        return
    torch.set_rng_state(cpu.cpu())
    if procs.device.type == "cuda" and f"rng.cuda.{procs.rank}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng.cuda.{procs.rank}"].cpu(), procs.device)
