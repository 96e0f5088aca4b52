import json
import os
import subprocess
import sys

import pytest
from conftest import assert_one_line_error
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import assert_fails, losses, run, train_command

from gptkit.data.loader import BatchLoader
from gptkit.training.runfolder import trim_metrics
from gptkit.training.runlog import (
    RunLog,
    TensorBoardSink,
    WandbSink,
    read_metrics,
    scalars,
)


def events(out) -> EventAccumulator:
    accumulator = EventAccumulator(str(out / "tensorboard"))
    accumulator.Reload()
    return accumulator


def steps_and_values(accumulator, tag) -> tuple[list[int], list[float]]:
    scalars = accumulator.Scalars(tag)
    return [s.step for s in scalars], [s.value for s in scalars]


def records(out) -> list[dict]:
    return read_metrics(out / "metrics.jsonl")[0]


def test_read_metrics_skips_a_line_cut_short(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert read_metrics(path) == ([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}], 1)
    trim_metrics(tmp_path, 1)
    assert read_metrics(path) == ([{"step": 1, "loss": 2.0}], 0)


def test_scalars_are_the_numeric_fields_but_the_step():
    record = {"step": 3, "loss": 2.5, "tokens_seen": 96, "hellaswag_acc_norm": 0.25, "note": "x", "flag": True}
    assert scalars(record) == {"loss": 2.5, "tokens_seen": 96, "hellaswag_acc_norm": 0.25}


def test_tensorboard_sink_writes_any_numeric_field_and_the_settings(tmp_path):
    sink = TensorBoardSink(tmp_path, {"lr": 0.001, "model": "nano"}, start_step=0)
    sink.write({"step": 1, "loss": 3.0, "lr": 1e-3})
    sink.write({"step": 2, "loss": 2.5, "lr": 1e-3, "val_loss": 2.75, "hellaswag_acc_norm": 0.3})
    sink.close()
    accumulator = events(tmp_path)
    assert set(accumulator.Tags()["scalars"]) == {"loss", "lr", "val_loss", "hellaswag_acc_norm"}
    assert steps_and_values(accumulator, "loss") == ([1, 2], [3.0, 2.5])
    assert steps_and_values(accumulator, "hellaswag_acc_norm") == ([2], [pytest.approx(0.3)])
    settings = accumulator.Tensors("settings/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| lr | 0.001 |" in settings and "| model | nano |" in settings

    TensorBoardSink(tmp_path, {}, start_step=0).close()  # a new run in the folder (--overwrite): no old curves
    assert events(tmp_path).Tags()["scalars"] == []


def test_tensorboard_curves_of_a_crashed_and_resumed_run_have_each_step_once(
    text, tiny_checkpoint, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    next_batch, calls = BatchLoader.next_batch, []

    def crash_at_step_7(self):  # after the save at step 4, steps 5 and 6 reach the event file, then the run dies
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("the machine went away")
        return next_batch(self)

    monkeypatch.setattr(BatchLoader, "next_batch", crash_at_step_7)
    with pytest.raises(RuntimeError, match="went away"):
        run(text, tiny_checkpoint, out, steps=10, eval_every=4, save_every=4, tensorboard=True)
    assert steps_and_values(events(out), "loss")[0] == [1, 2, 3, 4, 5, 6]
    monkeypatch.setattr(BatchLoader, "next_batch", next_batch)
    run(text, None, out, steps=10, eval_every=4, save_every=4, resume=True)  # TensorBoard on, as the run was

    accumulator = events(out)
    metrics = records(out)
    assert [r["step"] for r in metrics] == list(range(1, 11))
    for tag in ("loss", "lr", "grad_norm", "tokens_seen", "tokens_per_s", "step_time_s"):
        steps, values = steps_and_values(accumulator, tag)
        assert steps == list(range(1, 11)), tag
        assert values == pytest.approx([r[tag] for r in metrics], rel=1e-6), tag
    assert steps_and_values(accumulator, "val_loss") == (
        [4, 8, 10],
        pytest.approx([r["val_loss"] for r in metrics if "val_loss" in r], rel=1e-6),
    )
    assert losses(out) == [r["loss"] for r in metrics]


class FakeWandb:
    """The part of the wandb module that WandbSink uses, recording what it was given."""

    def __init__(self):
        self.inits, self.logged, self.finished = [], [], 0
        self.next_id, self.history = 0, {}

    def init(self, project, id, resume, name, dir, config):
        self.inits.append({"project": project, "id": id, "resume": resume, "name": name, "config": config})
        if id is None:
            self.next_id += 1
            id = f"run{self.next_id}"
        fake = self
        last = max(self.history.get(id, [0]))

        class Run:
            step = last + 1 if last else 0

            def log(self, data, step):
                fake.logged.append((step, data))
                fake.history.setdefault(id, []).append(step)

            def finish(self):
                fake.finished += 1

        Run.id = id
        return Run()


def test_wandb_sink_logs_each_step_once_and_resume_continues_the_run(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    sink = WandbSink("proj", tmp_path, {"lr": 0.001}, resumed=False)
    for step in (1, 2, 3):
        sink.write({"step": step, "loss": 4.0 - step, "lr": 0.001, "note": "not a number"})
    sink.close()
    assert json.loads((tmp_path / "wandb.json").read_text()) == {"project": "proj", "id": "run1"}
    assert fake.inits[0] | {"config": None} == {
        "project": "proj",
        "id": None,
        "resume": "allow",
        "name": tmp_path.name,
        "config": None,
    }
    assert fake.inits[0]["config"] == {"lr": 0.001}
    assert fake.logged == [(s, {"loss": 4.0 - s, "lr": 0.001}) for s in (1, 2, 3)]

    # resumed from a save at step 2: step 3 comes again (identical) and is not sent twice
    fake.logged.clear()
    sink = WandbSink("proj", tmp_path, {"lr": 0.001}, resumed=True)
    for step in (3, 4):
        sink.write({"step": step, "loss": 4.0 - step})
    sink.close()
    assert fake.inits[1]["id"] == "run1" and fake.logged == [(4, {"loss": 0.0})] and fake.finished == 2

    # a new run in the folder (--overwrite) is a new wandb run
    WandbSink("proj", tmp_path, {}, resumed=False).close()
    assert json.loads((tmp_path / "wandb.json").read_text())["id"] == "run2"


def test_wandb_offline_run_and_resume_keep_one_run_id(text, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    run(text, tiny_checkpoint, out, steps=2, wandb="gptkit-tests")
    run_id = json.loads((out / "wandb.json").read_text())["id"]
    run(text, None, out, steps=3, resume=True)  # logs to wandb, as the run did
    assert json.loads((out / "wandb.json").read_text())["id"] == run_id
    offline_runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(p.name.endswith(run_id) for p in offline_runs)
    assert all((p / f"run-{run_id}.wandb").stat().st_size > 0 for p in offline_runs)


def test_missing_logging_packages_stop_the_run_before_it_starts(text, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    assert_fails([text, "--model", "nano", "--tensorboard"], "pip install 'gptkit[tensorboard]'", tmp_path / "run")
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert_fails([text, "--model", "nano", "--wandb", "proj"], "pip install 'gptkit[wandb]'", tmp_path / "run")
    assert_fails([text, "--model", "nano", "--wandb", " "], "--wandb needs a project name", tmp_path / "run")


def test_wandb_without_a_login_says_how_to_log_in(text, tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"HOME": str(tmp_path), "NETRC": str(tmp_path / "no-netrc"), "WANDB_CONFIG_DIR": str(tmp_path / "wb")}
    command = [*train_command(text, "nano", out), "--wandb", "proj", "--steps", "1"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=120)
    assert_one_line_error(result, "wandb login")
    assert not out.exists()


def test_a_sink_that_fails_to_open_closes_those_opened_before_it():
    closed = []

    class Sink:
        def __init__(self, name):
            self.name = name

        def write(self, record):
            pass

        def close(self):
            closed.append(self.name)

    def broken():
        raise RuntimeError("cannot open")

    with pytest.raises(RuntimeError, match="cannot open"):
        RunLog.open([lambda: Sink("a"), lambda: Sink("b"), broken, lambda: Sink("never")])
    assert closed == ["b", "a"]
    with RunLog.open([lambda: Sink("a"), lambda: Sink("b")]):
        pass
    assert closed == ["b", "a", "b", "a"]  # the last opened closes first
