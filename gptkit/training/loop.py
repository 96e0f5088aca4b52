"""`gptkit train`: the training loop, and the phases around it that read top to bottom in run(): open the run folder,
load the data, settle the settings, build the model and optimizer (or restore them), train, finish.

What lives elsewhere: the options and their defaults (train_config.py), the optimizer and schedule (optim.py), the
run folder's files and exact resume (runfolder.py), where each step's record goes (runlog.py), torchrun's processes
(distributed.py). Under torchrun each process reads its own slice of every batch (see data.BatchLoader), so N
processes with --batch-size B train exactly as one process with --batch-size N * B; only rank 0 prints and writes.
"""

import contextlib
import signal
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from gptkit.checkpoint.folder import load_checkpoint, read_config, save_adapters, save_checkpoint
from gptkit.checkpoint.tensors import load_tensors
from gptkit.model.config import PRESETS, GPTConfig
from gptkit.data.loader import BatchLoader, TokenSource, eval_batches, open_data
from gptkit.training.distributed import Processes, restore_rng, rng_states, start_processes, stop_processes
from gptkit.errors import GptkitError
from gptkit.evaluation.hellaswag import evaluate_hellaswag, read_hellaswag
from gptkit.evaluation.loss import summed_loss
from gptkit.files import remove
from gptkit.model.lora import add_lora
from gptkit.model.gpt import GPT
from gptkit.training.optim import (
    Optimizers,
    learning_rate,
    make_optimizer,
    optimizer_tensors,
    restore_optimizer,
    set_learning_rate,
)
from gptkit.progress import PrepareProgress
from gptkit.training.runfolder import (
    OPTIMIZER_SHARDS_DIR,
    STATE_TENSORS,
    load_run_state,
    lock_run_folder,
    open_run_folder,
    save_run,
    staging_folder,
    trim_metrics,
)
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
from gptkit.machine.runtime import autocast, available_memory, keep_freed_memory
from gptkit.training.config import TrainConfig, check, default_out, lora_of, merge_for_resume, resolve, settings_of

EXIT_INTERRUPTED = 130


# --- the model ---------------------------------------------------------------------------------------------------------


def build_model(cfg: TrainConfig) -> tuple[GPT, torch.Tensor | None]:
    """(model in fp32, the position embeddings set aside): a new model of the preset's shape as overridden by cfg,
    or the checkpoint cfg.model, with cfg's dropout."""
    if cfg.model in PRESETS:
        shape = {name: getattr(cfg, name) for name in ("n_layer", "n_head", "n_embd", "block_size", "dropout")}
        return GPT(replace(PRESETS[cfg.model], **shape)), None
    model, extra_positions = load_for_training(Path(cfg.model), cfg)
    if lora := lora_of(cfg):
        add_lora(model, lora)
    return model, extra_positions


def load_for_training(path: Path, cfg: TrainConfig) -> tuple[GPT, torch.Tensor | None]:
    """A checkpoint (or a LoRA run's save: the frozen base with its adapters) with cfg's dropout, cut to a context
    of cfg.block_size: training at a shorter window sees only the first block_size position embeddings; the rest are
    returned, to be saved unchanged with the model."""
    model = load_checkpoint(path, dtype=torch.float32, merge_adapters=False)
    model.set_dropout(cfg.dropout)
    if cfg.block_size < model.config.block_size:
        return model, model.crop_block_size(cfg.block_size)
    return model, None


def model_config(name: str) -> GPTConfig:
    """The config of a preset or checkpoint ."""
    return PRESETS[name] if name in PRESETS else read_config(name)


def flops_per_token(model: GPT, block_size: int) -> float:
    """Training FLOPs per token: 6 per weight of every matmul (lm_head included) plus attention (nanoGPT's estimate)."""
    c = model.config
    matmul_params = model.num_params(non_embedding=True) + model.transformer.wte.weight.numel()
    return 6 * matmul_params + 12 * c.n_layer * c.n_embd * block_size


def fsdp_module():
    """gptkit.training.fsdp, imported by the runs that use --fsdp only: torch's distributed tensors and checkpoints are slow to
    import."""
    from gptkit.training import fsdp

    return fsdp


# --- memory ------------------------------------------------------------------------------------------------------------


def step_memory_floor(model: GPT, batch_size: int, block_size: int, dtype: torch.dtype, shards: int = 1) -> int:
    """A lower bound on the bytes a training step adds to the loaded model in one process: gradients and AdamW's two
    moments (fp32; 1 / shards of them under --fsdp), the logits, and the activations each block keeps for backward (at
    least a dozen (tokens, n_embd) tensors; its input alone under activation checkpointing)."""
    tokens, itemsize = batch_size * block_size, torch.finfo(dtype).bits // 8
    c, kept = model.config, 1 if model.activation_checkpointing else 12
    return 12 * model.num_params() // shards + tokens * itemsize * (c.vocab_size + kept * c.n_layer * c.n_embd)


def out_of_memory_error(cfg: TrainConfig, detail: str = "") -> GptkitError:
    return GptkitError(
        f"out of memory at a batch of {cfg.batch_size} x {cfg.block_size} tokens{detail}: use a smaller "
        "--batch-size (with a larger --grad-accum for the same tokens per step) or --block-size"
    )


def check_step_fits(model: GPT, cfg: TrainConfig, dtype: torch.dtype, procs: Processes):
    """Refuse up front a batch that cannot fit in the CPU's memory. A CPU allocation that does not fit is not an
    exception that could be caught: the kernel grants it, and kills the process when the pages are touched."""
    if procs.device.type != "cpu" or (available := available_memory()) is None:
        return
    shards = procs.world_size if cfg.fsdp else 1
    needed = step_memory_floor(model, cfg.batch_size, cfg.block_size, dtype, shards) * procs.world_size
    if needed > available:
        raise out_of_memory_error(
            cfg, f" (a step needs over {needed / 2**30:.1f} GiB, {available / 2**30:.1f} GiB free)"
        )


def is_out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


# --- stopping ----------------------------------------------------------------------------------------------------------


class StopRequest:
    """The first Ctrl-C asks the loop to stop after the current step (and save); a second one stops at once."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGINT, self.handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self.previous = None
        return self

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


class Interrupted(Exception):
    """Training stopped on Ctrl-C after saving; the message says how to resume."""


# --- the run -----------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """A run being trained: what the loop works with, and how far it has come."""

    cfg: TrainConfig
    out: Path
    model: GPT
    model_label: str
    step_model: torch.nn.Module  # the model as the step calls it: compiled and / or wrapped in DDP
    optimizer: Optimizers
    loader: BatchLoader
    val_tokens: list[np.ndarray]  # the validation shards
    data_info: dict
    dtype: torch.dtype
    extra_positions: torch.Tensor | None = None  # a checkpoint's position embeddings past the training window
    hellaswag: list[dict] | None = None  # the HellaSwag examples scored at each evaluation
    step: int = 0
    tokens_seen: int = 0
    wall_before: float = 0.0  # seconds spent in earlier sessions of a resumed run
    loss: float | None = None
    val_loss: float | None = None
    hellaswag_acc_norm: float | None = None
    started: float = field(default_factory=time.perf_counter)
    session_time: float = 0.0  # seconds in training steps in this process's session
    session_tokens: int = 0

    def metadata(self, procs: Processes) -> dict:
        return {
            "model": self.model_label,
            "step": self.step,
            "steps": self.cfg.steps,
            "tokens_seen": self.tokens_seen,
            "train_loss": self.loss,
            "val_loss": self.val_loss,
            **({"hellaswag_acc_norm": self.hellaswag_acc_norm} if self.hellaswag_acc_norm is not None else {}),
            "data": self.data_info,
            "settings": settings_of(self.cfg) | {"world_size": procs.world_size},
            "wall_time_s": round(self.wall_before + time.perf_counter() - self.started, 3),
        }

    def save(self, procs: Processes):
        meta = self.metadata(procs)
        state = meta | {
            "settings": settings_of(self.cfg),
            "loader": self.loader.state(),
            "world_size": procs.world_size,
        }
        tensors = rng_states(procs) | optimizer_tensors(self.model, self.optimizer)
        # under --fsdp the optimizer's shards first: written and freed before the whole model is gathered on rank 0
        folders = self.save_optimizer_shards(tensors, procs) if self.cfg.fsdp else {}
        if lora := lora_of(self.cfg):  # the adapters alone, named after their base
            written = [p for p in self.model.parameters() if p.requires_grad]
            write_model = partial(save_adapters, self.model, settings=lora, base=self.model_label, metadata=meta)
        else:
            written = [*self.model.parameters(), *([] if self.extra_positions is None else [self.extra_positions])]
            model_state = fsdp_module().full_model_state(self.model) if self.cfg.fsdp else None  # all send their shards
            write_model = partial(
                save_checkpoint, self.model, metadata=meta, extra_positions=self.extra_positions, state=model_state
            )
        failure = None
        if procs.main:  # rank 0 writes; the others wait for it and stop with its message if it failed
            try:
                model_bytes = sum(t.numel() * t.element_size() for t in written)
                save_run(self.out, write_model, model_bytes, tensors, state, folders)
            except GptkitError as e:
                failure = str(e)
                for folder in folders.values():  # what the processes wrote for a save that failed
                    remove(folder)
        if failure := procs.from_main(failure):
            raise GptkitError(failure)

    def save_optimizer_shards(self, tensors: dict[str, torch.Tensor], procs: Processes) -> dict[str, Path]:
        """Under --fsdp: every process writes its shards of the optimizer state (taken out of tensors) into a
        temporary folder, which save_run moves into the save."""
        fsdp = fsdp_module()
        shards = {name: tensors.pop(name) for name in [n for n, t in tensors.items() if fsdp.is_shard(t)]}
        folder = staging_folder(self.out, self.step, OPTIMIZER_SHARDS_DIR)
        try:
            fsdp.save_optimizer_shards(shards, folder)
        except fsdp.ShardsFailed as e:  # in every process, once every process has stopped writing
            if procs.main:
                remove(folder)
            raise GptkitError(f"could not save step {self.step} to {self.out}: {e}") from None
        return {OPTIMIZER_SHARDS_DIR: folder}


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
    cfg = resolve(cfg, procs.device, base, model_name not in PRESETS, procs.world_size)
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
        source = open_data(cfg.data, progress, check=procs.main)
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


def build_run(
    cfg: TrainConfig, procs: Processes, out: Path, state: dict | None, saved: Path | None, source: TokenSource
) -> Run:
    """The model, optimizer and data stream of the run: new, or restored from the save in the folder saved."""
    train_tokens, val_tokens = source.split(cfg.val_fraction)
    loader = BatchLoader(train_tokens, cfg.batch_size, cfg.block_size, cfg.seed, procs.rank, procs.world_size)
    torch.manual_seed(cfg.seed)
    keep_freed_memory()
    dtype = getattr(torch, cfg.dtype)
    if state is None:
        model, extra_positions = build_model(cfg)
        model_label = cfg.model if cfg.model in PRESETS else str(Path(cfg.model).resolve())
    else:
        (model, extra_positions), model_label = load_for_training(saved, cfg), state["model"]
    model.to(procs.device).train()
    model.activation_checkpointing = cfg.activation_checkpointing
    if cfg.fsdp:
        fsdp_module().shard_model(model, dtype)
    check_step_fits(model, cfg, dtype, procs)
    optimizer = make_optimizer(model, cfg, procs.device)
    data_info = {
        "path": str(Path(cfg.data).resolve()),
        "format": source.format,
        "sha256": source.digest,
        "tokens": source.tokens,
        "val_fraction": cfg.val_fraction if source.split_kind == "tail" else None,
        "split": source.split_kind,
    }
    r = Run(
        cfg=cfg,
        out=out,
        model=model,
        model_label=model_label,
        step_model=model,
        optimizer=optimizer,
        loader=loader,
        val_tokens=val_tokens,
        data_info=data_info,
        dtype=dtype,
        extra_positions=extra_positions,
    )
    if state is not None:
        # under --fsdp a whole optimizer state (from a save without it) is read to the CPU and sharded from there
        tensors = load_tensors(saved / STATE_TENSORS, "cpu" if cfg.fsdp else procs.device)
        if state["settings"].get("fsdp") and state["world_size"] > 1 or (saved / OPTIMIZER_SHARDS_DIR).is_dir():
            tensors |= read_optimizer_shards(saved, model)
        elif cfg.fsdp:
            tensors = fsdp_module().placed_like_parameters(tensors, model)
        restore_optimizer(optimizer, model, tensors)
        restore_rng({k: v for k, v in tensors.items() if k.startswith("rng.")}, procs, cfg.seed)
        loader.load_state(state["loader"])
        r.step, r.tokens_seen, r.wall_before = state["step"], state["tokens_seen"], state["wall_time_s"]
        r.val_loss, r.hellaswag_acc_norm = state.get("val_loss"), state.get("hellaswag_acc_norm")
    elif procs.distributed:
        torch.manual_seed(cfg.seed + procs.rank)  # different dropout masks per process (the weights are broadcast)
    if cfg.compile:
        r.step_model = torch.compile(r.step_model)
    if procs.distributed and not cfg.fsdp:
        r.step_model = DDP(r.step_model, device_ids=[procs.device.index] if procs.device.type == "cuda" else None)
    return r


def read_optimizer_shards(saved: Path, model: GPT) -> dict[str, torch.Tensor]:
    """The optimizer state an --fsdp run saved in shards, as this process holds it (fsdp.load_optimizer_shards)."""
    fsdp = fsdp_module()
    try:
        if not (saved / OPTIMIZER_SHARDS_DIR).is_dir():
            raise fsdp.ShardsFailed(f"{saved} lacks {OPTIMIZER_SHARDS_DIR}")
        return fsdp.load_optimizer_shards(saved / OPTIMIZER_SHARDS_DIR, model)
    except fsdp.ShardsFailed as e:
        raise GptkitError(
            f"the optimizer state of {saved} is damaged ({e}): the run cannot be resumed exactly; train on from its "
            "checkpoint as a new run (--model RUN --out ANOTHER_FOLDER)"
        ) from None


def announce(r: Run, procs: Processes, console):
    cfg = r.cfg
    n_train, n_val = r.loader.n_tokens, sum(len(s) for s in r.val_tokens)
    console.print(
        f"training {r.model_label} ({r.model.num_params() / 1e6:.1f}M parameters) on {cfg.data} "
        f"({n_train:,} train / {n_val:,} val tokens) | {procs.device} {cfg.dtype}"
        f"{f' x {procs.world_size} processes' if procs.distributed else ''}{' (FSDP)' if cfg.fsdp else ''} | batch {cfg.batch_size} x "
        f"{cfg.block_size} x accum {cfg.grad_accum} = {cfg.tokens_per_step:,} tokens/step | {r.out}",
        highlight=False,
    )
    if r.step:
        console.print(f"resuming at step {r.step}/{cfg.steps}", highlight=False)


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


def train_step(r: Run, procs: Processes, stop: StopRequest, stats: torch.Tensor) -> tuple[dict, bool]:
    """One optimizer step over grad_accum micro-batches: (the step's record, whether any process asked to stop)."""
    cfg = r.cfg
    t0 = time.perf_counter()
    lr = learning_rate(r.step, cfg)
    stats.zero_()  # summed loss, stop requests (one all_reduce per step)
    try:
        for micro in range(cfg.grad_accum):
            x, y = r.loader.next_batch()
            x, y = x.to(procs.device, non_blocking=True), y.to(procs.device, non_blocking=True)
            last = micro == cfg.grad_accum - 1
            # (under --fsdp every micro-batch's gradients are reduce-scattered: accumulated whole, they would take 4
            # bytes a parameter in every process, as under DDP)
            ddp_accumulating = procs.distributed and not cfg.fsdp and not last
            sync = r.step_model.no_sync() if ddp_accumulating else contextlib.nullcontext()
            with sync:
                with autocast(procs.device, r.dtype):
                    loss = r.step_model(x, y)[1]  # the logits are not kept alive through backward
                loss = loss / cfg.grad_accum
                loss.backward()
            stats[0] += loss.detach()
        stats[1] = float(stop.requested)
        if procs.distributed:
            dist.all_reduce(stats)
        grad_norm = torch.nn.utils.clip_grad_norm_(r.model.parameters(), 1.0)
        if cfg.fsdp:  # the norm of every process's shards
            grad_norm = grad_norm.full_tensor()
        set_learning_rate(r.optimizer, lr, cfg.lr)
        r.optimizer.step()
        r.optimizer.zero_grad(set_to_none=True)
        r.loss = stats[0].item() / procs.world_size
    except (RuntimeError, torch.OutOfMemoryError) as e:
        if not is_out_of_memory(e):
            raise
        raise out_of_memory_error(cfg) from None
    dt = time.perf_counter() - t0
    r.step += 1
    r.tokens_seen += cfg.tokens_per_step
    record = {
        "step": r.step,
        "loss": r.loss,
        "lr": lr,
        "grad_norm": grad_norm.item(),
        "tokens_seen": r.tokens_seen,
        "tokens_per_s": cfg.tokens_per_step / dt,
        "step_time_s": dt,
    }
    return record, stats[1].item() > 0


def train_loop(r: Run, procs: Processes, console, resumed: bool):
    """Steps until cfg.steps, evaluating and saving on schedule; on a stop request, save and return early."""
    cfg = r.cfg
    stats = torch.zeros(2, device=procs.device)
    with StopRequest() as stop, open_log(r, procs, console, resumed) as log:
        while r.step < cfg.steps:
            record, stopping = train_step(r, procs, stop, stats)
            r.session_time += record["step_time_s"]
            r.session_tokens += cfg.tokens_per_step
            if not stopping and (r.step == cfg.steps or cfg.eval_every and r.step % cfg.eval_every == 0):
                val_loss = evaluate(r.model, r.val_tokens, cfg, procs, r.dtype, stop)
                if val_loss is not None:
                    r.val_loss = record["val_loss"] = val_loss
                if r.hellaswag and (acc_norm := hellaswag_accuracy(r, procs, stop)) is not None:
                    r.hellaswag_acc_norm = record["hellaswag_acc_norm"] = acc_norm
            log.write(record)
            if stopping or r.step == cfg.steps or cfg.save_every and r.step % cfg.save_every == 0:
                r.save(procs)
            if stopping:
                break


def finish(r: Run, procs: Processes, console) -> dict:
    """The summary of a finished run; Interrupted (after the save) when it stopped early."""
    cfg = r.cfg
    if r.step < cfg.steps:
        resume_hint = f"gptkit train {cfg.data} --resume --out {r.out}"
        raise Interrupted(f"interrupted: saved step {r.step}/{cfg.steps} to {r.out}; continue with: {resume_hint}")
    summary = {
        "step": r.step,
        "train_loss": r.loss,
        "val_loss": r.val_loss,
        "hellaswag_acc_norm": r.hellaswag_acc_norm,
        "tokens_seen": r.tokens_seen,
        "wall_time_s": time.perf_counter() - r.started,
        "tokens_per_s": r.session_tokens / r.session_time if r.session_time else None,
        "checkpoint": str(r.out),
    }
    if procs.main:
        val = f"{r.val_loss:.4f}" if r.val_loss is not None else "n/a (no validation tokens)"
        console.print(
            f"done: step {r.step}/{cfg.steps} | train loss {r.loss:.4f} | val loss {val} | "
            f"{r.tokens_seen:,} tokens seen | {summary['wall_time_s']:.1f} s | "
            f"{summary['tokens_per_s'] or 0:,.0f} tokens/s | checkpoint {r.out}",
            highlight=False,
        )
    return summary


# --- evaluation --------------------------------------------------------------------------------------------------------


def evaluates_alone(cfg: TrainConfig) -> bool:
    """Whether each process evaluates its share of the windows (or examples) alone: not under --fsdp, where a forward
    pass gathers the weights with the other processes, so that every process runs every one (and Ctrl-C, which
    reaches the processes at different moments, does not cut an evaluation short)."""
    return not cfg.fsdp


@contextlib.contextmanager
def evaluating(model: GPT, sharded: bool):
    """The model in eval mode, then in training mode again (and a sharded model's weights sharded again: FSDP leaves
    the root's gathered after a forward pass, for the backward pass that would follow in training)."""
    model.eval()
    try:
        yield
    finally:
        model.train()
        if sharded:
            model.reshard()


@torch.no_grad()
def evaluate(model: GPT, val_tokens, cfg: TrainConfig, procs: Processes, dtype, stop: StopRequest) -> float | None:
    """The mean validation loss over this run's eval_tokens (eval.summed_loss, every process its share of the
    windows); None when Ctrl-C cut it short (every process still adds up its sums, so none waits for another)."""
    alone = evaluates_alone(cfg)
    rank, world_size = (procs.rank, procs.world_size) if alone else (0, 1)

    def batches():
        for x, y in eval_batches(val_tokens, cfg.eval_tokens, cfg.batch_size, cfg.block_size, rank, world_size):
            if stop.requested and alone:
                return
            yield x, y, [y.size(1)] * len(y)

    with evaluating(model, cfg.fsdp):
        nats, count = summed_loss(model, batches(), dtype, procs.distributed and alone)
    return None if stop.requested and alone or count == 0 else nats / count


class StopEvaluating(Exception):
    """Ctrl-C during an evaluation: leave it unfinished."""


def hellaswag_accuracy(r: Run, procs: Processes, stop: StopRequest) -> float | None:
    """HellaSwag acc_norm over the first cfg.hellaswag_examples examples (eval.evaluate_hellaswag), each process
    scoring its share; None when Ctrl-C cut it short."""
    examples = r.hellaswag[: r.cfg.hellaswag_examples]
    alone = evaluates_alone(r.cfg)
    share = examples[procs.rank :: procs.world_size] if alone else examples

    def check_stop(done: int, total: int):
        if stop.requested and alone:
            raise StopEvaluating

    counts = torch.zeros(3, dtype=torch.float64, device=procs.device)  # correct, scored, stopped
    try:
        with evaluating(r.model, r.cfg.fsdp):
            if share:
                result = evaluate_hellaswag(r.model, share, r.dtype, progress=check_stop)
                counts[0], counts[1] = result["correct_norm"], result["n"]
    except StopEvaluating:
        counts[2] = 1
    if procs.distributed and alone:
        dist.all_reduce(counts)
    return None if counts[2] or not counts[1] else counts[0].item() / counts[1].item()
