"""`gptkit train --fsdp` under torchrun on the CPU (gloo): two processes holding half of the weights, gradients and
optimizer state each train as one process does, save a whole checkpoint and their optimizer shards, and resume
exactly (on two processes) or at all (on one; a run without --fsdp resumed with it)."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import (  # noqa: F401 (hellaswag_file: a fixture)
    assert_fails,
    hellaswag_file,
    losses,
    max_weight_difference,
    run,
    run_torchrun,
    weights,
)

from gptkit.checkpoint.folder import read_metadata
from gptkit.training.runfolder import OPTIMIZER_SHARDS_DIR, load_run_state, newest_save

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed"),
    pytest.mark.slow,  # torchrun: two processes each test
]

FP32_CPU = ["--block-size", "32", "--lr", "1e-3", "--dtype", "float32", "--device", "cpu", "--eval-tokens", "256"]


def kill_tree(pid: int):
    """SIGKILL a process and every process under it (torchrun's workers are not in its process group)."""
    tree, i = [pid], 0
    while i < len(tree):
        for task in Path(f"/proc/{tree[i]}/task").glob("*"):
            tree += [int(child) for child in (task / "children").read_text().split()]
        i += 1
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_sharded_processes_match_one(text, tiny_checkpoint, hellaswag_file, tmp_path, optimizer):  # noqa: F811
    two, one = tmp_path / "two", tmp_path / "one"
    options = ["--steps", "3", "--optimizer", optimizer, "--hellaswag", hellaswag_file, "--grad-accum", "2", *FP32_CPU]
    ran = run_torchrun(text, tiny_checkpoint, two, "--batch-size", "1", "--fsdp", *options)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "x 2 processes (FSDP)" in ran.stdout
    run(
        text,
        tiny_checkpoint,
        one,
        steps=3,
        batch_size=2,
        grad_accum=2,
        optimizer=optimizer,
        hellaswag=str(hellaswag_file),
    )
    assert losses(two) == pytest.approx(losses(one), rel=1e-4)
    # every process scores every example under --fsdp (their forward passes gather the weights together)
    assert read_metadata(two)["hellaswag_acc_norm"] == read_metadata(one)["hellaswag_acc_norm"]
    assert read_metadata(two)["val_loss"] == pytest.approx(read_metadata(one)["val_loss"], rel=1e-5)
    # The shards gather to what one process holds, up to the order of the sums in the gradients' reduction: the
    # bounds of the two-process DDP test (test_train.max_weight_difference) hold for FSDP's reduce-scatter too.
    settings = read_metadata(one)["settings"]
    settings["batch_size"] *= settings["grad_accum"]  # the bounds' sums run over every token of a step
    one_weights, two_weights = weights(one), weights(two)
    assert one_weights.keys() == two_weights.keys()
    for name in one_weights:
        bound = max_weight_difference(name, one_weights[name].shape, settings)
        torch.testing.assert_close(
            two_weights[name], one_weights[name], atol=bound, rtol=0, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_a_sharded_run_resumes_exactly_and_on_one_process(text, tiny_checkpoint, tmp_path):
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    constant_lr = ["--min-lr", "1e-3", "--warmup-steps", "0"]  # the same schedule for --steps 2 and --steps 4
    options = ["--batch-size", "2", "--fsdp", "--optimizer", "muon", "--save-every", "2", *constant_lr, *FP32_CPU]
    ran = run_torchrun(text, tiny_checkpoint, straight, "--steps", "4", *options)
    assert ran.returncode == 0, ran.stderr[-3000:]
    ran = run_torchrun(text, tiny_checkpoint, cut, "--steps", "2", *options)
    assert ran.returncode == 0, ran.stderr[-3000:]
    shards = newest_save(cut) / OPTIMIZER_SHARDS_DIR
    assert len(list(shards.glob("*.safetensors"))) == 2  # one file a process
    assert not (cut / OPTIMIZER_SHARDS_DIR).exists()  # the training state stays in the save
    on_one = tmp_path / "on-one"
    shutil.copytree(cut, on_one)

    ran = run_torchrun(text, tiny_checkpoint, cut, "--steps", "4", "--resume", *options)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "resuming at step 2/4" in ran.stdout
    assert losses(cut) == losses(straight)
    resumed, whole = weights(cut), weights(straight)
    assert all(torch.equal(resumed[name], whole[name]) for name in whole)

    # one process reads both processes' shards whole, and takes the same global batch in two micro-batches
    summary = run(text, None, on_one, steps=4, resume=True, batch_size=None, block_size=None)
    assert summary["step"] == 4 and read_metadata(on_one)["settings"]["grad_accum"] == 2
    assert losses(on_one) == pytest.approx(losses(straight), rel=1e-4)
    settings = read_metadata(straight)["settings"]
    settings["batch_size"] *= 2  # the bounds' sums run over every token of a step: 2 processes' batches
    for name, tensor in weights(on_one).items():  # the optimizer state read whole: the run goes on as it would
        bound = max_weight_difference(name, tensor.shape, settings)
        torch.testing.assert_close(tensor, whole[name], atol=bound, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


def test_a_run_without_fsdp_resumes_sharded(text, tiny_checkpoint, tmp_path):
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    constant_lr = dict(min_lr=1e-3, warmup_steps=0)  # the same schedule for --steps 2 and --steps 4
    run(text, tiny_checkpoint, straight, steps=4, batch_size=2, grad_accum=2, **constant_lr)
    run(text, tiny_checkpoint, cut, steps=2, batch_size=2, grad_accum=2, save_every=2, **constant_lr)
    ran = run_torchrun(text, tiny_checkpoint, cut, "--steps", "4", "--resume", "--fsdp")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "x 2 processes (FSDP)" in ran.stdout and "accum 1 " in ran.stdout  # the same global batch
    assert losses(cut) == pytest.approx(losses(straight), rel=1e-4)
    assert (newest_save(cut) / OPTIMIZER_SHARDS_DIR).is_dir()


def test_bad_fsdp_options(text, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    assert_fails([text, "--model", tiny_checkpoint, "--fsdp"], "torchrun", out)
    assert_fails([text, "--model", tiny_checkpoint, "--fsdp", "--lora-rank", "4"], "--fsdp and --lora-rank", out)
    # the global batch is batch x block x processes tokens: 2 x 32 x 2 does not divide 192
    ran = run_torchrun(text, tiny_checkpoint, out, "--fsdp", "--batch-size", "2", "--tokens-per-step", "192", *FP32_CPU)
    errors = [line for line in ran.stderr.splitlines() if line.startswith("error:")]
    assert ran.returncode != 0 and errors and all("multiple of batch x block x processes" in e for e in errors)
    assert "Traceback" not in ran.stdout and not out.exists()


def test_a_sharded_run_killed_at_any_moment_resumes_to_the_same_weights(text, tiny_checkpoint, tmp_path):
    """SIGKILL every process of an --fsdp run saving at every step, at moments spread over its steps (most of a step
    is its save: the gathered checkpoint, every process's optimizer shards, the renames): after each kill the newest
    save is whole, and the run resumed to the end holds the weights of a run never killed."""
    from transformers import GPT2LMHeadModel

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    flat_lr = ["--min-lr", "1e-3", "--warmup-steps", "0"]
    options = ["--steps", "30", "--batch-size", "2", "--fsdp", "--save-every", "1", "--eval-every", "0", *flat_lr]
    ran = run_torchrun(text, tiny_checkpoint, straight, *options, *FP32_CPU)
    assert ran.returncode == 0, ran.stderr[-3000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gptkit"]
    command = [*launcher, "train", str(text), "--model", str(tiny_checkpoint), "--out", str(killed), *options]
    command += FP32_CPU
    for delay in (0.0, 0.1, 0.2, 0.3, 0.4):
        child = subprocess.Popen(
            [*command, *(["--resume"] if newest_save(killed) else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=os.environ | {"OMP_NUM_THREADS": "1"},
        )
        saved_before = newest_save(killed)
        deadline = time.time() + 120
        # until it has saved a step of its own, and the run folder holds a published checkpoint (before the first
        # save is published there is none to load: a kill then leaves the save, and --resume, but no checkpoint yet)
        while child.poll() is None and time.time() < deadline:
            if newest_save(killed) not in (None, saved_before) and (killed / "config.json").exists():
                break
            time.sleep(0.01)
        time.sleep(delay)
        kill_tree(child.pid)
        child.wait()
        state, folder = load_run_state(killed)  # the newest save is whole
        assert child.returncode == -signal.SIGKILL and (folder / OPTIMIZER_SHARDS_DIR).is_dir()
        GPT2LMHeadModel.from_pretrained(killed)  # and the run folder a checkpoint at every moment
    ran = run_torchrun(text, tiny_checkpoint, killed, *options, "--resume", *FP32_CPU)
    assert ran.returncode == 0, ran.stderr[-3000:]
    resumed, whole = weights(killed), weights(straight)
    assert all(torch.equal(resumed[name], whole[name]) for name in whole)


def test_two_sharded_processes_in_bf16(text, tiny_checkpoint, tmp_path):
    """bf16 under --fsdp: the blocks' weights gathered in bf16, the norms, embeddings and residual stream in fp32 as
    autocast keeps them, so the first step (same weights) computes the loss of one process up to the rounding of one
    bf16 result (2^-8 relative), whatever the order of the sums in the products."""
    two, one = tmp_path / "two", tmp_path / "one"
    bf16 = ["--steps", "2", "--block-size", "32", "--dtype", "bfloat16", "--device", "cpu", "--eval-tokens", "256"]
    ran = run_torchrun(text, tiny_checkpoint, two, "--batch-size", "2", "--fsdp", *bf16)
    assert ran.returncode == 0, ran.stderr[-3000:]
    run(text, tiny_checkpoint, one, steps=2, batch_size=4, dtype="bfloat16")
    assert losses(two)[0] == pytest.approx(losses(one)[0], rel=2**-8)
