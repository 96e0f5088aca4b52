"""Durability order: every write that gptkit makes appear under its own name (a file renamed into place, a save folder
renamed whole, a file of a folder replaced in place) survives a power cut from that moment on. The fsyncs and renames
are recorded (faults.WriteOrder; no real power cut needed), and for each rename: the data of each file fsynced as it
is when renamed, each folder fsynced after its files, the folder it lands in fsynced after the rename."""

import os

import torch
from faults import WriteOrder
from typer.testing import CliRunner

from gptkit.checkpoint.folder import save_adapters, save_checkpoint
from gptkit.checkpoint.tensors import save_tensors
from gptkit.cli import app
from gptkit.data.prepare import prepare
from gptkit.files import atomic_dir, atomic_path, link_or_copy, write_json
from gptkit.model.config import LoraSettings
from gptkit.model.lora import add_lora
from gptkit.training.runfolder import SAVES_DIR, save_run, staging_folder

# a tiny model for a few steps, saving every step (as test_nothing_lost's runs)
TRAIN = ["--model", "nano", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16", "--batch-size"]
TRAIN += ["2", "--eval-every", "0", "--save-every", "1", "--dtype", "float32", "--device", "cpu"]


def recording(root, monkeypatch) -> WriteOrder:
    order = WriteOrder(root)
    order.install(monkeypatch.setattr)
    return order


def assert_durable(order: WriteOrder, *names: str):
    """No write out of order, and each of names (a file or folder name) among what was renamed into place."""
    renamed = {os.path.basename(path) for path in order.renames()}
    assert set(names) <= renamed, sorted(renamed)
    assert not order.problems(), order.problems()


def test_atomic_files_and_folders(tmp_path, monkeypatch):
    order = recording(tmp_path, monkeypatch)
    write_json(tmp_path / "a.json", {"a": 1})
    with atomic_path(tmp_path / "b.txt") as tmp:
        tmp.write_text("b")
    save_tensors(tmp_path / "c.safetensors", {"c": torch.ones(3)})
    link_or_copy(tmp_path / "b.txt", tmp_path / "d.txt")
    for new in (True, False):  # a new folder, renamed whole; then the same folder again, its files replaced one by one
        with atomic_dir(tmp_path / "folder", first="f.json") as tmp:
            write_json(tmp / "e.json", {"e": 1})
            write_json(tmp / "f.json", {"f": 1})
            if new:  # a folder in it (a save's optimizer shards)
                (tmp / "inner").mkdir()
                with atomic_path(tmp / "inner" / "g.txt") as inner:
                    inner.write_text("g")
    assert_durable(order, "a.json", "b.txt", "c.safetensors", "d.txt", "folder", "e.json", "f.json")


def test_checkpoint_and_adapter_saves(tiny_model, tmp_path, monkeypatch):
    order = recording(tmp_path, monkeypatch)
    save_checkpoint(tiny_model, tmp_path / "ckpt", {"note": "new"})
    save_checkpoint(tiny_model, tmp_path / "ckpt", {"note": "over the old one"})
    add_lora(tiny_model, LoraSettings(rank=2, alpha=4.0))
    save_adapters(tiny_model, tmp_path / "adapters", LoraSettings(rank=2, alpha=4.0), "base", {"step": 1})
    assert_durable(order, "ckpt", "model.safetensors", "config.json", "gptkit.json", "adapters")


def test_a_training_run_saves_durably(text, tmp_path, monkeypatch):
    """A run's saves, resumed (its older save removed, the newest published in the run folder, metrics trimmed) and
    started over with --overwrite."""
    out = tmp_path / "run"
    order = recording(tmp_path, monkeypatch)

    def train(steps, *extra):
        args = ["train", str(text), "--out", str(out), "--steps", str(steps), *TRAIN, *extra]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output

    train(2)
    train(3, "--resume")
    train(1, "--overwrite")
    assert_durable(order, "step-000001", "step-000002", "step-000003", "model.safetensors", "metrics.jsonl")


def test_a_save_with_folders_written_by_every_process(tmp_path, monkeypatch):
    """save_run moving in a folder that the processes wrote (an --fsdp run's optimizer shards, each file fsynced by
    torch.distributed.checkpoint's writer) before the save folder is renamed into place."""
    out = tmp_path / "run"
    (out / SAVES_DIR).mkdir(parents=True)
    order = recording(tmp_path, monkeypatch)
    shards = staging_folder(out, 1, "optimizer_shards")
    shards.mkdir()
    with open(shards / "shard-0.safetensors", "wb") as f:
        f.write(b"shard")
        f.flush()
        os.fsync(f.fileno())
    state = {"step": 1, "note": "a save"}
    save_run(out, lambda folder: write_json(folder / "model.json", {}), 0, {}, state, {"optimizer_shards": shards})
    assert (out / SAVES_DIR / "step-000001" / "optimizer_shards" / "shard-0.safetensors").is_file()
    assert_durable(order, "step-000001")


def test_prepared_shards_and_manifest(text, tmp_path, monkeypatch):
    order = recording(tmp_path, monkeypatch)
    prepare(text, tmp_path / "tokens", shard_tokens=3000)
    assert_durable(order, "tokens_000000.bin", "tokens_000003.bin", "manifest.json")
