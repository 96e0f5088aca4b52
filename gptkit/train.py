"""`gptkit train`: AdamW with warmup and cosine decay, gradient accumulation, mixed precision, DDP, live progress,
atomic checkpoints and exact resume.

A run folder (--out) holds the checkpoint (config.json, model.safetensors, gptkit.json), metrics.jsonl (one line
per step), and the training state beside them: training_state.safetensors (AdamW's moments, RNG states) and
training_state.json (step, data position, settings). Resuming from it continues the run exactly.

Under torchrun each process reads its own slice of every batch (see data.BatchLoader), so N processes with
--batch-size B train exactly as one process with --batch-size N * B; only rank 0 prints and writes.
"""

import contextlib
import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from gptkit.checkpoint import (
    atomic_path,
    is_checkpoint,
    load_checkpoint,
    load_tensors,
    read_json,
    save_checkpoint,
    save_tensors,
    write_json,
)
from gptkit.data import BatchLoader, TokenizeProgress, eval_batches, load_tokens, split_tokens
from gptkit.errors import GptkitError
from gptkit.model import GPT, PRESETS
from gptkit.runtime import autocast, available_memory, keep_freed_memory, pick_device, pick_dtype

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
METRICS_FILE = "metrics.jsonl"
EXIT_INTERRUPTED = 130


@dataclass
class TrainConfig:
    """What `gptkit train` was asked for. None means "the default" (see resolve), which for a resumed run is
    the value the run was started with."""

    data: str
    model: str | None = None  # preset name or checkpoint directory; default gpt2
    out: str | None = None  # default checkpoints/<data name>-<model name>
    steps: int | None = None  # optimizer steps; default 1000
    batch_size: int | None = None  # sequences per micro-step per process; default 4 on CPU, 16 on GPU
    block_size: int | None = None  # tokens per sequence; default min(256, context) on CPU, the context on GPU
    grad_accum: int | None = None  # micro-steps per optimizer step; default 1, or from tokens_per_step
    tokens_per_step: int | None = None  # global tokens per optimizer step (sets grad_accum)
    lr: float | None = None  # peak learning rate; default 6e-4 from scratch, 3e-5 fine-tuning
    min_lr: float | None = None  # end of the cosine decay; default lr / 10
    warmup_steps: int | None = None  # default steps / 20
    weight_decay: float | None = None  # default 0.1
    eval_every: int | None = None  # default 250; 0 evaluates at the end only
    eval_tokens: int | None = None  # validation tokens per evaluation; default 20 global micro-batches
    save_every: int | None = None  # default 500; 0 saves at the end only
    val_fraction: float | None = None  # default 0.1
    dtype: str | None = None  # auto, float32, bfloat16; default auto
    device: str | None = None  # auto, cpu, cuda, cuda:N, mps; default auto
    compile: bool | None = None
    seed: int | None = None  # default 1337
    resume: bool = False
    overwrite: bool = False


# Options that may differ when resuming (they do not change the trajectory, or extend it: --steps).
CHANGEABLE_ON_RESUME = {"steps", "eval_every", "eval_tokens", "save_every", "device", "compile", "out"}
# Options that describe the invocation, not the run.
NOT_SETTINGS = {"data", "model", "out", "resume", "overwrite"}


# --- processes -------------------------------------------------------------------------------------------------------


@dataclass
class Processes:
    """This process's place among the torchrun processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self):
        if self.distributed:
            dist.barrier()


def start_processes(device_name: str) -> Processes:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes(device=pick_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise GptkitError(f"several processes need CUDA (nccl) or the CPU (gloo), not {device.type}")
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Processes(rank=rank, world_size=world_size, device=device)


# --- settings --------------------------------------------------------------------------------------------------------


def run_name(data: str, model: str) -> str:
    """<data>-<preset> from scratch, <data>-<checkpoint>-finetuned from a checkpoint (never the same folder)."""
    stem = Path(data).resolve().stem or "data"
    return f"{stem}-{Path(model).name}-finetuned" if model not in PRESETS else f"{stem}-{model}"


def default_out(cfg: TrainConfig) -> Path:
    return Path("checkpoints") / run_name(cfg.data, cfg.model or "gpt2")


def resolve(cfg: TrainConfig, device: torch.device, context: int, fine_tuning: bool, world_size: int) -> TrainConfig:
    """cfg with every default filled in and checked."""
    on_cpu = device.type == "cpu"
    c = replace(cfg)
    c.model = c.model or "gpt2"
    c.steps = 1000 if c.steps is None else c.steps
    c.batch_size = c.batch_size or (4 if on_cpu else 16)
    c.block_size = c.block_size or (min(256, context) if on_cpu else context)
    if c.block_size > context:
        raise GptkitError(f"--block-size {c.block_size} is longer than the model's context of {context} tokens")
    micro_tokens = c.batch_size * c.block_size * world_size
    if c.tokens_per_step is not None:
        if c.grad_accum is not None and c.grad_accum * micro_tokens != c.tokens_per_step:
            raise GptkitError("--grad-accum and --tokens-per-step disagree: give one of them")
        if c.tokens_per_step < micro_tokens or c.tokens_per_step % micro_tokens:
            raise GptkitError(
                f"--tokens-per-step {c.tokens_per_step} must be a multiple of batch x block x processes = {micro_tokens}"
            )
        c.grad_accum = c.tokens_per_step // micro_tokens
    c.grad_accum = c.grad_accum or 1
    c.tokens_per_step = c.grad_accum * micro_tokens
    c.lr = c.lr if c.lr is not None else (3e-5 if fine_tuning else 6e-4)
    c.min_lr = c.min_lr if c.min_lr is not None else c.lr / 10
    c.warmup_steps = c.warmup_steps if c.warmup_steps is not None else c.steps // 20
    c.weight_decay = 0.1 if c.weight_decay is None else c.weight_decay
    c.eval_every = 250 if c.eval_every is None else c.eval_every
    c.eval_tokens = c.eval_tokens if c.eval_tokens is not None else 20 * micro_tokens
    c.save_every = 500 if c.save_every is None else c.save_every
    c.val_fraction = 0.1 if c.val_fraction is None else c.val_fraction
    c.dtype = str(pick_dtype(c.dtype or "auto", device)).removeprefix("torch.")
    if c.dtype == "float16":
        raise GptkitError("training in float16 needs loss scaling, which gptkit does not do: use bfloat16 or float32")
    c.compile = bool(c.compile)
    c.seed = 1337 if c.seed is None else c.seed
    c.device = str(device)
    checks = [
        (c.steps >= 1, "--steps must be at least 1"),
        (c.batch_size >= 1, "--batch-size must be at least 1"),
        (c.block_size >= 1, "--block-size must be at least 1"),
        (c.grad_accum >= 1, "--grad-accum must be at least 1"),
        (c.lr > 0, "--lr must be positive"),
        (0 <= c.min_lr <= c.lr, "--min-lr must be between 0 and --lr"),
        (0 <= c.warmup_steps <= c.steps, "--warmup-steps must be between 0 and --steps"),
        (c.weight_decay >= 0, "--weight-decay must not be negative"),
        (c.eval_every >= 0 and c.save_every >= 0, "--eval-every and --save-every must not be negative"),
        (c.eval_tokens >= 0, "--eval-tokens must not be negative"),
        (0 <= c.val_fraction < 1, "--val-fraction must be in [0, 1)"),
    ]
    for ok, message in checks:
        if not ok:
            raise GptkitError(message)
    return c


def settings_of(cfg: TrainConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in NOT_SETTINGS}


def merge_for_resume(cfg: TrainConfig, saved: dict, saved_model: str) -> TrainConfig:
    """The saved run's settings, with the options that may change on resume taken from cfg; any other option
    given with a different value is an error (it would not be the same run)."""
    if cfg.model is not None and cfg.model != saved_model and str(Path(cfg.model).resolve()) != saved_model:
        raise GptkitError(f"--model {cfg.model} differs from the run being resumed ({saved_model}): leave it out")
    merged = {"data": cfg.data, "model": saved_model, "out": cfg.out, "resume": True}
    for f in fields(TrainConfig):
        if f.name not in saved:
            continue
        given, before = getattr(cfg, f.name), saved[f.name]
        if given is None or (f.name == "dtype" and given == "auto"):
            merged[f.name] = before
        elif (
            f.name in CHANGEABLE_ON_RESUME
            or given == before
            or isinstance(given, float)
            and math.isclose(given, before)
        ):
            merged[f.name] = given
        else:
            option = "--" + f.name.replace("_", "-")
            raise GptkitError(f"{option} {given} differs from the run being resumed ({before}): leave it out")
    merged["device"] = cfg.device  # the device is this machine's choice, not the run's
    return TrainConfig(**merged)


# --- model, optimizer, schedule --------------------------------------------------------------------------------------


def build_model(name: str, block_size: int) -> tuple[GPT, str]:
    """(model in fp32 with a context of block_size, its name for the metadata): a new preset model or a checkpoint."""
    if name in PRESETS:
        return GPT(replace(PRESETS[name], block_size=block_size)), name
    path = Path(name)
    model = load_checkpoint(path, dtype=torch.float32)
    if block_size < model.config.block_size:
        model.crop_block_size(block_size)
    return model, str(path.resolve())


def model_context(name: str) -> int:
    """The context length of a preset or checkpoint (checking that it is one)."""
    from gptkit.checkpoint import read_config

    if name in PRESETS:
        return PRESETS[name].block_size
    if not Path(name).exists():
        raise GptkitError(f"unknown model '{name}': use a preset ({', '.join(PRESETS)}) or a checkpoint directory")
    return read_config(name).block_size


def make_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW as GPT-2 / nanoGPT: weight decay on matrices (matmul weights, embeddings), none on biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused, foreach=None if fused else True
    )


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over warmup_steps to lr, then cosine decay to min_lr at `steps` (step counts from 0)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def flops_per_token(model: GPT, block_size: int) -> float:
    """Training FLOPs per token: 6 per weight of every matmul (lm_head included) plus attention (nanoGPT's estimate)."""
    c = model.config
    matmul_params = model.num_params(non_embedding=True) + model.transformer.wte.weight.numel()
    return 6 * matmul_params + 12 * c.n_layer * c.n_embd * block_size


# --- training state --------------------------------------------------------------------------------------------------


def parameter_names(model: GPT, optimizer) -> list[str]:
    """The names of the optimizer's parameters, in the order its state_dict numbers them."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


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


def save_run(out: Path, model: GPT, optimizer, metadata: dict, state: dict, procs: Processes):
    """Checkpoint, then the optimizer and RNG tensors, then the state JSON (each atomic; the step in each file lets
    resume check that they belong together)."""
    rngs = rng_states(procs)
    if procs.main:
        save_checkpoint(model, out, metadata)
        names = parameter_names(model, optimizer)
        tensors = dict(rngs)
        for index, moments in optimizer.state_dict()["state"].items():
            for key, value in moments.items():
                tensors[f"optimizer.{names[index]}.{key}"] = value.reshape(-1) if key == "step" else value
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
    from gptkit.checkpoint import read_metadata, read_safetensors_header

    tensors_step = read_safetensors_header(out / STATE_TENSORS).get("__metadata__", {}).get("step")
    if str(state.get("step")) != tensors_step or read_metadata(out).get("step") != state.get("step"):
        raise GptkitError(f"{out}: the checkpoint and training state are from different steps (an interrupted save?)")
    return state


def restore_optimizer(optimizer, model: GPT, tensors: dict[str, torch.Tensor]):
    names = parameter_names(model, optimizer)
    saved = optimizer.state_dict()
    for index, name in enumerate(names):
        prefix = f"optimizer.{name}."
        moments = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if moments:
            moments["step"] = moments["step"].reshape(())
            saved["state"][index] = moments
    optimizer.load_state_dict(saved)


def restore_rng(tensors: dict[str, torch.Tensor], procs: Processes, seed: int):
    cpu = tensors.get(f"rng.cpu.{procs.rank}")
    if cpu is None:  # resumed with more processes than saved it
        torch.manual_seed(seed + procs.rank)
        return
    torch.set_rng_state(cpu)
    if procs.device.type == "cuda" and f"rng.cuda.{procs.rank}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng.cuda.{procs.rank}"], procs.device)


# --- progress --------------------------------------------------------------------------------------------------------


class ProgressDisplay:
    """A live rich bar on a terminal; otherwise one plain line every log_every steps (and at evaluations)."""

    def __init__(self, console, total: int, start: int, enabled: bool):
        self.console = console
        self.total = total
        self.enabled = enabled
        self.live = enabled and console.is_terminal
        self.log_every = max(1, total // 20)
        self.smoothed = None
        self.val = None
        self.bar = None
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("step {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
            )
            self.task = self.bar.add_task("train", total=total, completed=start, stats="")
            self.bar.start()

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float, val_loss: float | None):
        if not self.enabled:
            return
        self.smoothed = loss if self.smoothed is None else 0.9 * self.smoothed + 0.1 * loss
        self.val = val_loss if val_loss is not None else self.val
        val = f"  val {self.val:.4f}" if self.val is not None else ""
        stats = f"loss {self.smoothed:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s{val}"
        if self.live:
            self.bar.update(self.task, completed=step, stats=stats)
        elif step % self.log_every == 0 or step == self.total or val_loss is not None:
            now_val = f" val {val_loss:.4f}" if val_loss is not None else ""
            self.console.print(
                f"step {step}/{self.total} loss {loss:.4f} lr {lr:.2e} {tokens_per_s:,.0f} tok/s{now_val}",
                highlight=False,
            )

    def close(self):
        if self.bar is not None:
            self.bar.stop()


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


# --- training --------------------------------------------------------------------------------------------------------


def step_memory_floor(model: GPT, batch_size: int, block_size: int, dtype: torch.dtype) -> int:
    """A lower bound on the bytes a training step adds to the loaded model: gradients and AdamW's two moments (fp32),
    the logits, and the activations each block keeps for backward (at least a dozen (tokens, n_embd) tensors)."""
    tokens, itemsize = batch_size * block_size, torch.finfo(dtype).bits // 8
    c = model.config
    return 12 * model.num_params() + tokens * itemsize * (c.vocab_size + 12 * c.n_layer * c.n_embd)


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
    needed = step_memory_floor(model, cfg.batch_size, cfg.block_size, dtype) * procs.world_size
    if needed > available:
        raise out_of_memory_error(
            cfg, f" (a step needs over {needed / 2**30:.1f} GiB, {available / 2**30:.1f} GiB free)"
        )


def is_out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


@torch.no_grad()
def evaluate(model: GPT, val_tokens, cfg: TrainConfig, procs: Processes, dtype, stop: StopRequest) -> float | None:
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=procs.device)
    for x, y in eval_batches(val_tokens, cfg.eval_tokens, cfg.batch_size, cfg.block_size, procs.rank, procs.world_size):
        if stop.requested:
            break
        x, y = x.to(procs.device), y.to(procs.device)
        with autocast(procs.device, dtype):
            loss = model(x, y)[1]
        total += torch.stack([loss.double() * y.numel(), torch.tensor(y.numel(), device=procs.device)])
    model.train()
    if procs.distributed:
        dist.all_reduce(total)
    count = total[1].item()
    return None if stop.requested or count == 0 else total[0].item() / count


def train(cfg: TrainConfig, console=None) -> dict:
    """Run (or resume) training as cfg says; return the summary. Raises GptkitError for bad input and Interrupted
    after saving on Ctrl-C."""
    from rich.console import Console

    procs = start_processes(cfg.device or "auto")
    try:
        return run(cfg, procs, console or Console(highlight=False, soft_wrap=True))
    finally:
        if procs.distributed:
            dist.destroy_process_group()


def prepare_out(cfg: TrainConfig) -> Path:
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    if not cfg.resume and not cfg.overwrite and ((out / STATE_JSON).exists() or is_checkpoint(out)):
        raise GptkitError(
            f"{out} already holds a run: add --resume to continue it, --overwrite to start over, or pick another --out"
        )
    if cfg.resume and cfg.overwrite:
        raise GptkitError("--resume and --overwrite contradict each other: give one")
    return out


def run(cfg: TrainConfig, procs: Processes, console) -> dict:
    started = time.perf_counter()
    out = prepare_out(cfg)
    state = None
    if cfg.resume:
        state = load_run_state(out)
        cfg = merge_for_resume(cfg, state["settings"], state["model"])
        if cfg.steps <= state["step"]:
            raise GptkitError(f"the run in {out} has done its {state['step']} steps: give a larger --steps to go on")
    model_name = cfg.model or "gpt2"
    context = model_context(model_name) if state is None else state["settings"]["block_size"]

    progress = TokenizeProgress(enabled=procs.main and console.is_terminal)
    try:
        if not procs.main:
            procs.barrier()  # rank 0 tokenizes and caches, the others read the cache
        tokens, digest = load_tokens(cfg.data, progress)
        if procs.main:
            procs.barrier()
    finally:
        progress.close()
    if state is not None and state["data"]["sha256"] != digest:
        raise GptkitError(
            f"{cfg.data} is not the data this run was trained on (its content changed): resume with that data"
        )

    cfg = resolve(cfg, procs.device, context, model_name not in PRESETS, procs.world_size)
    train_tokens, val_tokens = split_tokens(tokens, cfg.val_fraction)
    loader = BatchLoader(train_tokens, cfg.batch_size, cfg.block_size, cfg.seed, procs.rank, procs.world_size)

    torch.manual_seed(cfg.seed)
    keep_freed_memory()
    if procs.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = getattr(torch, cfg.dtype)
    if state is None:
        model, model_label = build_model(model_name, cfg.block_size)
    else:
        model, model_label = load_checkpoint(out, dtype=torch.float32), state["model"]
    model.to(procs.device).train()
    check_step_fits(model, cfg, dtype, procs)
    optimizer = make_optimizer(model, cfg, procs.device)
    start_step, tokens_seen, wall_before = 0, 0, 0.0
    if state is not None:
        tensors = load_tensors(out / STATE_TENSORS, procs.device)
        restore_optimizer(optimizer, model, tensors)
        restore_rng({k: v.cpu() for k, v in tensors.items() if k.startswith("rng.")}, procs, cfg.seed)
        loader.load_state(state["loader"])
        start_step, tokens_seen, wall_before = state["step"], state["tokens_seen"], state["wall_time_s"]
    elif procs.distributed:
        torch.manual_seed(cfg.seed + procs.rank)  # different dropout masks per process (the weights are broadcast)

    step_model = torch.compile(model) if cfg.compile else model
    if procs.distributed:
        step_model = DDP(step_model, device_ids=[procs.device.index] if procs.device.type == "cuda" else None)

    data_info = {
        "path": str(Path(cfg.data).resolve()),
        "sha256": digest,
        "tokens": int(len(tokens)),
        "val_fraction": cfg.val_fraction,
        "split": "tail",
    }
    if procs.main:
        console.print(
            f"training {model_label} ({model.num_params() / 1e6:.1f}M parameters) on {cfg.data} "
            f"({len(train_tokens):,} train / {len(val_tokens):,} val tokens) | {procs.device} {cfg.dtype}"
            f"{f' x {procs.world_size} processes' if procs.distributed else ''} | batch {cfg.batch_size} x "
            f"{cfg.block_size} x accum {cfg.grad_accum} = {cfg.tokens_per_step:,} tokens/step | {out}",
            highlight=False,
        )
        if start_step:
            console.print(f"resuming at step {start_step}/{cfg.steps}", highlight=False)

    metrics_path = out / METRICS_FILE
    if procs.main and state is not None and metrics_path.exists():  # drop lines past the saved step
        kept = [
            line for line in metrics_path.read_text().splitlines() if line and json.loads(line)["step"] <= start_step
        ]
        with atomic_path(metrics_path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))
    metrics_file = None

    display = ProgressDisplay(console, cfg.steps, start_step, procs.main)
    train_time, train_tokens_session = 0.0, 0
    loss_value, val_loss, step = None, state.get("val_loss") if state else None, start_step

    def metadata() -> dict:
        return {
            "model": model_label,
            "step": step,
            "steps": cfg.steps,
            "tokens_seen": tokens_seen,
            "train_loss": loss_value,
            "val_loss": val_loss,
            "data": data_info,
            "settings": settings_of(cfg) | {"world_size": procs.world_size},
            "wall_time_s": round(wall_before + time.perf_counter() - started, 3),
        }

    def save():
        meta = metadata()
        run_state = meta | {"settings": settings_of(cfg), "loader": loader.state(), "world_size": procs.world_size}
        save_run(out, model, optimizer, meta, run_state, procs)

    stopping = False
    stats = torch.zeros(2, device=procs.device)  # summed loss, stop requests (one all_reduce per step)
    try:
        with StopRequest() as stop:
            while step < cfg.steps:
                t0 = time.perf_counter()
                lr = learning_rate(step, cfg)
                stats.zero_()
                try:
                    for micro in range(cfg.grad_accum):
                        x, y = loader.next_batch()
                        x, y = x.to(procs.device, non_blocking=True), y.to(procs.device, non_blocking=True)
                        last = micro == cfg.grad_accum - 1
                        sync = contextlib.nullcontext() if last or not procs.distributed else step_model.no_sync()
                        with sync:
                            with autocast(procs.device, dtype):
                                loss = step_model(x, y)[1]  # the logits are not kept alive through backward
                            loss = loss / cfg.grad_accum
                            loss.backward()
                        stats[0] += loss.detach()
                    stats[1] = float(stop.requested)
                    if procs.distributed:
                        dist.all_reduce(stats)
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    loss_value = stats[0].item() / procs.world_size
                except (RuntimeError, torch.OutOfMemoryError) as e:
                    if not is_out_of_memory(e):
                        raise
                    raise out_of_memory_error(cfg) from None
                dt = time.perf_counter() - t0
                step += 1
                tokens_seen += cfg.tokens_per_step
                train_time += dt
                train_tokens_session += cfg.tokens_per_step
                stopping = stats[1].item() > 0
                evaluated = None
                if not stopping and (step == cfg.steps or cfg.eval_every and step % cfg.eval_every == 0):
                    evaluated = evaluate(model, val_tokens, cfg, procs, dtype, stop)
                    val_loss = evaluated if evaluated is not None else val_loss
                if procs.main:
                    record = {
                        "step": step,
                        "loss": loss_value,
                        "lr": lr,
                        "grad_norm": grad_norm.item(),
                        "tokens_seen": tokens_seen,
                        "tokens_per_s": cfg.tokens_per_step / dt,
                        "step_time_s": dt,
                    }
                    if evaluated is not None:
                        record["val_loss"] = evaluated
                    if metrics_file is None:
                        out.mkdir(parents=True, exist_ok=True)
                        metrics_file = open(metrics_path, "a" if state is not None else "w")
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                display.update(step, loss_value, lr, cfg.tokens_per_step / dt, evaluated)
                if stopping:
                    break
                if step == cfg.steps or cfg.save_every and step % cfg.save_every == 0:
                    save()
            if stopping:
                save()
    finally:
        display.close()
        if metrics_file is not None:
            metrics_file.close()

    resume_hint = f"gptkit train {cfg.data} --resume --out {out}"
    if step < cfg.steps:
        raise Interrupted(f"interrupted: saved step {step}/{cfg.steps} to {out}; continue with: {resume_hint}")
    summary = {
        "step": step,
        "train_loss": loss_value,
        "val_loss": val_loss,
        "tokens_seen": tokens_seen,
        "wall_time_s": time.perf_counter() - started,
        "tokens_per_s": train_tokens_session / train_time if train_time else None,
        "checkpoint": str(out),
    }
    if procs.main:
        val = f"{val_loss:.4f}" if val_loss is not None else "n/a (no validation tokens)"
        console.print(
            f"done: step {step}/{cfg.steps} | train loss {loss_value:.4f} | val loss {val} | "
            f"{tokens_seen:,} tokens seen | {summary['wall_time_s']:.1f} s | "
            f"{summary['tokens_per_s'] or 0:,.0f} tokens/s | checkpoint {out}",
            highlight=False,
        )
    return summary
