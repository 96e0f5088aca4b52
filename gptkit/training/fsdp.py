"""--fsdp: the model's parameters, gradients and optimizer state sharded over torchrun's processes with torch's FSDP2
(fully_shard), and what saving and resuming need of the shards.

Each Block is one unit of sharding (gathered for its forward and backward, freed after), the rest of the model (the
embeddings, tied to the output head, and the last layer norm) is the root's. A save gathers the whole model on rank 0
(a plain checkpoint, like any run's) and writes the optimizer state as every process holds it: each process its shards,
through torch.distributed.checkpoint into safetensors files (their offsets in the files' JSON headers, no pickle), which
any number of processes reads back: as their own shards, or whole.
"""

import math
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import CheckpointException, HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.distributed.tensor import empty as dtensor_empty

from gptkit.model.gpt import GPT
from gptkit.training.optim import state_owner


class ShardsFailed(Exception):
    """Writing or reading the optimizer's shards failed (in some process); the message is its first failure's."""


def shard_model(model: GPT, dtype: torch.dtype):
    """Shard model over the processes in place: each Block, then the root. In bf16 the blocks' gathered weights are
    bf16 (the fp32 shards stay the weights the optimizer updates) and gradients are reduced in fp32. The layer norms
    and the root's weights (embeddings, tied output head, last norm) stay fp32, and the blocks' inputs are not cast: the residual stream and
    the loss are computed as autocast computes them without --fsdp."""
    blocks = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    # over the model's device: FSDP's default is the machine's accelerator, even for a run on the CPU (gloo)
    mesh = init_device_mesh(next(model.parameters()).device.type, (torch.distributed.get_world_size(),))
    for block in model.transformer.h:
        for norm in [m for m in block.modules() if isinstance(m, torch.nn.LayerNorm)]:
            fully_shard(norm, mesh=mesh)  # fp32, as autocast runs them: an fp32 input and bf16 weights do not mix
        fully_shard(block, mesh=mesh, mp_policy=blocks)
    fully_shard(model, mesh=mesh)


def is_shard(t: torch.Tensor) -> bool:
    """Whether t is one process's part of a tensor sharded over the processes."""
    return isinstance(t, DTensor)


def shard_like(t: torch.Tensor, like: DTensor) -> DTensor:
    """This process's shard of the whole tensor t (every process holds it; no communication), placed as `like`: a
    copy, so that t may be freed."""
    shard = distribute_tensor(t.to(like.dtype), like.device_mesh, like.placements, src_data_rank=None)
    local = shard.to_local().clone()
    return DTensor.from_local(local, like.device_mesh, like.placements, shape=like.shape, stride=like.stride())


def full_model_state(model: GPT) -> dict[str, torch.Tensor]:
    """The whole model's tensors on rank 0's CPU (state-dict names), gathered from the shards; empty on the other
    processes. Every process must call this."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_optimizer_shards(tensors: dict[str, torch.Tensor], folder: Path):
    """Write the sharded tensors (DTensors) of optimizer state into folder: every process its shards (every process
    must call this)."""
    try:
        dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(folder), save_distributed=True))
    except CheckpointException as e:  # a BaseException, raised in every process
        raise ShardsFailed(first_failure(e)) from None


def first_failure(e: CheckpointException) -> str:
    error = next(iter(e.failures.values()))[0]
    return f"{error.strerror} ({error.filename})" if isinstance(error, OSError) and error.strerror else str(error)


def load_optimizer_shards(folder: Path, model: GPT) -> dict[str, torch.Tensor]:
    """The tensors save_optimizer_shards wrote, each as model's parameter of its name is held: this process's shards
    of a sharded model (whatever number of processes wrote them), whole tensors otherwise."""
    reader = HuggingFaceStorageReader(str(folder))
    parameters = dict(model.named_parameters())
    targets = {}
    for name, stored in reader.read_metadata().state_dict_metadata.items():
        if sum(math.prod(chunk.sizes) for chunk in stored.chunks) != math.prod(stored.size):
            raise ShardsFailed(f"{folder} lacks part of {name}: a process's file is missing")
        parameter = parameters.get(state_owner(name))
        moments = len(stored.size) > 0  # shaped as the parameter (a step count is a scalar)
        if parameter is not None and moments and parameter.shape != stored.size:
            raise ShardsFailed(f"{folder}: {name} is {tuple(stored.size)}, not {tuple(parameter.shape)}")
        if isinstance(parameter, DTensor) and moments:
            mesh, placements = parameter.device_mesh, parameter.placements
            targets[name] = dtensor_empty(
                stored.size, dtype=stored.properties.dtype, device_mesh=mesh, placements=placements
            )
        else:
            targets[name] = torch.empty(stored.size, dtype=stored.properties.dtype)
    alone = not torch.distributed.is_initialized()  # one process reads every shard
    with warnings.catch_warnings():  # that it "assumes" one process: it is told so
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        try:
            dcp.load(targets, storage_reader=HuggingFaceStorageReader(str(folder)), no_dist=alone)
        except CheckpointException as e:
            raise ShardsFailed(first_failure(e)) from None
    return targets


def placed_like_parameters(tensors: dict[str, torch.Tensor], model: GPT) -> dict[str, torch.Tensor]:
    """Optimizer state saved whole (by a run without --fsdp) as this process's shards of a sharded model."""
    parameters = dict(model.named_parameters())
    placed = {}
    for name, t in tensors.items():
        parameter = parameters.get(state_owner(name))
        sharded = isinstance(parameter, DTensor) and not isinstance(t, DTensor) and parameter.shape == t.shape
        placed[name] = shard_like(t, parameter) if sharded else t
    return placed
