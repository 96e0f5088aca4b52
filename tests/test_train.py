import concurrent.futures
import contextlib
import errno
import io
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from gptkit.checkpoint.folder import load_checkpoint, read_metadata
from gptkit.checkpoint.tensors import load_tensors
from gptkit.cli import app
from gptkit.data.loader import BatchLoader
from gptkit.training.optim import learning_rate
from gptkit.training.runfolder import STATE_JSON, STATE_TENSORS, newest_save
from gptkit.training.loop import Interrupted, TrainConfig, train


def run(text, model, out, **options) -> dict:
    settings = dict(
        steps=4,
        batch_size=4,
        block_size=32,
        lr=1e-3,
        dtype="float32",
        device="cpu",
        eval_every=0,
        eval_tokens=256,
        save_every=0,
    )
    cfg = TrainConfig(data=str(text), model=model and str(model), out=str(out), **settings | options)
    return train(cfg, console=Console(file=io.StringIO()))


def losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(out) -> dict[str, torch.Tensor]:
    return load_checkpoint(out).state_dict()


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(data="", steps=110, warmup_steps=10, lr=1e-3, min_lr=1e-4, schedule="cosine")
    lrs = [learning_rate(step, cfg) for step in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[4] == pytest.approx(5e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[60] == pytest.approx(5.5e-4)  # halfway through the cosine: the mean of lr and min_lr
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-2) and learning_rate(110, cfg) == 1e-4
    flat_start = TrainConfig(data="", steps=5, warmup_steps=0, lr=1e-3, min_lr=0.0, schedule="cosine")
    assert learning_rate(0, flat_start) == 1e-3


def test_linear_and_wsd_schedules():
    """linear: warmup, then a straight line to min_lr at `steps`; wsd: warmup, constant, then a straight line to
    min_lr over the last cooldown_fraction of the steps."""
    linear = TrainConfig(data="", steps=110, warmup_steps=10, lr=1e-3, min_lr=1e-4, schedule="linear")
    assert learning_rate(9, linear) == pytest.approx(1e-3) and learning_rate(10, linear) == pytest.approx(1e-3)
    assert learning_rate(60, linear) == pytest.approx(5.5e-4) and learning_rate(85, linear) == pytest.approx(3.25e-4)
    assert learning_rate(110, linear) == 1e-4
    wsd = TrainConfig(data="", steps=100, warmup_steps=10, lr=1e-3, min_lr=0.0, schedule="wsd", cooldown_fraction=0.4)
    lrs = [learning_rate(step, wsd) for step in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[10:61] == [1e-3] * 51  # stable until the cooldown, the last 40 steps, starts at step 60
    assert lrs[70] == pytest.approx(0.75e-3) and lrs[80] == pytest.approx(0.5e-3) and lrs[99] == pytest.approx(2.5e-5)
    assert lrs[100] == 0.0
    whole = TrainConfig(data="", steps=100, warmup_steps=10, lr=1e-3, min_lr=0.0, schedule="wsd", cooldown_fraction=1)
    assert [learning_rate(s, whole) for s in (10, 55)] == pytest.approx([1e-3, 0.5e-3])  # the cooldown after warmup


def test_muon_momentum_warms_up_from_085_and_the_schedule_sets_every_group(tiny_model):
    from gptkit.training.optim import apply_schedule, make_optimizer, muon_momentum

    cfg = TrainConfig(data="", steps=100, warmup_steps=0, lr=0.02, min_lr=0.0, schedule="linear", optimizer="muon",
                      embedding_lr=0.004, scalar_lr=0.001, muon_momentum_warmup=40, weight_decay=0.1)  # fmt: skip
    assert [muon_momentum(step, cfg) for step in (0, 10, 20, 39, 40, 99)] == pytest.approx(
        [0.85, 0.875, 0.9, 0.9475, 0.95, 0.95]
    )
    assert muon_momentum(0, TrainConfig(data="", muon_momentum_warmup=0)) == 0.95
    optimizer = make_optimizer(tiny_model, cfg, torch.device("cpu"))
    assert apply_schedule(optimizer, 20, cfg) == pytest.approx(0.016)
    muon, adamw = optimizer.parts
    assert muon.param_groups[0]["lr"] == pytest.approx(0.016) and muon.param_groups[0]["momentum"] == pytest.approx(0.9)
    assert [g["lr"] for g in adamw.param_groups] == pytest.approx([0.0032, 0.0008])  # embeddings, scalars
    assert all("momentum" not in g for g in adamw.param_groups)


def test_accumulation_matches_one_big_batch(text, tiny_checkpoint, tmp_path):
    run(text, tiny_checkpoint, tmp_path / "big", steps=2, batch_size=8)
    run(text, tiny_checkpoint, tmp_path / "accum", steps=2, batch_size=2, grad_accum=4)
    assert losses(tmp_path / "big") == pytest.approx(losses(tmp_path / "accum"), rel=1e-5)
    big, accum = weights(tmp_path / "big"), weights(tmp_path / "accum")
    for name in big:  # Adam moves each weight by about lr per step: a real difference would be ~1e-3
        torch.testing.assert_close(big[name], accum[name], atol=5e-5, rtol=0)
    metadata = read_metadata(tmp_path / "accum")
    assert metadata["step"] == 2 and metadata["tokens_seen"] == 2 * 8 * 32
    assert metadata["settings"]["grad_accum"] == 4 and metadata["data"]["split"] == "tail"
    assert metadata["val_loss"] is not None and metadata["data"]["path"] == str(text.resolve())


RECIPE = {"optimizer": "muon", "schedule": "wsd", "cooldown_fraction": 0.5, "min_lr_fraction": 0.0}


@pytest.mark.parametrize(
    "options",
    [{}, {"optimizer": "muon", "dropout": 0.1}, RECIPE | {"muon_momentum_warmup": 12}],
    ids=["adamw", "muon-dropout", "wsd-momentum-warmup"],
)
def test_interrupt_saves_and_resume_is_exact(text, tiny_checkpoint, tmp_path, monkeypatch, capsys, options):
    run(text, tiny_checkpoint, tmp_path / "straight", steps=16, eval_every=5, save_every=5, **options)

    next_batch, calls = BatchLoader.next_batch, []

    def ctrl_c_at_step_8(self):  # as if Ctrl-C were pressed during the 8th step
        calls.append(1)
        if len(calls) == 8:
            os.kill(os.getpid(), signal.SIGINT)
        return next_batch(self)

    monkeypatch.setattr(BatchLoader, "next_batch", ctrl_c_at_step_8)
    with pytest.raises(Interrupted, match="--resume"):
        run(text, tiny_checkpoint, tmp_path / "split", steps=16, eval_every=5, save_every=5, **options)
    assert read_metadata(tmp_path / "split")["step"] == 8
    with open(tmp_path / "split" / "metrics.jsonl", "a") as f:  # a step past the save, then a write cut by kill -9
        f.write(json.dumps({"step": 9, "loss": 1.0}) + "\n" + '{"step": 10, "loss": 9.')
    monkeypatch.setattr(BatchLoader, "next_batch", next_batch)
    capsys.readouterr()
    run(text, None, tmp_path / "split", steps=16, eval_every=5, save_every=5, resume=True)

    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and "dropped 1 unreadable line(s) of" in warnings[0] and "metrics.jsonl" in warnings[0]
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")  # every line parses, one per step
    straight, split = weights(tmp_path / "straight"), weights(tmp_path / "split")
    assert all(torch.equal(straight[name], split[name]) for name in straight)
    straight_state = load_tensors(newest_save(tmp_path / "straight") / STATE_TENSORS)
    split_state = load_tensors(newest_save(tmp_path / "split") / STATE_TENSORS)
    assert straight_state.keys() == split_state.keys()
    if options:  # Muon's momentum for the blocks' matrices, AdamW's moments for the rest
        assert "optimizer.transformer.h.0.mlp.c_fc.weight.momentum_buffer" in split_state
        assert "optimizer.transformer.h.0.mlp.c_fc.weight.exp_avg" not in split_state
        assert "optimizer.transformer.wte.weight.exp_avg" in split_state
    assert all(torch.equal(straight_state[k], split_state[k]) for k in straight_state)
    assert read_metadata(tmp_path / "split")["val_loss"] == read_metadata(tmp_path / "straight")["val_loss"]


def test_a_second_ctrl_c_stops_at_once(text, tiny_checkpoint, tmp_path, monkeypatch):
    next_batch, calls = BatchLoader.next_batch, []

    def ctrl_c_twice_at_step_3(self):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return next_batch(self)

    monkeypatch.setattr(BatchLoader, "next_batch", ctrl_c_twice_at_step_3)
    out = tmp_path / "run"
    handler = signal.getsignal(signal.SIGINT)  # Python's, or SIG_IGN for tests a shell started in the background
    code, output = cli(text, "--model", tiny_checkpoint, "--out", out, *train_options(10))
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 130 and errors == ["error: interrupted"] and "Traceback" not in output, output
    assert len(losses(out)) == 2  # stopped inside step 3, without finishing it
    assert newest_save(out) is None and not (out / ".lock").exists()
    assert signal.getsignal(signal.SIGINT) is handler  # train's own handler is gone


def test_training_lowers_the_loss_of_a_learnable_text_with_clipped_gradients(tmp_path, monkeypatch):
    """A phrase repeated: within a few dozen steps the model predicts it better than the loss of knowing only which of
    its few tokens occur (ln of their number), let alone of a uniform guess over the vocabulary (ln 50257 = 10.8).
    Every step clips the gradient's norm to 1.0."""
    from gptkit.data.loader import load_tokens

    text = tmp_path / "pattern.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    clip, clipped = torch.nn.utils.clip_grad_norm_, []

    def recording_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        norm = clip(parameters, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in parameters]))
        clipped.append((max_norm, norm.item(), after.item()))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    out = tmp_path / "run"
    run(text, "nano", out, steps=30, n_layer=1, n_head=2, n_embd=32, lr=3e-2, min_lr=3e-2, warmup_steps=0)  # constant
    loss, distinct_tokens = losses(out), len(set(load_tokens(text)[0].tolist()))
    assert loss[0] > 0.9 * math.log(50257) and loss[-1] < math.log(distinct_tokens), (loss, distinct_tokens)
    assert len(clipped) == 30 and all(max_norm == 1.0 for max_norm, _, _ in clipped)
    recorded = [json.loads(line)["grad_norm"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [norm for _, norm, _ in clipped] == recorded
    assert any(norm > 1.0 for _, norm, _ in clipped)  # clipping acted, and left the norm at 1.0:
    # up to clip's 1 / (norm + 1e-6) and the fp32 rounding of two pairwise sums of squares (log2(N) u ~ 1e-6 each)
    assert all(after == pytest.approx(min(norm, 1.0), rel=1e-5) for _, norm, after in clipped)


@pytest.mark.slow
def test_compiled_training_on_the_cpu(text, tmp_path):
    summary = run(text, "nano", tmp_path / "run", steps=2, n_layer=1, n_head=2, n_embd=32, compile=True)
    assert summary["step"] == 2 and read_metadata(tmp_path / "run")["settings"]["compile"] is True
    assert all(math.isfinite(loss) for loss in losses(tmp_path / "run"))
    load_checkpoint(tmp_path / "run")  # saved without torch.compile's wrapper in the names


def test_tf32_is_on_for_a_cuda_run_only_while_it_lasts(text, monkeypatch):
    """train() turns TF32 on for a CUDA run's fp32 products and leaves the process's settings as they were, also when
    the run fails (simulated: any machine, no GPU needed)."""
    import gptkit.training.loop
    from gptkit.training.distributed import Processes

    monkeypatch.setattr(gptkit.training.loop, "start_processes", lambda name: Processes(device=torch.device("cuda")))
    seen = []

    def run_on_cuda(cfg, procs, console, held):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        if len(seen) == 2:
            raise RuntimeError("a failing run")
        return {}

    monkeypatch.setattr(gptkit.training.loop, "run", run_on_cuda)
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for cudnn in (False, True):
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, cudnn
            with pytest.raises(RuntimeError) if cudnn else contextlib.nullcontext():
                train(TrainConfig(data=str(text), out=str(text.parent / "run")))
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, cudnn)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert seen == [(True, True), (True, True)]


def train_command(text, model, out) -> list[str]:
    """`python -m gptkit train TEXT --model MODEL --out OUT`, for a child process."""
    return [sys.executable, "-m", "gptkit", "train", str(text), "--model", str(model), "--out", str(out)]


def run_torchrun(text, model, out, *options, program=("-m", "gptkit")) -> subprocess.CompletedProcess:
    """`gptkit train TEXT --model MODEL --out OUT OPTIONS` in two processes under torchrun (program: what torchrun
    starts instead of `-m gptkit`), to the end (3 minutes at most), one thread per process."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *program]
    command = [*launcher, "train", str(text), "--model", str(model), "--out", str(out), *map(str, options)]
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    try:
        stdout, stderr = child.communicate(timeout=180)
    finally:
        if child.poll() is None:  # timed out: stop torchrun and its workers
            os.killpg(child.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, child.returncode, stdout, stderr)


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(text, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    command = [
        *train_command(text, tiny_checkpoint, out),
        "--steps",
        "100000",
        "--batch-size",
        "2",
        "--block-size",
        "16",
        "--dtype",
        "float32",
        "--device",
        "cpu",
    ]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
        assert child.poll() is None and time.time() < deadline, child.communicate()
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr + stdout
    step = read_metadata(out)["step"]
    assert step >= 1 and len(losses(out)) == step and (newest_save(out) / STATE_JSON).is_file()


# How far a weight of a two-process run may end from the one-process run's with the same global batch (fp32), for
# test_two_processes_match_one_with_the_same_global_batch. Each weight's gradient is a sum over the batch's B x T
# tokens: one process adds the 128 terms in one order, two processes add 64 each and the all-reduce adds the halves.
# Reordering a sum of L terms moves it by at most (L - 1) u times the sum of the terms' magnitudes (u = 2^-24, fp32's
# unit roundoff), and the matrix products may block their inner products (up to 4 n_embd long, in the MLP) otherwise
# for 64 rows than for 128: the gradients differ by rho = (B T + 4 n_embd) u relative to their terms (2.3e-5 here), and
# by up to CANCELLATION times more relative to a gradient whose terms cancel to a 1 / CANCELLATION of their size.
CANCELLATION = 100
QUINTIC_SLOPE_AT_0 = 3.4445  # torch.optim.Muon's a: the most one Newton-Schulz step stretches a difference
GPT2_INIT_STD = 0.02  # the scale of the weights a relative difference of the Muon matrices is taken against


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def muon_iterates_in() -> torch.dtype:
    """The dtype of optim.Muon's Newton-Schulz iteration in this process (torch's bf16, or its fp32 fallback)."""
    from gptkit.training.optim import Muon

    fp32 = Muon([torch.nn.Parameter(torch.zeros(2, 2))], torch.device("cpu")).fp32_iteration
    return torch.float32 if fp32 else torch.bfloat16


def orthogonalization_difference(input_difference: float, ns_steps: int, dtype: torch.dtype, inner: int) -> float:
    """How far two Newton-Schulz results (entries of at most 1) may be apart, for inputs (normalized to norm 1) that
    differ by input_difference: each quintic step stretches a difference by at most QUINTIC_SLOPE_AT_0, and the
    input's cast and each step's result round in the iteration's dtype, after products that add up to `inner` terms
    in fp32."""
    rounding = unit_roundoff(dtype) + inner * unit_roundoff(torch.float32)
    return QUINTIC_SLOPE_AT_0**ns_steps * input_difference + (ns_steps + 1) * rounding


def max_weight_difference(name: str, shape: torch.Size, settings: dict) -> float:
    schedule = ("steps", "lr", "min_lr", "warmup_steps", "schedule", "cooldown_fraction")
    cfg = TrainConfig(data="", **{k: settings[k] for k in schedule})
    lr_sum = sum(learning_rate(step, cfg) for step in range(cfg.steps))  # what moves a weight, step by step
    rho = (settings["batch_size"] * settings["block_size"] + 4 * settings["n_embd"]) * unit_roundoff(torch.float32)
    # AdamW's step lr * m / (sqrt(v) + eps) does not depend on the gradient's scale: a relative difference r of the
    # gradient moves it by about lr * r. The weights' own differences feed back into later gradients at lr * r << r.
    if settings["optimizer"] == "adamw":
        return lr_sum * rho * CANCELLATION
    # Muon's step is lr * sqrt(max(1, rows / columns)) * O, O the orthogonalized momentum: |O| entries at most 1,
    # apart by orthogonalization_difference for gradients apart by rho.
    ns_steps = torch.optim.Muon([torch.nn.Parameter(torch.zeros(2, 2))]).param_groups[0]["ns_steps"]
    o_difference = orthogonalization_difference(rho, ns_steps, muon_iterates_in(), 4 * settings["n_embd"])
    if len(shape) == 2 and name.startswith("transformer.h."):  # optim.is_block_matrix: Muon's
        return lr_sum * math.sqrt(max(1, shape[0] / shape[1])) * o_difference
    # the rest, with AdamW at its groups' rates: their gradients flow through the Muon matrices, which differ by up to
    # the bound
    # above (scale 4: the widest matrix, 4 n_embd x n_embd) against weights of GPT2_INIT_STD
    relative = rho + lr_sum * math.sqrt(4) * o_difference / GPT2_INIT_STD
    adamw_lr = max(settings["embedding_lr"], settings["scalar_lr"])
    return lr_sum * adamw_lr / settings["lr"] * min(2, relative * CANCELLATION)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(text, tiny_checkpoint, hellaswag_file, tmp_path, optimizer):
    two, one = tmp_path / "two", tmp_path / "one"
    options = ["--steps", "3", "--block-size", "32", "--lr", "1e-3", "--dtype", "float32", "--device", "cpu"]
    options += ["--optimizer", optimizer, "--hellaswag", hellaswag_file]  # 4 examples: 2 for each process
    ran = run_torchrun(text, tiny_checkpoint, two, "--batch-size", "2", *options)
    assert ran.returncode == 0, ran.stderr[-3000:]
    # only rank 0 prints (and writes: one line of metrics.jsonl per step, below)
    assert [line.split()[0] for line in ran.stdout.splitlines() if line.startswith(("training ", "done: "))] == [
        "training",
        "done:",
    ], ran.stdout
    run(text, tiny_checkpoint, one, steps=3, batch_size=4, optimizer=optimizer, hellaswag=str(hellaswag_file))
    assert losses(two) == pytest.approx(losses(one), rel=1e-4)
    assert read_metadata(two)["settings"]["world_size"] == 2
    assert read_metadata(two)["hellaswag_acc_norm"] == read_metadata(one)["hellaswag_acc_norm"]
    settings = read_metadata(one)["settings"]
    one_weights, two_weights = weights(one), weights(two)
    for name in one_weights:
        bound = max_weight_difference(name, one_weights[name].shape, settings)
        torch.testing.assert_close(
            two_weights[name], one_weights[name], atol=bound, rtol=0, msg=lambda m, name=name: f"{name}: {m}"
        )


UNEXPECTED_ERROR_IN_EACH_PROCESS = """
import os, sys, time
from pathlib import Path

import gptkit.training.loop
from gptkit.cli import app


def build_run(*args):
    raise RuntimeError("a bug")


gptkit.training.loop.build_run = build_run
try:
    app(prog_name="gptkit")
finally:  # torchrun stops every process once one exits: exit when both have printed their line
    done = Path(sys.argv[sys.argv.index("--out") + 1] + ".printed")
    done.mkdir(parents=True, exist_ok=True)
    (done / os.environ["RANK"]).touch()
    deadline = time.time() + 60
    while len(list(done.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.05)
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
@pytest.mark.slow
def test_under_torchrun_each_process_names_its_rank_in_its_error_line(text, tiny_checkpoint, tmp_path):
    script = tmp_path / "unexpected_error.py"
    script.write_text(UNEXPECTED_ERROR_IN_EACH_PROCESS)
    ran = run_torchrun(text, tiny_checkpoint, tmp_path / "run", "--steps", "1", "--device", "cpu", program=[script])
    errors = sorted(line for line in ran.stderr.splitlines() if line.startswith("error:"))
    assert ran.returncode != 0 and len(errors) == 2, ran.stderr[-3000:]
    for rank, line in enumerate(errors):
        assert line.startswith(f"error: gptkit hit an unexpected error on rank {rank}: RuntimeError: a bug;"), line


def cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["train", *map(str, args)])
    return result.exit_code, result.output


def assert_fails(args, message, out):
    code, output = cli(*args, "--out", out, "--dtype", "float32", "--device", "cpu")
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code != 0 and len(errors) == 1 and message in errors[0] and "Traceback" not in output, output
    assert not out.exists()


def test_bad_inputs(text, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    assert_fails([tmp_path / "missing.txt"], "does not exist", out)
    (tmp_path / "empty.txt").write_text("")
    assert_fails([tmp_path / "empty.txt"], "empty", out)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert_fails([tmp_path / "latin1.txt"], "not UTF-8", out)
    (tmp_path / "short.txt").write_text("To be, or not to be, that is the question.")
    assert_fails([tmp_path / "short.txt", "--model", "nano"], "too short", out)
    assert_fails([text, "--model", "gpt5"], "unknown model", out)
    assert_fails([text, "--model", tiny_checkpoint, "--block-size", "128"], "longer than the model's context", out)
    assert_fails([text, "--model", "nano", "--grad-accum", "2", "--tokens-per-step", "100"], "disagree", out)
    assert_fails([text, "--model", "nano", "--resume"], "no run to resume", out)
    out.mkdir()
    (out / "notes.txt").write_text("not a run")
    code, output = cli(text, "--model", "nano", "--resume", "--out", out)
    assert code != 0 and "no training state" in output and os.listdir(out) == ["notes.txt"]
    out.joinpath("notes.txt").unlink()
    out.rmdir()


def test_batch_too_big_for_memory(text, tiny_checkpoint, tmp_path, monkeypatch):
    # 256 MiB free, whatever this machine has; the logits alone of 64 x 64 tokens take 64 x 64 x 50257 x 4 = 0.8 GB
    monkeypatch.setattr("gptkit.training.step.available_memory", lambda: 2**28)
    assert_fails(
        [text, "--model", tiny_checkpoint, "--batch-size", "64", "--block-size", "64", "--steps", "1"],
        "out of memory at a batch of 64 x 64 tokens (a step needs over 0.8 GiB, 0.2 GiB free)",
        tmp_path / "run",
    )


def test_out_of_memory_in_a_step_is_one_line(text, tiny_checkpoint, tmp_path, monkeypatch):
    """What a GPU does when a step does not fit (simulated: the forward raises torch's OutOfMemoryError)."""
    from gptkit.model.gpt import GPT

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nSee the documentation")

    monkeypatch.setattr(GPT, "forward", out_of_memory)
    assert_fails(
        [text, "--model", tiny_checkpoint, "--steps", "1"],
        "out of memory at a batch of 4 x 64 tokens",
        tmp_path / "run",
    )


def test_memory_floor_stays_below_what_a_step_really_takes(tiny_config):
    """The up-front check must not refuse a batch that fits: the floor counts no more than what a step surely holds
    beside the weights, counted here from the config: the gradients and AdamW's two moments (fp32), the logits, and
    the (tokens, n_embd) activations each block keeps for backward: its two layer norms' outputs, q, k and v, the
    attention's output, the MLP's input to and output of the GELU (4 n_embd each): 14 of them."""
    from gptkit.model.config import PRESETS
    from gptkit.model.gpt import GPT
    from gptkit.training.step import step_memory_floor

    for config, batch_size, block_size in ((PRESETS["gpt2"], 4, 256), (tiny_config, 8, 64)):
        with torch.device("meta"):
            model = GPT(config)
        c, tokens = config, batch_size * block_size
        per_block = 2 * 2 * c.n_embd + 3 * c.n_embd * c.n_embd + 3 * c.n_embd + c.n_embd * c.n_embd + c.n_embd
        per_block += 2 * 4 * c.n_embd * c.n_embd + 4 * c.n_embd + c.n_embd
        params = c.vocab_size * c.n_embd + c.block_size * c.n_embd + c.n_layer * per_block + 2 * c.n_embd
        for dtype in (torch.float32, torch.bfloat16):
            itemsize = torch.finfo(dtype).bits // 8
            optimizer_state = 3 * 4 * params  # the gradient, exp_avg, exp_avg_sq
            logits = tokens * c.vocab_size * itemsize
            activations = c.n_layer * 14 * tokens * c.n_embd * itemsize
            floor = step_memory_floor(model, batch_size, block_size, dtype)
            assert optimizer_state + logits <= floor <= optimizer_state + logits + activations
            assert step_memory_floor(model, 2 * batch_size, block_size, dtype) > floor


def test_resume_refuses_changed_settings_and_finished_runs(text, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    run(text, tiny_checkpoint, out, steps=2)
    code, output = cli(text, "--resume", "--out", out, "--lr", "0.1", "--steps", "3")
    assert code != 0 and "--lr 0.1 differs" in output
    code, output = cli(text, "--resume", "--out", out, "--optimizer", "muon", "--steps", "3")
    assert code != 0 and "--optimizer muon differs" in output
    code, output = cli(text, "--resume", "--out", out)
    assert code != 0 and "larger --steps" in output
    code, output = cli(text, "--model", tiny_checkpoint, "--out", out)
    assert code != 0 and "--overwrite" in output
    assert read_metadata(out)["step"] == 2


def test_default_run_folders_do_not_collide(tiny_checkpoint):
    from gptkit.training.runcheck import run_name

    assert run_name("data/input.txt", "gpt2") == "input-gpt2"
    assert run_name("data/input.txt", str(tiny_checkpoint)) == f"input-{tiny_checkpoint.name}-finetuned"


def train_options(steps: int, *extra) -> list[str]:
    sizes = ["--batch-size", "1", "--block-size", "16", "--eval-every", "0", "--eval-tokens", "16"]
    return ["--steps", str(steps), *sizes, "--dtype", "float32", "--device", "cpu", *extra]


def wait_for_lock(out, child: subprocess.Popen):
    """Wait until the child process holds the run folder's lock (its pid is in the lock file)."""
    deadline = time.time() + 120
    while not (out / ".lock").exists() or (out / ".lock").read_text().split()[:1] != [str(child.pid)]:
        assert child.poll() is None and time.time() < deadline, child.communicate()
        time.sleep(0.02)


def test_a_second_run_in_a_locked_folder_is_refused_while_the_first_finishes(text, tmp_path, monkeypatch):
    out = tmp_path / "run"
    in_first_step, go_on = threading.Event(), threading.Event()
    next_batch = BatchLoader.next_batch

    def wait_in_the_first_step(self):  # the first run holds the lock, mid-step, until the test lets it go on
        in_first_step.set()
        assert go_on.wait(60)
        return next_batch(self)

    monkeypatch.setattr(BatchLoader, "next_batch", wait_in_the_first_step)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(run, text, "nano", out, steps=5, batch_size=1, block_size=16, eval_tokens=16)
        try:
            assert in_first_step.wait(60), first.exception(0)
            for again in (["--model", "nano"], ["--model", "nano", "--overwrite"], ["--resume"]):
                code, output = cli(text, *again, "--out", out, *train_options(5)[:2])
                errors = [line for line in output.splitlines() if line.startswith("error:")]
                assert code == 1 and len(errors) == 1 and "Traceback" not in output, output
                assert f"{out} is in use by process {os.getpid()} (gptkit train)" in errors[0]
                assert "wait for that run to end" in errors[0] and "another --out" in errors[0]
        finally:
            go_on.set()
        first.result(60)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 6))
    assert read_metadata(out)["step"] == 5 and not (out / ".lock").exists()


@pytest.mark.skipif(os.name == "nt", reason="flock is POSIX's")
def test_a_filesystem_without_locks_warns_and_trains(text, tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "run"
    code, output = cli(text, "--model", "nano", "--out", out, *train_options(3))
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    assert code == 0 and len(warnings) == 1, output
    assert f"cannot lock {out / '.lock'} ({os.strerror(errno.ENOLCK)}): going on without" in warnings[0]
    assert read_metadata(out)["step"] == 3


def test_the_lock_itself_refuses_a_run_that_passed_the_early_check(text, tmp_path, monkeypatch):
    from gptkit.training.runfolder import lock_run_folder

    monkeypatch.setattr("gptkit.training.runcheck.check_not_held", lambda *args, **kwargs: None)  # as if it raced past
    out = tmp_path / "run"
    with lock_run_folder(out):
        code, output = cli(text, "--model", "nano", "--out", out, *train_options(3))
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and f"{out} is in use by process {os.getpid()} (gptkit train)" in errors[0]
    assert not out.exists()


def test_a_lock_left_by_a_killed_run_does_not_block_the_next(text, tmp_path):
    out = tmp_path / "run"
    killed = subprocess.Popen(
        [*train_command(text, "nano", out), *train_options(100_000, "--save-every", "0")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    wait_for_lock(out, killed)
    killed.kill()  # SIGKILL: no cleanup runs
    killed.wait()
    assert (out / ".lock").read_text().split()[0] == str(killed.pid)  # the dead process's lock file stays

    code, output = cli(text, "--model", "nano", "--out", out, *train_options(3))
    assert code == 0, output
    assert read_metadata(out)["step"] == 3 and not (out / ".lock").exists()


def test_damaged_run_files_are_clear_errors(text, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    run(text, tiny_checkpoint, out, steps=2)
    saved = newest_save(out)
    state = (saved / "training_state.json").read_text()
    metadata = (saved / "gptkit.json").read_text()
    damage = {
        "training_state.json": [state[: len(state) // 2], "\x00\xff garbage", "[1, 2]", json.dumps({"step": 2})],
        "gptkit.json": [metadata[:10], ""],
    }
    for name, contents in damage.items():
        for content in contents:
            (saved / name).write_bytes(content.encode("latin-1"))
            code, output = cli(text, "--resume", "--out", out, "--steps", "4", "--device", "cpu")
            errors = [line for line in output.splitlines() if line.startswith("error:")]
            assert code == 1 and len(errors) == 1 and "Traceback" not in output, output
            assert f"{saved / name} is damaged" in errors[0] and "--overwrite" in errors[0], errors[0]
        (saved / "training_state.json").write_text(state)
        (saved / "gptkit.json").write_text(metadata)
    code, output = cli(text, "--resume", "--out", out, "--steps", "3", "--device", "cpu")
    assert code == 0, output


# --- training from token shards --------------------------------------------------------------------------------------


@pytest.fixture
def shards(text, tmp_path):
    """The Shakespeare excerpt prepared into 5 shards, the last 10% of the tokens for validation."""
    from gptkit.data.prepare import prepare

    return prepare(text, tmp_path / "shards", val_fraction=0.1, shard_tokens=3000).out


def test_exact_resume_from_shards_and_eval_of_their_validation_tail(shards, tiny_checkpoint, tmp_path, monkeypatch):
    from gptkit.data.loader import open_data
    from gptkit.evaluation.loss import evaluate_lm
    from gptkit.evaluation.tokens import validation_split

    run(shards, tiny_checkpoint, tmp_path / "straight", steps=8, eval_every=4, save_every=4)
    next_batch, calls = BatchLoader.next_batch, []

    def ctrl_c_at_step_5(self):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return next_batch(self)

    monkeypatch.setattr(BatchLoader, "next_batch", ctrl_c_at_step_5)
    with pytest.raises(Interrupted):
        run(shards, tiny_checkpoint, tmp_path / "split", steps=8, eval_every=4, save_every=4)
    monkeypatch.setattr(BatchLoader, "next_batch", next_batch)
    run(shards, None, tmp_path / "split", steps=8, eval_every=4, save_every=4, resume=True)
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")
    straight, split = weights(tmp_path / "straight"), weights(tmp_path / "split")
    assert all(torch.equal(straight[name], split[name]) for name in straight)

    data = read_metadata(tmp_path / "split")["data"]
    source = open_data(shards)
    assert data["format"] == "gptkit" and data["split"] == "tail" and data["val_fraction"] == 0.1
    assert data["sha256"] == source.digest and len(source.shards) == 5
    val, evaluated = validation_split(tmp_path / "split", quiet=True)
    assert val.tolist() == np.concatenate(source.split(0.1)[1]).tolist()
    assert evaluated["validation_split_of"] == str(shards.resolve())
    assert evaluate_lm(load_checkpoint(tmp_path / "split"), val)["tokens"] == len(val) - 1


def test_nanogpt_folder_trains_and_validates_on_val_bin(text, tiny_checkpoint, tmp_path):
    from gptkit.data.loader import load_tokens
    from gptkit.evaluation.tokens import validation_split

    tokens, _ = load_tokens(text)
    folder = tmp_path / "nanogpt"
    folder.mkdir()
    tokens[:9000].tofile(folder / "train.bin")
    tokens[9000:].tofile(folder / "val.bin")
    run(folder, tiny_checkpoint, tmp_path / "run", steps=2)
    data = read_metadata(tmp_path / "run")["data"]
    assert data["format"] == "nanogpt" and data["split"] == "files" and data["tokens"] == len(tokens)
    val, _ = validation_split(tmp_path / "run", quiet=True)
    assert val.tolist() == tokens[9000:].tolist()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
@pytest.mark.slow
def test_two_processes_from_shards_match_one(shards, tiny_checkpoint, tmp_path):
    options = ["--steps", "3", "--block-size", "32", "--lr", "1e-3", "--dtype", "float32", "--device", "cpu"]
    two = tmp_path / "two"
    ran = run_torchrun(shards, tiny_checkpoint, two, "--batch-size", "2", *options)
    assert ran.returncode == 0, ran.stderr[-3000:]
    run(shards, tiny_checkpoint, tmp_path / "one", steps=3, batch_size=4)
    assert losses(two) == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    assert read_metadata(two)["data"]["format"] == "gptkit"


# --- experiments: model shape, dropout, full-context fine-tuning, Muon, HellaSwag -------------------------------------


def test_shape_options_set_a_new_models_config(text, tmp_path):
    out = tmp_path / "run"
    run(text, "nano", out, steps=1, n_layer=3, n_embd=96, block_size=48)
    config = json.loads((out / "config.json").read_text())
    assert (config["n_layer"], config["n_head"], config["n_embd"], config["n_positions"]) == (3, 2, 96, 48)
    assert config["resid_pdrop"] == config["attn_pdrop"] == config["embd_pdrop"] == 0.0
    settings = read_metadata(out)["settings"]
    assert (settings["n_layer"], settings["n_head"], settings["n_embd"], settings["dropout"]) == (3, 2, 96, 0.0)
    assert load_checkpoint(out).config.n_layer == 3


def test_bad_experiment_options(text, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    nano = [text, "--model", "nano"]
    assert_fails([*nano, "--n-embd", "100", "--n-head", "3"], "--n-embd 100 must be divisible by --n-head 3", out)
    assert_fails([*nano, "--n-layer", "0"], "--n-layer must be at least 1", out)
    assert_fails([*nano, "--n-head", "-2"], "--n-head must be at least 1", out)
    assert_fails([*nano, "--dropout", "1.5"], "--dropout must be in [0, 1)", out)
    assert_fails([text, "--model", tiny_checkpoint, "--n-layer", "3"], "a checkpoint's shape is fixed", out)
    assert_fails([*nano, "--optimizer", "sgd"], "--optimizer sgd is not one gptkit has", out)
    adamw = [*nano, "--optimizer", "adamw"]
    for flag in ("--embedding-lr", "--scalar-lr", "--muon-momentum-warmup"):
        assert_fails([*adamw, flag, "1"], f"{flag} is for AdamW's groups beside Muon", out)
    assert_fails([text, "--model", tiny_checkpoint, "--scalar-lr", "1e-3"], "--scalar-lr is for AdamW's groups", out)
    assert_fails([*nano, "--embedding-lr", "0"], "--embedding-lr must be positive", out)
    assert_fails([*nano, "--schedule", "step"], "--schedule step is not one gptkit has: use wsd, cosine, linear", out)
    assert_fails([*nano, "--schedule", "cosine", "--cooldown-fraction", "0.5"], "add --schedule wsd", out)
    assert_fails([*nano, "--cooldown-fraction", "0"], "--cooldown-fraction must be in (0, 1]", out)
    assert_fails([*nano, "--min-lr", "1e-3", "--min-lr-fraction", "0.5"], "give one", out)
    assert_fails([*nano, "--min-lr-fraction", "2"], "--min-lr-fraction must be between 0 and 1", out)
    assert_fails([*nano, "--target-loss", "0"], "--target-loss must be positive", out)
    assert_fails([*nano, "--hellaswag", tmp_path / "no.jsonl"], "hellaswag_val.jsonl", out)
    hellaswag = tmp_path / "hs.jsonl"
    hellaswag.write_text(json.dumps(HELLASWAG[0]) + "\n")
    assert_fails([*nano, "--hellaswag", hellaswag, "--hellaswag-examples", "0"], "at least 1", out)


def test_fine_tuning_at_a_shorter_window_keeps_the_whole_context(text, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    before = load_checkpoint(tiny_checkpoint).transformer.wpe.weight
    run(text, tiny_checkpoint, out, steps=2, block_size=16, save_every=1)
    run(text, None, out, steps=3, block_size=16, resume=True)
    model = load_checkpoint(out)
    after = model.transformer.wpe.weight
    assert model.config.block_size == 64 and after.shape == before.shape
    assert json.loads((out / "config.json").read_text())["n_positions"] == 64
    assert torch.equal(after[16:], before[16:]) and not torch.equal(after[:16], before[:16])
    assert read_metadata(out)["settings"]["block_size"] == 16
    model(torch.zeros(1, 64, dtype=torch.long))  # sample and eval use the whole context


def test_dropout_default_recorded_and_given(text, tiny_model, tmp_path):
    from gptkit.checkpoint.folder import save_checkpoint

    tiny_model.set_dropout(0.1)
    checkpoint = save_checkpoint(tiny_model, tmp_path / "dropout-0.1")
    run(text, checkpoint, tmp_path / "own", steps=1)
    run(text, checkpoint, tmp_path / "given", steps=1, dropout=0.0)
    run(text, "nano", tmp_path / "scratch", steps=1)
    for folder, p in (("own", 0.1), ("given", 0.0), ("scratch", 0.0)):
        assert read_metadata(tmp_path / folder)["settings"]["dropout"] == p
        assert json.loads((tmp_path / folder / "config.json").read_text())["resid_pdrop"] == p
    # the same first batch: only dropout makes the first step's loss differ
    assert losses(tmp_path / "own")[0] != losses(tmp_path / "given")[0]


def test_dropout_acts_only_in_training(tiny_model):
    idx = torch.randint(0, 1000, (2, 16))
    tiny_model.set_dropout(0.5)
    assert all(m.p == 0.5 for m in tiny_model.modules() if isinstance(m, torch.nn.Dropout))
    assert tiny_model.eval() and torch.equal(tiny_model(idx)[0], tiny_model(idx)[0])
    tiny_model.train()
    assert not torch.equal(tiny_model(idx)[0], tiny_model(idx)[0])
    tiny_model.set_dropout(0.0)
    assert torch.equal(tiny_model(idx)[0], tiny_model(idx)[0])


def test_muon_takes_the_block_matrices_and_adamw_the_embeddings_and_scalars_in_their_groups(tiny_model):
    from gptkit.training.optim import apply_schedule, make_optimizer

    cfg = TrainConfig(data="", optimizer="muon", lr=0.02, embedding_lr=1e-3, scalar_lr=4e-3, weight_decay=0.1,
                      steps=10, warmup_steps=0, min_lr=0.0, schedule="linear")  # fmt: skip
    optimizer = make_optimizer(tiny_model, cfg, torch.device("cpu"))
    muon, adamw = optimizer.parts
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    name_of = {id(p): name for name, p in tiny_model.named_parameters()}
    muon_names = {name_of[id(p)] for g in muon.param_groups for p in g["params"]}
    embeddings, scalars = ({name_of[id(p)] for p in g["params"]} for g in adamw.param_groups)
    assert muon_names == {
        f"transformer.h.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    # wte is lm_head's weight too (tied): one tensor, in the embeddings' group
    assert tiny_model.lm_head.weight is tiny_model.transformer.wte.weight
    assert embeddings == {"transformer.wte.weight", "transformer.wpe.weight"}
    assert scalars == set(name_of.values()) - muon_names - embeddings and all(".ln_" in n or "bias" in n or "ln_f" in n
                                                                            for n in scalars)  # fmt: skip
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.1, 0.0]
    apply_schedule(optimizer, 5, cfg)  # halfway down the line: every group at half its peak
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 5e-4, 2e-3])


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_weight_decay_acts_on_matrices_only(tiny_model, optimizer):
    """With zero gradients a step is weight decay alone: every 2-D weight (the blocks' matrices, the embeddings)
    shrinks by lr * weight_decay, biases and layer norms stay (the README: weight decay on weight matrices only)."""
    from gptkit.training.optim import make_optimizer

    beside = {"embedding_lr": 0.01, "scalar_lr": 0.01} if optimizer == "muon" else {}  # refused for AdamW alone
    cfg = TrainConfig(data="", optimizer=optimizer, lr=0.02, weight_decay=0.1, **beside)
    optimizer = make_optimizer(tiny_model, cfg, torch.device("cpu"))
    before = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}
    for p in tiny_model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    muon_lr = {id(p): group["lr"] for group in optimizer.parts[0].param_groups for p in group["params"]}
    for name, p in tiny_model.named_parameters():
        lr = muon_lr.get(id(p), cfg.embedding_lr if cfg.optimizer == "muon" else cfg.lr)
        # one fp32 product of the weight by (1 - lr * weight_decay): within a unit roundoff of it
        expected = before[name] * (1 - lr * cfg.weight_decay) if p.dim() == 2 else before[name]
        torch.testing.assert_close(p.detach(), expected, rtol=2**-24, atol=0, msg=lambda m, name=name: f"{name}: {m}")


def test_defaults_the_docs_state(tiny_config):
    """From scratch the recipe: Muon at 0.02 with AdamW's groups at 0.008 beside it, momentum warmed up over 300
    steps, no warmup of the rates, linear decay to 0 (docs/training.md); --optimizer adamw: nanoGPT's 6e-4, warmup
    over steps / 20, cosine to a tenth.
    Fine-tuning: AdamW at 3e-5 (Muon 1e-3, AdamW's groups 3e-5), cosine to a tenth, no momentum warmup. --batch-size
    4 on the CPU, 16 on a GPU; --block-size the model's context, at most 256 on the CPU."""
    from dataclasses import replace

    from gptkit.training.settings import with_defaults

    def resolved(device="cpu", context=1024, fine_tuning=False, **options):
        cfg = TrainConfig(data="", dtype="float32", **options)
        return with_defaults(cfg, torch.device(device), replace(tiny_config, block_size=context), fine_tuning, 1)

    recipe = ("optimizer", "lr", "embedding_lr", "scalar_lr", "muon_momentum_warmup", "schedule", "cooldown_fraction")
    recipe += ("min_lr_fraction", "min_lr", "warmup_steps")

    def values(cfg):
        return tuple(getattr(cfg, name) for name in recipe)

    assert values(resolved()) == ("muon", 0.02, 0.008, 0.008, 300, "linear", None, 0.0, 0.0, 0)
    assert values(resolved(optimizer="adamw")) == ("adamw", 6e-4, None, None, None, "cosine", None, 0.1, 6e-4 * 0.1, 50)
    assert values(resolved(schedule="wsd"))[5:7] == ("wsd", 0.7)
    assert values(resolved(fine_tuning=True)) == ("adamw", 3e-5, None, None, None, "cosine", None, 0.1, 3e-6, 50)
    muon_fine_tuning = values(resolved(optimizer="muon", fine_tuning=True))
    assert muon_fine_tuning == ("muon", 1e-3, 3e-5, 3e-5, 0, "cosine", None, 0.1, 1e-4, 50)
    assert resolved(min_lr=1e-3).min_lr_fraction == pytest.approx(0.05)  # --min-lr: a value of --lr's group
    assert resolved(min_lr_fraction=0.5, lr=0.01).min_lr == 0.005
    assert (resolved().block_size, resolved(context=64).block_size, resolved("cuda").block_size) == (256, 64, 1024)
    assert (resolved().batch_size, resolved("cuda").batch_size) == (4, 16)

    from gptkit.training.loop import recipe_summary  # the run's first line states the recipe it resolved to

    assert recipe_summary(resolved()) == (
        "muon lr 0.02 (matrices, momentum warmup 300) + adamw 0.008 (embeddings = head) / 0.008 (scalars), "
        "weight decay 0.1 | linear, warmup 0, to 0"
    )
    assert "| wsd (cooldown 0.7), warmup 0, to 0" in recipe_summary(resolved(schedule="wsd"))
    assert recipe_summary(resolved(fine_tuning=True)).endswith("| cosine, warmup 50, to 0.1 of the peak")


def test_a_run_saved_before_the_recipe_options_resumes_as_it_trained(tiny_config):
    """Settings saved before --schedule, --min-lr-fraction, --embedding-lr / --scalar-lr (one --adam-lr then) and
    --muon-momentum-warmup existed: cosine to the saved min_lr, AdamW's rate in both groups, no momentum warmup."""
    from gptkit.training.config import settings_of
    from gptkit.training.settings import merge_for_resume, with_defaults

    new = TrainConfig(data="", optimizer="muon", lr=0.02, steps=10, dtype="float32")
    saved = settings_of(with_defaults(new, torch.device("cpu"), tiny_config, False, 1))
    newer = ("schedule", "cooldown_fraction", "min_lr_fraction", "embedding_lr", "scalar_lr", "muon_momentum_warmup")
    for name in newer:
        del saved[name]
    saved |= {"adam_lr": 6e-4, "min_lr": 2e-3}
    merged = merge_for_resume(TrainConfig(data="", resume=True, steps=20), saved, "nano")
    resumed = with_defaults(merged, torch.device("cpu"), tiny_config, False, 1)
    assert (resumed.schedule, resumed.cooldown_fraction, resumed.min_lr, resumed.min_lr_fraction) == (
        "cosine", None, 2e-3, pytest.approx(0.1))  # fmt: skip
    assert (resumed.embedding_lr, resumed.scalar_lr, resumed.muon_momentum_warmup) == (6e-4, 6e-4, 0)


def test_target_loss_stops_at_the_first_evaluation_reaching_it(text, tmp_path):
    console = io.StringIO()
    cfg = TrainConfig(
        data=str(text), model="nano", out=str(tmp_path / "run"), steps=30, batch_size=4, block_size=32,
        dtype="float32", device="cpu", eval_every=2, eval_tokens=256, save_every=0, target_loss=10.0,
    )  # fmt: skip
    summary = train(cfg, console=Console(file=console, width=400))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    vals = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    assert vals[-1][1] <= 10.0 and all(v > 10.0 for _, v in vals[:-1])  # stopped at the first at or below
    reached = records[-1]["target_reached"]
    assert reached["step"] == vals[-1][0] == summary["step"] < 30 and reached["target_loss"] == 10.0
    assert reached["tokens_seen"] == reached["step"] * 4 * 32 and reached["wall_time_s"] > 0
    assert summary["target_reached"] == reached == read_metadata(tmp_path / "run")["target_reached"]
    last = console.getvalue().splitlines()[-1]
    assert f"val <= 10 at step {reached['step']} ({reached['tokens_seen']:,} tokens, " in last
    assert load_checkpoint(tmp_path / "run") is not None  # saved where it stopped

    summary = run(text, "nano", tmp_path / "whole", steps=4, eval_every=2)  # no target: the best val and its step
    best = min((r["val_loss"], r["step"]) for r in map(json.loads, (tmp_path / "whole" / "metrics.jsonl").open())
               if "val_loss" in r)  # fmt: skip
    assert (summary["best_val"]["val_loss"], summary["best_val"]["step"]) == best


def test_muon_orthogonalizes_in_fp32_where_bf16_is_not_the_faster(monkeypatch):
    """optim.Muon runs torch's Newton-Schulz iteration (bf16) where the CPU prefers bf16 and on GPUs, its own fp32
    iteration on other CPUs; both are torch.optim.Muon's step otherwise (momentum, Nesterov, lr scaling, decay)."""
    import gptkit.training.optim
    from gptkit.training.optim import Muon

    torch.manual_seed(0)
    weight, gradients = torch.randn(256, 64) * 0.02, [torch.randn(256, 64) * 1e-3 for _ in range(3)]
    lr, weight_decay = 0.02, 0.1

    def three_steps(optimizer_of) -> torch.Tensor:
        p = torch.nn.Parameter(weight.clone())
        optimizer = optimizer_of([p])
        for g in gradients:
            p.grad = g.clone()
            optimizer.step()
        return p.detach()

    options = {"lr": lr, "weight_decay": weight_decay, "momentum": 0.95, "nesterov": True}
    bf16_reference = three_steps(lambda params: torch.optim.Muon(params, **options))
    results = {}
    for prefers_bf16 in (False, True):
        monkeypatch.setattr(gptkit.training.optim, "cpu_prefers_bf16", lambda prefers_bf16=prefers_bf16: prefers_bf16)
        cpu = Muon([torch.nn.Parameter(weight.clone())], torch.device("cpu"))
        cuda = Muon([torch.nn.Parameter(weight.clone())], torch.device("cuda"))
        assert (cpu.fp32_iteration, cuda.fp32_iteration) == (not prefers_bf16, False)
        results[prefers_bf16] = three_steps(lambda params: Muon(params, torch.device("cpu"), **options))
    assert torch.equal(results[True], bf16_reference)  # bf16 preferred: torch's own step
    # each step moves the weight by lr * sqrt(256 / 64) * O (entries of O at most 1); the two iterations' O are apart
    # by their rounding: bf16's for torch's (orthogonalization_difference), fp32's far below it
    ns_steps = torch.optim.Muon([torch.nn.Parameter(weight.clone())]).param_groups[0]["ns_steps"]
    per_o = sum(orthogonalization_difference(0.0, ns_steps, dtype, 256) for dtype in (torch.bfloat16, torch.float32))
    bound = 3 * lr * math.sqrt(256 / 64) * per_o
    difference = (results[False] - bf16_reference).abs().max().item()
    assert 0 < difference <= bound
    monkeypatch.setattr(gptkit.training.optim, "cpu_prefers_bf16", lambda: False)
    weight, gradients = weight.double(), [g.double() for g in gradients]  # the fp32 iteration's own, in fp64
    fp32_bound = 3 * lr * math.sqrt(256 / 64) * orthogonalization_difference(0.0, ns_steps, torch.float32, 256)
    exact = three_steps(lambda params: Muon(params, torch.device("cpu"), **options))
    assert (results[False].double() - exact).abs().max().item() <= fp32_bound < difference


HELLASWAG = [
    {"ctx": "The cat sat on the", "endings": ["mat.", "moon.", "sky.", "sea."], "label": 0},
    {"ctx": "ROMEO: Good morrow,", "endings": ["cousin.", "fish.", "table.", "seven."], "label": 0},
    {"ctx": "To be, or not to", "endings": ["run.", "be.", "sing.", "sit."], "label": 1},
    {"ctx": "First Citizen: Before we proceed any", "endings": ["sand", "further", "blue", "loud"], "label": 1},
]


@pytest.fixture
def hellaswag_file(tmp_path):
    path = tmp_path / "hellaswag.jsonl"
    path.write_text("".join(json.dumps(example) + "\n" for example in HELLASWAG))
    return path


def test_hellaswag_in_training(text, tiny_checkpoint, hellaswag_file, tmp_path):
    from gptkit.evaluation.hellaswag import evaluate_hellaswag

    out = tmp_path / "run"
    console = io.StringIO()
    cfg = TrainConfig(
        data=str(text), model=str(tiny_checkpoint), out=str(out), steps=4, batch_size=4, block_size=32, lr=1e-3,
        dtype="float32", device="cpu", eval_every=2, eval_tokens=256, save_every=0,
        hellaswag=str(hellaswag_file), hellaswag_examples=3,
    )  # fmt: skip
    summary = train(cfg, console=Console(file=console))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scored = {r["step"]: r["hellaswag_acc_norm"] for r in records if "hellaswag_acc_norm" in r}
    assert list(scored) == [2, 4] and all(round(3 * acc) == 3 * acc for acc in scored.values())
    expected = evaluate_hellaswag(load_checkpoint(out), HELLASWAG[:3])["acc_norm"]
    assert scored[4] == expected == summary["hellaswag_acc_norm"] == read_metadata(out)["hellaswag_acc_norm"]
    assert f"hellaswag {expected:.3f}" in console.getvalue()


def test_activation_checkpointing_trains_the_same_weights_and_may_change_on_resume(text, tiny_checkpoint, tmp_path):
    flat = dict(dropout=0.1, min_lr=1e-3, warmup_steps=0)  # a flat schedule: 2 steps then 1 more train as 3
    run(text, tiny_checkpoint, tmp_path / "plain", steps=3, **flat)
    run(text, tiny_checkpoint, tmp_path / "recomputed", steps=2, activation_checkpointing=True, **flat)
    run(text, None, tmp_path / "recomputed", steps=3, resume=True, activation_checkpointing=False)
    plain, recomputed = weights(tmp_path / "plain"), weights(tmp_path / "recomputed")
    assert all(torch.equal(plain[name], recomputed[name]) for name in plain)
