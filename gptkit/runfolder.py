"""A training run's folder: the checkpoint, metrics.jsonl, and the training state beside them
(training_state.safetensors: the optimizer's moments and RNG states; training_state.json: step, data position,
settings). Saved and checked here, so that --resume continues a run exactly."""

import json
from pathlib import Path

import torch
import torch.distributed as dist

from gptkit.checkpoint import (
    atomic_path,
    is_checkpoint,
    read_json,
    read_metadata,
    read_safetensors_header,
    save_checkpoint,
    save_tensors,
    write_json,
)
from gptkit.distributed import Processes
from gptkit.errors import GptkitError
from gptkit.model import GPT
from gptkit.optim import optimizer_tensors
from gptkit.runlog import read_metrics

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
METRICS_FILE = "metrics.jsonl"


def check_out(out: Path, resume: bool, overwrite: bool):
    """Refuse to start a new run over an existing one without --overwrite."""
    if not resume and not overwrite and ((out / STATE_JSON).exists() or is_checkpoint(out)):
        raise GptkitError(
            f"{out} already holds a run: add --resume to continue it, --overwrite to start over, or pick another --out"
        )


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


def save_run(out: Path, model: GPT, optimizer, metadata: dict, state: dict, procs: Processes):
    """Checkpoint, then the optimizer and RNG tensors, then the state JSON (each atomic; the step in each file lets
    resume check that they belong together)."""
    rngs = rng_states(procs)
    if procs.main:
        save_checkpoint(model, out, metadata)
        tensors = rngs | optimizer_tensors(model, optimizer)
        save_tensors(out / STATE_TENSORS, tensors, {"step": str(state["step"])})
        write_json(out / STATE_JSON, state)
    procs.barrier()


def load_run_state(out: Path) -> dict:
    """The training state JSON of a run folder, checked to be complete and consistent."""
    if not out.is_dir():
        raise GptkitError(f"{out} does not exist: there is no run to resume (start one without --resume)")
    if not (out / STATE_JSON).is_file() or not (out / STATE_TENSORS).is_file() or not is_checkpoint(out):
        raise GptkitError(f"{out} holds no training state to resume: start a new run without --resume")
    state = read_json(out / STATE_JSON)
    tensors_step = read_safetensors_header(out / STATE_TENSORS).get("__metadata__", {}).get("step")
    if str(state.get("step")) != tensors_step or read_metadata(out).get("step") != state.get("step"):
        raise GptkitError(f"{out}: the checkpoint and training state are from different steps (an interrupted save?)")
    return state


def trim_metrics(out: Path, step: int):
    """Drop the metrics lines past the saved step (written after the last save by a run that then stopped)."""
    path = out / METRICS_FILE
    if not path.exists():
        return
    records, _ = read_metrics(path)  # a line cut short by a crash is past the saved step: dropped with the others
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records if r["step"] <= step))
