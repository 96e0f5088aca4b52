"""`gptkit train`: the training loop, and the phases around it that read top to bottom in run(): open the run folder,
load the data, settle the settings, build the model and optimizer (or restore them), train, finish.

What lives elsewhere: the run's setup (setup.py), one step (step.py), the run and its saves (run.py), evaluation
during training (evaluate.py), the options and their defaults (config.py), the optimizer and schedule (optim.py), the
run folder's files and exact resume (runfolder.py), where each step's record goes (runlog.py), torchrun's processes
(distributed.py). Under torchrun each process reads its own slice of every batch (see data.loader.BatchLoader), so N
processes with --batch-size B train exactly as one process with --batch-size N * B; only rank 0 prints and writes.
"""

import contextlib
import time
from dataclasses import replace
from pathlib import Path

import torch

from gptkit.checkpoint.folder import read_config
from gptkit.data.conversations import conversation_files, is_conversation_data
from gptkit.data.loader import TokenSource, open_data
from gptkit.data.packed import ConversationSource
from gptkit.errors import GptkitError
from gptkit.evaluation.hellaswag import read_hellaswag
from gptkit.files import data_hash
from gptkit.model.config import PRESETS
from gptkit.progress import PrepareProgress
from gptkit.training.config import TrainConfig, settings_of
from gptkit.training.distributed import Processes, start_processes, stop_processes
from gptkit.training.evaluate import evaluate, hellaswag_accuracy
from gptkit.training.run import Run
from gptkit.training.runcheck import check, default_out
from gptkit.training.runfolder import load_run_state, lock_run_folder, open_run_folder, trim_metrics
from gptkit.training.runlog import (
    METRICS_FILE,
    MetricsFile,
    ProgressDisplay,
    RunLog,
    TensorBoardSink,
    WandbSink,
    check_tensorboard,
    check_wandb,
)
from gptkit.training.settings import merge_for_resume, with_defaults
from gptkit.training.setup import build_run, model_config
from gptkit.training.step import StopRequest, train_step

EXIT_INTERRUPTED = 130


class Interrupted(Exception):
    """Training stopped on Ctrl-C after saving; the message says how to resume."""


def train(cfg: TrainConfig, console=None) -> dict:
    """Run (or resume) training as cfg says; return the summary. Raises GptkitError for bad input and Interrupted
    after saving on Ctrl-C."""
    from rich.console import Console

    check(cfg)
    procs = start_processes(cfg.device or "auto")
    try:
        with tf32_matmuls(procs.device), contextlib.ExitStack() as held:  # held: the run folder's lock, once taken
            return run(cfg, procs, console or Console(highlight=False, soft_wrap=True), held)
    finally:
        stop_processes(procs)


@contextlib.contextmanager
def tf32_matmuls(device: torch.device):
    """TF32 for fp32 matrix products and convolutions on CUDA while the run lasts; the process's own settings again
    after it (a caller of train() that wants full fp32 products keeps them)."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def run(cfg: TrainConfig, procs: Processes, console, held: contextlib.ExitStack) -> dict:
    started = time.perf_counter()
    cfg, out, state, saved = open_run(cfg, procs, held)
    if procs.main:  # a missing package or login stops the run now, not after loading the data and the model
        if cfg.tensorboard:
            check_tensorboard()
        if cfg.wandb is not None:
            check_wandb()
    hellaswag = read_hellaswag(Path(cfg.hellaswag)) if cfg.hellaswag else None
    cfg, source = load_data(cfg, procs, console, state)
    model_name = cfg.model or "gpt2"
    base = model_config(model_name) if state is None else read_config(saved)
    cfg = with_defaults(cfg, procs.device, base, model_name not in PRESETS, procs.world_size)
    r = build_run(cfg, procs, out, state, saved, source)
    r.started, r.hellaswag = started, hellaswag
    if procs.main:
        announce(r, procs, console)
        if state is not None:
            trim_metrics(out, r.step)
    train_loop(r, procs, console, resumed=state is not None)
    return finish(r, procs, console)


def open_run(
    cfg: TrainConfig, procs: Processes, held: contextlib.ExitStack
) -> tuple[TrainConfig, Path, dict | None, Path | None]:
    """The run folder, locked (by rank 0, into held) and made ready (runfolder.open_run_folder); when resuming, the
    saved state, the folder of that save, and the settings merged with the options given."""
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    refusal = None
    if procs.main:
        try:
            held.enter_context(lock_run_folder(out))
            open_run_folder(out, cfg.resume, cfg.overwrite)
        except GptkitError as e:
            refusal = str(e)
        except OSError as e:
            refusal = f"cannot write to {out}: {e.strerror or e}"
    if refusal := procs.from_main(refusal):  # every process stops with rank 0's message
        raise GptkitError(refusal)
    if not cfg.resume:
        return cfg, out, None, None
    state, saved = load_run_state(out)
    cfg = merge_for_resume(cfg, state["settings"], state["model"])
    if cfg.steps <= state["step"]:
        raise GptkitError(f"the run in {out} has done its {state['step']} steps: give a larger --steps to go on")
    return cfg, out, state, saved


def load_data(cfg: TrainConfig, procs: Processes, console, state: dict | None) -> tuple[TrainConfig, TokenSource]:
    """The data's token source (rank 0 tokenizes text into the cache, the others then read it), and cfg with the
    validation fraction `gptkit prepare` recorded when none is given."""
    progress = PrepareProgress(enabled=procs.main and console.is_terminal)
    try:
        if not procs.main:
            procs.barrier()
        source = open_source(cfg, progress, procs)
        if procs.main:
            procs.barrier()
    finally:
        progress.close()
    if state is not None and state["data"]["sha256"] != source.digest:
        raise GptkitError(
            f"{cfg.data} is not the data this run was trained on (its content changed): resume with that data"
        )
    if cfg.val_fraction is None and source.val_fraction is not None:
        cfg = replace(cfg, val_fraction=source.val_fraction)
    return cfg, source


def open_source(cfg: TrainConfig, progress, procs: Processes) -> TokenSource | ConversationSource:
    """DATA's conversations (read when the block size is known: setup.data_stream), or its tokens."""
    if is_conversation_data(cfg.data):
        return ConversationSource(Path(cfg.data), data_hash(conversation_files(Path(cfg.data))))
    if cfg.train_on_prompt:
        raise GptkitError(f"--train-on-prompt is for conversations, and {cfg.data} holds text: leave it out")
    return open_data(cfg.data, progress, check=procs.main)


def data_summary(r: Run) -> str:
    """What the run trains on, for its first line: tokens, or conversations and the tokens the loss counts."""
    if r.chat_template is None:
        return f"{r.loader.n_tokens:,} train / {sum(len(s) for s in r.val_tokens):,} val tokens"
    packed = r.source.packed
    return (
        f"{packed.conversations:,} train / {packed.val_conversations:,} val conversations in {len(packed.train):,} + "
        f"{len(packed.val):,} rows, {packed.train.trained_tokens:,} train tokens counted by the loss"
    )


def announce(r: Run, procs: Processes, console):
    cfg = r.cfg
    console.print(
        f"training {r.model_label} ({r.model.num_params() / 1e6:.1f}M parameters) on {cfg.data} "
        f"({data_summary(r)}) | {procs.device} {cfg.dtype}"
        f"{f' x {procs.world_size} processes' if procs.distributed else ''}{' (FSDP)' if cfg.fsdp else ''} | "
        f"batch {cfg.batch_size} x {cfg.block_size} x accum {cfg.grad_accum} = {cfg.tokens_per_step:,} tokens/step | "
        f"{recipe_summary(cfg)} | {r.out}",
        highlight=False,
    )
    packed = getattr(r.source, "packed", None)
    if packed is not None and packed.truncated:
        console.print(
            f"[yellow]warning:[/yellow] {packed.truncated:,} conversation(s) longer than --block-size "
            f"{cfg.block_size} cut at its end ({packed.left_out:,} of them left nothing to train on and were left out)",
            highlight=False,
        )
    if r.step:
        console.print(f"resuming at step {r.step}/{cfg.steps}", highlight=False)


def recipe_summary(cfg: TrainConfig) -> str:
    """The optimizer, each group's peak learning rate and the schedule, for the run's first line."""
    if cfg.optimizer == "muon":
        groups = (
            f"muon lr {cfg.lr:g} (matrices, momentum warmup {cfg.muon_momentum_warmup}) + adamw "
            f"{cfg.embedding_lr:g} (embeddings = head) / {cfg.scalar_lr:g} (scalars)"
        )
    else:
        groups = f"adamw lr {cfg.lr:g}"
    cooldown = f" (cooldown {cfg.cooldown_fraction:g})" if cfg.schedule == "wsd" else ""
    floor = "0" if cfg.min_lr_fraction == 0 else f"{cfg.min_lr_fraction:g} of the peak"
    return f"{groups}, weight decay {cfg.weight_decay:g} | {cfg.schedule}{cooldown}, warmup {cfg.warmup_steps}, to {floor}"


def open_log(r: Run, procs: Processes, console, resumed: bool) -> RunLog:
    """The sinks of the per-step records: only rank 0 shows and writes them."""
    if not procs.main:
        return RunLog([])
    cfg = r.cfg
    settings = (
        {"model": r.model_label, "data": r.data_info["path"]} | settings_of(cfg) | {"world_size": procs.world_size}
    )
    makers = []
    if cfg.tensorboard:
        makers.append(lambda: TensorBoardSink(r.out, settings, r.step))
    if cfg.wandb:
        makers.append(lambda: WandbSink(cfg.wandb, r.out, settings, resumed))
    makers.append(lambda: MetricsFile(r.out / METRICS_FILE, append=resumed))
    makers.append(lambda: ProgressDisplay(console, cfg.steps, r.step))  # last: the live bar starts once all opened
    return RunLog.open(makers)


def train_loop(r: Run, procs: Processes, console, resumed: bool):
    """Steps until cfg.steps (or the first evaluation at --target-loss), evaluating and saving on schedule; on a stop
    request, save and return early."""
    cfg = r.cfg
    stats = torch.zeros(2, device=procs.device)
    with StopRequest() as stop, open_log(r, procs, console, resumed) as log:
        while r.step < cfg.steps:
            record, stopping = train_step(r, procs, stop, stats)
            r.session_time += record["step_time_s"]
            r.session_tokens += cfg.tokens_per_step
            if not stopping and (r.step == cfg.steps or cfg.eval_every and r.step % cfg.eval_every == 0):
                record |= evaluate_now(r, procs, stop)
            log.write(record)
            if stopping or r.target_reached or r.step == cfg.steps or cfg.save_every and r.step % cfg.save_every == 0:
                r.save(procs)
            if stopping or r.target_reached:
                break


def evaluate_now(r: Run, procs: Processes, stop: StopRequest) -> dict:
    """The validation loss (and HellaSwag accuracy) at this step, for its record; the best so far and, the first time
    it is at most --target-loss, the steps, tokens and wall time to it."""
    cfg, fields = r.cfg, {}
    val_loss = evaluate(r.model, r.val_tokens, cfg, procs, r.dtype, stop)
    if val_loss is not None:
        r.val_loss = fields["val_loss"] = val_loss
        if r.best_val is None or val_loss < r.best_val["val_loss"]:
            r.best_val = {"val_loss": val_loss, "step": r.step}
        if cfg.target_loss is not None and val_loss <= cfg.target_loss:
            r.target_reached = fields["target_reached"] = {
                "target_loss": cfg.target_loss,
                "step": r.step,
                "tokens_seen": r.tokens_seen,
                "wall_time_s": round(r.wall_before + time.perf_counter() - r.started, 3),
            }
    if r.hellaswag and (acc_norm := hellaswag_accuracy(r, procs, stop)) is not None:
        r.hellaswag_acc_norm = fields["hellaswag_acc_norm"] = acc_norm
    return fields


def finish(r: Run, procs: Processes, console) -> dict:
    """The summary of a finished run (or one stopped at --target-loss); Interrupted (after the save) when it stopped
    early otherwise."""
    cfg = r.cfg
    if r.step < cfg.steps and not r.target_reached:
        resume_hint = f"gptkit train {cfg.data} --resume --out {r.out}"
        raise Interrupted(f"interrupted: saved step {r.step}/{cfg.steps} to {r.out}; continue with: {resume_hint}")
    summary = {
        "step": r.step,
        "train_loss": r.loss,
        "val_loss": r.val_loss,
        "best_val": r.best_val,
        "target_reached": r.target_reached,
        "hellaswag_acc_norm": r.hellaswag_acc_norm,
        "tokens_seen": r.tokens_seen,
        "wall_time_s": time.perf_counter() - r.started,
        "tokens_per_s": r.session_tokens / r.session_time if r.session_time else None,
        "checkpoint": str(r.out),
    }
    if procs.main:
        val = f"{r.val_loss:.4f}" if r.val_loss is not None else "n/a (no validation tokens)"
        console.print(
            f"done: step {r.step}/{cfg.steps} | train loss {r.loss:.4f} | val loss {val} | {outcome(r)} | "
            f"{r.tokens_seen:,} tokens seen | {summary['wall_time_s']:.1f} s | "
            f"{summary['tokens_per_s'] or 0:,.0f} tokens/s | checkpoint {r.out}",
            highlight=False,
        )
    return summary


def outcome(r: Run) -> str:
    """The last line's report of the run against its target: the steps, tokens and wall time to --target-loss, or
    that it was not reached; without a target, the best validation loss and its step."""
    target, best = r.cfg.target_loss, r.best_val
    if r.target_reached:
        t = r.target_reached
        return f"val <= {target:g} at step {t['step']} ({t['tokens_seen']:,} tokens, {t['wall_time_s']:.1f} s)"
    best_text = f"best val {best['val_loss']:.4f} at step {best['step']}" if best else "no evaluation"
    return best_text if target is None else f"target val {target:g} not reached ({best_text})"
