"""A training run's folder, saved and checked here, so that --resume continues a run exactly and a crash at any
moment loses nothing saved.

    RUN/saves/step-000120/   one complete save: the checkpoint (model.safetensors, config.json, gptkit.json) and the
                             training state beside it (training_state.safetensors: the optimizer's moments and RNG
                             states; training_state.json: step, data position, settings)
    RUN/model.safetensors    the newest save's checkpoint files, hard links into its folder (copies where the
    RUN/config.json, ...     filesystem has no links): RUN itself is a checkpoint for sample, eval and transformers
    RUN/metrics.jsonl, evals.jsonl, tensorboard/, wandb/   the run's logs (runlog)

Needs no torch at import (save_run's caller gathers the tensors), so that options can tell run folders apart.

A save is written into a temporary folder, then renamed to saves/step-N in one step: a save folder either is
complete or does not exist, and the previous one is removed only after the new one is in place and published. So
--resume always finds the newest complete save, and RUN/model.safetensors is always a whole file of one save.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

from gptkit.checkpoint.adapters import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from gptkit.checkpoint.locate import CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE, is_adapter_folder, is_checkpoint
from gptkit.checkpoint.tensors import read_safetensors_header, save_tensors
from gptkit.errors import GptkitError
from gptkit.files import atomic_dir, atomic_path, fsync, is_temporary, link_or_copy, read_json, remove, write_json
from gptkit.training.runlock import EVAL_LOCK_WAIT_S, EVALS_LOCK_FILE, RUN_FOLDER_IN_USE, RUN_LOCK_WAIT_S, folder_lock
from gptkit.training.runlog import EVALS_FILE, METRICS_FILE, TENSORBOARD_DIR, WANDB_DIR, WANDB_RUN_FILE, read_metrics
from gptkit.checkpoint.tokenizer_files import TOKENIZER_FILES
from gptkit.units import human_bytes

SAVES_DIR = "saves"
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
OPTIMIZER_SHARDS_DIR = "optimizer_shards"  # in a save of an --fsdp run: the optimizer state, a file a process
STATE_KEYS = ("step", "steps", "model", "settings", "loader", "data", "tokens_seen", "wall_time_s")
# Written first by --overwrite and removed last: a folder that has it is being emptied (finished by the next run).
CLEARING_MARK = ".clearing"
# Every file and folder of a run that --overwrite removes: gptkit's own, nothing a user put there.
RUN_ENTRIES = (
    WEIGHTS_FILE,  # first: from here on the folder is no checkpoint (nor adapters)
    ADAPTER_CONFIG_FILE,
    SAVES_DIR,
    STATE_TENSORS,
    STATE_JSON,
    METADATA_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    TENSORBOARD_DIR,
    WANDB_DIR,
    WANDB_RUN_FILE,
    ADAPTER_WEIGHTS_FILE,
    *TOKENIZER_FILES,
)
SPACE_MARGIN = 1 << 23  # bytes a save needs beyond its tensors: tokenizer and JSON files, headers


def lock_run_folder(out: Path):
    """The run folder's lock, held by a training run from before it writes anything until it ends (waiting half a
    second for a lock that another command's check holds for milliseconds)."""
    return folder_lock(out, "gptkit train", RUN_FOLDER_IN_USE, wait_s=RUN_LOCK_WAIT_S)


def open_run_folder(out: Path, resume: bool, overwrite: bool):
    """Under the run's lock, before anything else: finish an --overwrite a crash cut short, remove what killed saves
    left, refuse a new run over an existing one without --overwrite, clear the old run with it, and publish the save
    a run resumes from again (a crash may have cut its publishing short)."""
    if (out / CLEARING_MARK).exists():
        clear_run(out)
    for folder in (out, out / SAVES_DIR):
        if folder.is_dir():
            for entry in folder.iterdir():
                if is_temporary(entry):
                    remove(entry)
    check_out(out, resume, overwrite)
    if overwrite:
        clear_run(out)
    if resume and (saved := newest_save(out)) not in (None, out):
        publish(saved, out)


# --- the saves of a run ----------------------------------------------------------------------------------------------


def save_folders(out: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete save in out, oldest first."""
    saves = Path(out) / SAVES_DIR
    if not saves.is_dir():
        return []
    found = [(re.fullmatch(r"step-(\d+)", p.name), p) for p in saves.iterdir()]
    return sorted((int(m[1]), p) for m, p in found if m and p.is_dir())


def newest_save(out: Path) -> Path | None:
    """The folder of the newest complete save of the run in out: a save folder, or out itself for a run saved before
    save folders (its state files beside the checkpoint); None when out holds no save."""
    if saves := save_folders(out):
        return saves[-1][1]
    return Path(out) if (Path(out) / STATE_JSON).is_file() else None


def check_out(out: Path, resume: bool, overwrite: bool):
    """Refuse to start a new run over an existing one without --overwrite (checked under the folder's lock, so that
    a run that has not saved yet counts too: it holds the lock)."""
    if not resume and not overwrite and (newest_save(out) or is_checkpoint(out)):
        raise GptkitError(
            f"{out} already holds a run: add --resume to continue it, --overwrite to start over, or pick another --out"
        )


def clear_run(out: Path):
    """Remove the run in out (for --overwrite): every file gptkit wrote there, none a user put there. The mark written
    first and removed last makes it one step for a crash: the next run finishes what a killed one began."""
    with atomic_path(out / CLEARING_MARK):
        pass
    for name in RUN_ENTRIES:
        remove(out / name)
    with folder_lock(out, "gptkit train", "wait for that eval to end", EVAL_LOCK_WAIT_S, EVALS_LOCK_FILE):
        remove(out / EVALS_FILE)  # under the lock an eval appends under
    (out / CLEARING_MARK).unlink()


# --- saving ----------------------------------------------------------------------------------------------------------


def save_run(
    out: Path,
    write_model: Callable[[Path], None],
    model_bytes: int,
    tensors: dict,
    state: dict,
    written: dict[str, Path] | None = None,
):
    """Save the run at state's step: the model (write_model(folder) writes its files: a checkpoint, or a LoRA run's
    adapters; model_bytes, about their size), the training state's tensors (optimizer, RNG) and state, and the folders
    `written` already holds (name in the save: a temporary folder beside it, the shards every process wrote), into a
    save folder renamed into place once complete; then publish its model files in out and remove the older saves. A
    failure (disk full, an I/O error) is a one-line GptkitError that leaves the previous save as it was."""
    step, previous = state["step"], newest_save(out)
    folder = out / SAVES_DIR / f"step-{step:06d}"
    needed = SPACE_MARGIN + model_bytes + sum(t.numel() * t.element_size() for t in tensors.values())
    try:
        if shutil.disk_usage(out).free < needed:
            raise OSError(errno.ENOSPC, "No space left on device")
        if folder.exists():  # left by a run that stopped before its next save; never the newest
            remove(folder)
        with atomic_dir(folder) as tmp:
            write_model(tmp)
            save_tensors(tmp / STATE_TENSORS, tensors, {"step": str(step)})
            for name, folder_written in (written or {}).items():
                os.replace(folder_written, tmp / name)
            write_json(tmp / STATE_JSON, state)
    except OSError as e:
        if not folder.is_dir():
            raise GptkitError(save_failure(out, step, previous, needed, e)) from None
        saved_but(folder, e)  # the folder was renamed into place: the save is whole
    try:
        publish(folder, out)
    except OSError as e:
        saved_but(folder, e)
    stale = [older for _, older in save_folders(out)[:-1]]
    if previous == out:  # a run saved before save folders: its state files are in the save now
        stale += [out / STATE_TENSORS, out / STATE_JSON]
    try:
        for path in stale:
            remove(path)
    except OSError as e:  # the new save is whole: the next save removes what is left
        print(f"warning: could not remove the older save {path}: {e.strerror or e}", file=sys.stderr)


def staging_folder(out: Path, step: int, name: str) -> Path:
    """A temporary folder for files of the save at step that every process writes before save_run (its `written`);
    one a killed run left is removed when the run is next opened."""
    return out / SAVES_DIR / f".step-{step:06d}.{name}.tmp"


def saved_but(folder: Path, e: OSError):
    where = f" ({e.filename})" if e.filename else ""
    raise GptkitError(
        f"saved step {folder.name.removeprefix('step-').lstrip('0') or 0} to {folder}, but what followed failed: "
        f"{e.strerror or e}{where} (--resume goes on from that save)"
    ) from None


def save_failure(out: Path, step: int, previous: Path | None, needed: int, e: OSError) -> str:
    kept = f"the previous save ({previous.name}) is kept: --resume goes on from it" if previous else "nothing is saved"
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        free = shutil.disk_usage(out).free
        return (
            f"not enough space in {out} to save step {step}: a save needs {human_bytes(needed)}, "
            f"{human_bytes(free)} is free; free up {human_bytes(max(needed - free, 1))} or more ({kept})"
        )
    where = f" ({e.filename})" if e.filename else ""
    return f"could not save step {step} to {out}: {e.strerror or e}{where} ({kept})"


def publish(folder: Path, out: Path):
    """Make the checkpoint files of the save in folder those of out, each replaced in one step: the weights first,
    config.json next (a run's first publish, cut short, leaves weights without their config for one file's time at
    most), then out flushed once. The training state stays in the save: its files, and its folders (an --fsdp run's
    optimizer shards)."""
    names = [p.name for p in folder.iterdir() if p.is_file() and p.name not in (STATE_TENSORS, STATE_JSON)]
    for name in sorted(names, key=lambda name: (name != WEIGHTS_FILE, name != CONFIG_FILE)):
        link_or_copy(folder / name, out / name, flush_folder=False)
    fsync(out)


# --- resuming --------------------------------------------------------------------------------------------------------


def load_run_state(out: Path) -> tuple[dict, Path]:
    """(training state, the folder of the save it is in) of the newest save in out, checked to be complete and
    consistent."""
    folder = newest_save(out)
    if folder is None:
        raise GptkitError(f"{out} holds no training state to resume: start a new run without --resume")
    remedy = (
        f"the run cannot be resumed exactly: start it over with --overwrite, or train on from its checkpoint as a new "
        f"run (--model {out} --out ANOTHER_FOLDER)"
    )
    lora = is_adapter_folder(folder)  # a LoRA run's save: the adapters, not a whole checkpoint
    weights, config = (ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE) if lora else (WEIGHTS_FILE, CONFIG_FILE)
    if missing := [name for name in (STATE_JSON, STATE_TENSORS, weights, config) if not (folder / name).is_file()]:
        raise GptkitError(f"{folder} is damaged (it lacks {', '.join(missing)}): {remedy}")
    state = read_json(folder / STATE_JSON, remedy)
    if missing := [key for key in STATE_KEYS if key not in state]:
        raise GptkitError(f"{folder / STATE_JSON} is damaged (it lacks {', '.join(missing)}): {remedy}")
    try:
        tensors_step = read_safetensors_header(folder / STATE_TENSORS).get("__metadata__", {}).get("step")
        read_safetensors_header(folder / weights)  # whole, as its header says
    except GptkitError as e:
        raise GptkitError(f"{e}: {remedy}") from None
    metadata = read_json(folder / METADATA_FILE, remedy) if (folder / METADATA_FILE).is_file() else {}
    if str(state["step"]) != tensors_step or metadata.get("step") != state["step"]:
        raise GptkitError(
            f"{folder}: the checkpoint and training state are from different steps (a save cut short?): {remedy}"
        )
    return state, folder


def trim_metrics(out: Path, step: int):
    """Keep the metrics lines up to the saved step: drop those a run wrote after its last save before it stopped,
    and, with a warning, any line that is not a record (cut short by a crash)."""
    path = out / METRICS_FILE
    if not path.exists():
        return
    records, unreadable = read_metrics(path)
    if unreadable:
        print(f"warning: dropped {unreadable} unreadable line(s) of {path} (cut short by a crash?)", file=sys.stderr)
    try:
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records if r["step"] <= step))
    except OSError as e:
        raise GptkitError(f"cannot write to {out}: {e.strerror or e}") from None
