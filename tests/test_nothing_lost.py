"""Nothing lost: a run folder survives a SIGKILL at any moment of a save, a write that fails, a full disk, an
--overwrite cut short; eval reads a folder while a run trains in it. The faults are injected at the calls that change
files (faults.py), so the kill points cover every write, rename, link and removal of a save."""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error
from faults import Faults, raise_oserror
from typer.testing import CliRunner

from gptkit.checkpoint.folder import load_checkpoint
from gptkit.checkpoint.tensors import load_tensors
from gptkit.cli import app
from gptkit.files import is_temporary
from gptkit.training.runfolder import CLEARING_MARK, SAVES_DIR, STATE_TENSORS, load_run_state, newest_save, save_folders
from gptkit.training.runlog import EVALS_FILE
from gptkit.checkpoint.tokenizer_files import TOKENIZER_FILES

FAULTS = Path(__file__).with_name("faults.py")
# a flat learning rate (no warmup, min_lr = lr): runs resumed with a larger --steps train as one run of that many
OPTIONS = ["--lr", "1e-3", "--min-lr", "1e-3", "--warmup-steps", "0", "--save-every", "1"]
OPTIONS += ["--model", "nano", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16"]
OPTIONS += ["--batch-size", "2", "--eval-every", "0", "--eval-tokens", "32", "--dtype", "float32", "--device", "cpu"]


def train(text, out, steps: int, *extra) -> tuple[int, str]:
    """`gptkit train` in this process: (exit code, output)."""
    args = ["train", str(text), "--out", str(out), "--steps", str(steps), *OPTIONS, *map(str, extra)]
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output


def train_with_faults(text, out, steps: int, at: int | str, log: Path, *extra) -> subprocess.CompletedProcess:
    """`gptkit train` in a child process that kills itself (SIGKILL) at the at-th call changing a file in out."""
    command = [sys.executable, str(FAULTS), "train", str(text), "--out", str(out), "--steps", str(steps), *OPTIONS]
    env = os.environ | {"FAULT_ROOT": str(out), "FAULT_AT": str(at), "FAULT_LOG": str(log), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*command, *map(str, extra)], env=env, capture_output=True, text=True, timeout=300)


def state_of(out) -> dict[str, torch.Tensor]:
    """Everything a run's newest save holds: weights, optimizer moments, RNG states."""
    saved = newest_save(out)
    return load_checkpoint(saved).state_dict() | load_tensors(saved / STATE_TENSORS)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, different


def digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(folder).iterdir() if p.is_file()}


def temporaries(out) -> list[Path]:
    return [p for folder in (out, out / SAVES_DIR) if folder.is_dir() for p in folder.iterdir() if is_temporary(p)]


def spread(calls: list, n: int) -> list[str]:
    """n of the calls, spread evenly, and the first of each kind, each as "NAME:K" (the K-th call of NAME), which
    stays the same kind of call in a run whose start removes what an earlier kill left."""
    first = {name: i for i, (name, _) in reversed(list(enumerate(calls)))}
    picked = sorted(set(first.values()) | {i * len(calls) // n for i in range(n)})
    return [f"{calls[i][0]}:{sum(name == calls[i][0] for name, _ in calls[: i + 1])}" for i in picked]


@pytest.mark.slow
def test_sigkill_at_any_call_of_a_save_loses_nothing(text, tmp_path):
    """Kill `gptkit train --resume --save-every 1` at calls that change files of the run, spread over a save's
    writes, renames, links and removals, resume after each kill, and end with weights, optimizer and RNG states
    bit-identical to a run never killed."""
    from transformers import GPT2LMHeadModel

    steps, straight, out, log = 30, tmp_path / "straight", tmp_path / "killed", tmp_path / "faults.log"
    assert train_with_faults(text, straight, steps, 0, log).returncode == 0
    assert train_with_faults(text, out, steps, "save_file:3", log).returncode == -9  # in its second save
    assert train_with_faults(text, out, steps, "save_file:3", log, "--resume").returncode == -9
    calls = json.loads(log.read_text().splitlines()[-2])[:-1]  # a resumed run's start and first save, whole
    kills = []
    for at in spread(calls, 16):
        child = train_with_faults(text, out, steps, at, log, "--resume")
        assert child.returncode == -9, child.stderr  # killed in its first save
        kills.append(log.read_text().splitlines()[-1].split()[2])
        load_run_state(out)  # the newest save is whole and consistent
        GPT2LMHeadModel.from_pretrained(out)  # and the run folder a checkpoint transformers loads, at every moment
    finished = train_with_faults(text, out, steps, 0, log, "--resume")
    assert finished.returncode == 0, finished.stderr

    assert len(kills) >= 20
    assert {"save_file", "write_text", "fsync", "replace", "rename", "link", "rmtree"} <= set(kills), kills
    assert_same_state(state_of(out), state_of(straight))
    assert [step for step, _ in save_folders(out)] == [steps] and not temporaries(out)


@pytest.mark.slow  # fault injection at every write
def test_each_failing_write_of_a_save_is_one_line_and_keeps_the_previous_save(text, tmp_path, monkeypatch):
    """Make the 1st, 2nd, ... call of a resumed run's save fail once (ENOSPC and EIO in turn): one line, the previous
    save untouched where the new one did not make it, and at the end a run equal to one that never failed."""
    straight, out = tmp_path / "straight", tmp_path / "failing"
    assert train(text, straight, 1)[0] == 0
    assert train(text, out, 1)[0] == 0

    counting = Faults(out)
    with monkeypatch.context() as patch:
        counting.install(patch.setattr)
        assert train(text, out, 2, "--resume")[0] == 0
    assert newest_save(out).name == "step-000002" and len(counting.calls) > 10

    writes = {"save_file", "write_text", "rename", "link"}  # and the flush of each file written
    points = [
        i for i, (name, _) in enumerate(counting.calls, 1) if name in writes or counting.calls[i - 2][0] in writes
    ]
    failed = 0
    for at in points:
        before_step, before = newest_save(out).name, digests(newest_save(out))
        code = errno.ENOSPC if at % 2 else errno.EIO
        step = int(before_step.removeprefix("step-")) + 1
        with monkeypatch.context() as patch:
            Faults(out, at, raise_oserror(code)).install(patch.setattr)
            exit_code, output = train(text, out, step, "--resume")
        assert "Traceback" not in output and "unexpected" not in output, output
        if exit_code:
            failed += 1
            errors = [line for line in output.splitlines() if line.startswith("error:")]
            assert exit_code == 1 and len(errors) == 1 and str(out) in errors[0], output
            if "saved step" not in errors[0]:  # the new save did not make it: the previous one is as it was
                assert newest_save(out).name == before_step and digests(newest_save(out)) == before, errors[0]
                if "cannot write to" not in errors[0]:  # else it failed before training, while opening the folder
                    expected = "not enough space in" if code == errno.ENOSPC else "could not save step"
                    assert expected in errors[0] and "the previous save (step-" in errors[0], errors[0]
        load_run_state(out)
    assert failed >= 10
    steps = int(newest_save(out).name.removeprefix("step-")) + 1
    assert train(text, straight, steps, "--resume")[0] == 0 and train(text, out, steps, "--resume")[0] == 0
    assert_same_state(state_of(out), state_of(straight))
    assert not temporaries(out)  # those a failure left, removed by the next run


def test_a_full_disk_is_one_line_that_names_the_space_needed(text, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert train(text, out, 1)[0] == 0
    before = digests(newest_save(out))
    real = shutil.disk_usage
    monkeypatch.setattr("gptkit.training.runfolder.shutil.disk_usage", lambda path: real(path)._replace(free=12_345))
    result = CliRunner().invoke(app, ["train", str(text), "--out", str(out), "--steps", "2", *OPTIONS, "--resume"])
    assert_one_line_error(result, f"not enough space in {out} to save step 2: a save needs ")
    error = result.stderr
    assert "12.3 kB is free" in error and "the previous save (step-000001) is kept" in error
    assert newest_save(out).name == "step-000001" and digests(newest_save(out)) == before and not temporaries(out)
    load_checkpoint(out)


def test_a_damaged_save_is_one_line(text, tmp_path):
    out = tmp_path / "run"
    assert train(text, out, 1)[0] == 0
    saved = newest_save(out)
    for name in ("training_state.safetensors", "model.safetensors", "training_state.json"):
        content = (saved / name).read_bytes()
        for damaged in (content[: len(content) // 2], None):
            if damaged is None:
                (saved / name).unlink()
            else:
                (saved / name).write_bytes(damaged)
            result = CliRunner().invoke(app, ["train", str(text), "--out", str(out), "--steps", "2", "--resume"])
            assert_one_line_error(result, str(saved))
            assert "--overwrite" in result.stderr, result.stderr
        (saved / name).write_bytes(content)
    assert train(text, out, 2, "--resume")[0] == 0


def test_a_folder_that_cannot_be_written_is_refused_before_training(text, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(app, ["train", str(text), "--out", str(blocker / "run"), "--steps", "1", *OPTIONS])
    assert_one_line_error(result, f"cannot write to {blocker / 'run'}")


def old_run(text, out):
    """A run of 2 steps, with what earlier runs leave: evals, TensorBoard and wandb files, a user's own notes."""
    assert train(text, out, 2)[0] == 0
    (out / EVALS_FILE).write_text('{"step": 2}\n')
    for name in ("tensorboard", "wandb"):
        (out / name).mkdir()
        (out / name / "events").write_text("old curves")
    (out / "wandb.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    return out


RUN_FILES = {"saves", "model.safetensors", "config.json", "gptkit.json", "metrics.jsonl", EVALS_FILE, "tensorboard"}
RUN_FILES |= {"wandb", "wandb.json"}


def test_overwrite_starts_clean_and_a_crash_in_it_leaves_the_old_run_or_none(text, tmp_path, monkeypatch):
    out = old_run(text, tmp_path / "run")
    assert train(text, out, 1, "--overwrite")[0] == 0
    left = {p.name for p in out.iterdir()}
    new_run = {"saves", "model.safetensors", "config.json", "gptkit.json", "metrics.jsonl", *TOKENIZER_FILES}
    assert left == new_run | {"notes.txt"}, left
    assert [step for step, _ in save_folders(out)] == [1] and len((out / "metrics.jsonl").read_text().splitlines()) == 1

    old = old_run(text, tmp_path / "old")
    shutil.copytree(old, out := tmp_path / "counted")
    counting = Faults(out)
    with monkeypatch.context() as patch:
        counting.install(patch.setattr)
        assert train(text, out, 1, "--overwrite")[0] == 0
    clearing = [name for name, path in counting.calls[: counting.calls.index(("unlink", str(out / CLEARING_MARK))) + 1]]
    assert {"replace", "rmtree", "unlink"} <= set(clearing), clearing

    for at in range(1, len(clearing) + 2):  # each call of clearing, and the first of the new run
        shutil.copytree(old, out := tmp_path / f"run{at}")
        with monkeypatch.context() as patch:
            faults = Faults(out, at, raise_oserror(errno.EIO))
            faults.install(patch.setattr)
            code, output = train(text, out, 1, "--overwrite")
        if code == 0:  # a failure the call's caller deals with (e.g. mkdir of a folder that exists)
            assert train(text, out, 2, "--resume")[0] == 0 and not (out / EVALS_FILE).exists()
        elif (out / CLEARING_MARK).exists():  # the next run in the folder finishes clearing first, whatever it asks
            code, output = train(text, out, 3, "--resume")
            assert code == 1 and "holds no training state to resume" in output, output
            assert not {p.name for p in out.iterdir()} & RUN_FILES, list(out.iterdir())
        elif (out / EVALS_FILE).exists():  # the old run, whole: it resumes
            assert (out / "wandb").exists() and newest_save(out).name == "step-000002"
            assert train(text, out, 3, "--resume")[0] == 0
        else:  # cleared; what is there is the new run's
            assert not {p.name for p in out.iterdir()} & {"tensorboard", "wandb", "wandb.json"}, list(out.iterdir())
            assert all(step == 1 for step, _ in save_folders(out))
        assert (out / "notes.txt").read_text() == "mine"


def test_eval_reads_a_run_folder_while_it_trains(text, tmp_path):
    out = tmp_path / "run"
    assert train(text, out, 1)[0] == 0
    command = [sys.executable, "-m", "gptkit", "train", str(text), "--out", str(out), "--steps", "400", *OPTIONS]
    trainer = subprocess.Popen(
        [*command, "--resume"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    steps, deadline = [], time.time() + 240
    try:
        while len(set(steps)) < 4:  # evals of at least three saves of the running run
            assert trainer.poll() is None and time.time() < deadline, trainer.stderr.read() if trainer.stderr else ""
            result = CliRunner().invoke(
                app, ["eval", str(out), str(text), "--max-tokens", "64", "--json", "--dtype", "float32"]
            )
            assert result.exit_code == 0, result.output
            steps.append(json.loads(result.stdout)["step"])
            time.sleep(0.1)
        assert trainer.poll() is None  # every eval ran while the run trained
    finally:
        trainer.kill()
        trainer.wait()
    assert steps == sorted(steps), steps
    recorded = [json.loads(line)["step"] for line in (out / EVALS_FILE).read_text().splitlines()]
    assert recorded == steps
