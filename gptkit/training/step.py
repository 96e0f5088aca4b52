"""One optimizer step of training: what it costs (the memory it adds, checked before training starts, and its FLOPs a
token), running it over grad_accum micro-batches (DDP's gradient sync on the last one only; under --fsdp every
micro-batch's gradients reduce-scattered), out of memory as one line, and the Ctrl-C that stops the loop after it.
"""

import contextlib
import signal
import time

import torch
import torch.distributed as dist

from gptkit.errors import GptkitError
from gptkit.machine.runtime import autocast, available_memory
from gptkit.model.gpt import GPT
from gptkit.training.config import TrainConfig
from gptkit.training.distributed import Processes
from gptkit.training.optim import apply_schedule
from gptkit.training.run import Run


def flops_per_token(model: GPT, block_size: int) -> float:
    """Training FLOPs per token: 6 per weight of every matmul (lm_head included) plus attention (nanoGPT's estimate)."""
    c = model.config
    matmul_params = model.num_params(non_embedding=True) + model.transformer.wte.weight.numel()
    return 6 * matmul_params + 12 * c.n_layer * c.n_embd * block_size


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


def train_step(r: Run, procs: Processes, stop: StopRequest, stats: torch.Tensor) -> tuple[dict, bool]:
    """One optimizer step over grad_accum micro-batches: (the step's record, whether any process asked to stop)."""
    cfg = r.cfg
    t0 = time.perf_counter()
    stats.zero_()  # summed loss, stop requests (one all_reduce per step)
    try:
        for micro in range(cfg.grad_accum):
            x, y = r.loader.next_batch()
            r.tokens_trained += r.loader.last_trained
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
        lr = apply_schedule(r.optimizer, r.step, cfg)
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
        **({"tokens_trained": r.tokens_trained} if r.chat_template is not None else {}),
        "tokens_per_s": cfg.tokens_per_step / dt,
        "step_time_s": dt,
    }
    return record, stats[1].item() > 0
