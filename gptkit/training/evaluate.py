"""Evaluation during training: the validation loss over the held-out tokens (evaluation.loss.summed_loss) and HellaSwag
accuracy (evaluation.hellaswag), each process scoring its share and the sums added up; a Ctrl-C leaves an evaluation
unfinished (None), so that the run stops and saves at once.
"""

import contextlib

import torch
import torch.distributed as dist

from gptkit.data.conversations import PackedRows
from gptkit.data.loader import eval_batches
from gptkit.data.packed import packed_eval_batches
from gptkit.evaluation.hellaswag import evaluate_hellaswag
from gptkit.evaluation.loss import summed_loss
from gptkit.model.gpt import GPT
from gptkit.training.config import TrainConfig
from gptkit.training.distributed import Processes
from gptkit.training.run import Run
from gptkit.training.step import StopRequest


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
    """The mean validation loss over this run's eval_tokens (summed_loss, every process its share of the
    windows); None when Ctrl-C cut it short (every process still adds up its sums, so none waits for another)."""
    alone = evaluates_alone(cfg)
    rank, world_size = (procs.rank, procs.world_size) if alone else (0, 1)

    if isinstance(val_tokens, PackedRows):
        windows = packed_eval_batches(val_tokens, cfg.eval_tokens, cfg.batch_size, rank, world_size)
    else:
        windows = eval_batches(val_tokens, cfg.eval_tokens, cfg.batch_size, cfg.block_size, rank, world_size)

    def batches():
        for x, y in windows:
            if stop.requested and alone:
                return
            yield x, y, [y.size(1)] * len(y)

    with evaluating(model, cfg.fsdp):
        nats, count = summed_loss(model, batches(), dtype, procs.distributed and alone)
    return None if stop.requested and alone or count == 0 else nats / count


class StopEvaluating(Exception):
    """Ctrl-C during an evaluation: leave it unfinished."""


def hellaswag_accuracy(r: Run, procs: Processes, stop: StopRequest) -> float | None:
    """HellaSwag acc_norm over the first cfg.hellaswag_examples examples (evaluate_hellaswag), each process
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
