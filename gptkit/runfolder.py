"""A training run's folder: the checkpoint, metrics.jsonl, and the training state beside them
(training_state.safetensors: the optimizer's moments and RNG states; training_state.json: step, data position,
settings). Saved and checked here, so that --resume continues a run exactly; a crash at any moment leaves files
that resume reads or explains."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from gptkit.checkpoint import METADATA_FILE, is_checkpoint, read_safetensors_header, save_checkpoint, save_tensors
from gptkit.distributed import Processes
from gptkit.errors import GptkitError
from gptkit.files import atomic_path, read_json, write_json
from gptkit.model import GPT
from gptkit.optim import optimizer_tensors
from gptkit.options import RUN_FOLDER_IN_USE, RUN_LOCK_WAIT_S
from gptkit.runlock import folder_lock
from gptkit.runlog import METRICS_FILE, read_metrics

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
STATE_KEYS = ("step", "steps", "model", "settings", "loader", "data", "tokens_seen", "wall_time_s")


def lock_run_folder(out: Path):
    """The run folder's lock, held by a training run from before it writes anything until it ends (waiting half a
    second for a lock that an eval's append or another command's check holds for milliseconds)."""
    return folder_lock(out, "gptkit train", RUN_FOLDER_IN_USE, wait_s=RUN_LOCK_WAIT_S)


def check_out(out: Path, resume: bool, overwrite: bool):
    """Refuse to start a new run over an existing one without --overwrite (checked under the folder's lock, so that
    a run that has not saved yet counts too: it holds the lock)."""
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


def save_run(out: Path, model: GPT, optimizer, metadata: dict, state: dict, procs: Processes, extra_positions=None):
    """Checkpoint (with extra_positions, see save_checkpoint), then the optimizer and RNG tensors, then the state
    JSON (each atomic; the step in each file lets resume check that they belong together)."""
    rngs = rng_states(procs)
    if procs.main:
        save_checkpoint(model, out, metadata, extra_positions)
        tensors = rngs | optimizer_tensors(model, optimizer)
        save_tensors(out / STATE_TENSORS, tensors, {"step": str(state["step"])})
        write_json(out / STATE_JSON, state)
    procs.barrier()


def load_run_state(out: Path) -> dict:
    """The training state JSON of a run folder, checked to be complete and consistent."""
    if not (out / STATE_JSON).is_file() or not (out / STATE_TENSORS).is_file() or not is_checkpoint(out):
        raise GptkitError(f"{out} holds no training state to resume: start a new run without --resume")
    remedy = (
        f"the run cannot be resumed exactly: start it over with --overwrite, or train on from its checkpoint as a new "
        f"run (--model {out} --out ANOTHER_FOLDER)"
    )
    state = read_json(out / STATE_JSON, remedy)
    if missing := [key for key in STATE_KEYS if key not in state]:
        raise GptkitError(f"{out / STATE_JSON} is damaged (it lacks {', '.join(missing)}): {remedy}")
    tensors_step = read_safetensors_header(out / STATE_TENSORS).get("__metadata__", {}).get("step")
    metadata = read_json(out / METADATA_FILE, remedy) if (out / METADATA_FILE).is_file() else {}
    if str(state["step"]) != tensors_step or metadata.get("step") != state["step"]:
        raise GptkitError(
            f"{out}: the checkpoint and training state are from different steps (a save cut short?): {remedy}"
        )
    return state


def trim_metrics(out: Path, step: int):
    """Keep the metrics lines up to the saved step: drop those a run wrote after its last save before it stopped,
    and, with a warning, any line that is not a record (cut short by a crash)."""
    path = out / METRICS_FILE
    if not path.exists():
        return
    records, unreadable = read_metrics(path)
    if unreadable:
        print(f"warning: dropped {unreadable} unreadable line(s) of {path} (cut short by a crash?)", file=sys.stderr)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records if r["step"] <= step))
