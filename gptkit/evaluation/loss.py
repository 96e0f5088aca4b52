"""The language-modelling loss of a text under a model: the one loss loop of training's validation and `gptkit eval`
(summed_loss), and eval's held-out loss, perplexity and bits per byte (evaluate_lm).

The tokens are cut into windows of block_size inputs, each input predicting the token after
it. With the default stride (= block_size) the windows follow one another and every token but the first is scored
once, with the context since its window's start. With a smaller stride the windows overlap and only the targets new
to each window are scored, so each target sees at least block_size - stride tokens of context: the sliding window
of Hugging Face's perplexity guide, applied to the (input, target) pairs. Either way each token after the first is
scored exactly once (the first is never a target). Bits per byte = total nats / ln 2 / UTF-8 bytes of the scored
tokens, where <|endoftext|> (a separator the data loader adds between documents, not text) counts 0 bytes: for a
whole file that is the file's bytes less those of its first token. It compares models with different tokenizers.
The tokens are read a batch of windows at a time from the memory-mapped shards (a TokenSequence: the windows cross
shard boundaries as over one array), so the memory does not grow with the text or the validation split.
"""

import math
import time
from functools import cache

import numpy as np
import torch
from torch.nn import functional as F

from gptkit.data.loader import TokenSequence
from gptkit.data.tokenizer import EOT_TOKEN, get_tokenizer
from gptkit.errors import GptkitError
from gptkit.machine.runtime import autocast
from gptkit.model.gpt import GPT
from gptkit.options import check_window


@cache
def token_byte_lengths() -> np.ndarray:
    """UTF-8 bytes of each GPT-2 token; 0 for <|endoftext|>."""
    enc = get_tokenizer()
    lengths = np.array([len(enc.decode_single_token_bytes(t)) for t in range(enc.n_vocab)], dtype=np.int64)
    lengths[EOT_TOKEN] = 0
    return lengths


def lm_windows(n_tokens: int, block_size: int, stride: int):
    """Yields (begin, end, n_scored) of each window in order: inputs tokens[begin:end], targets tokens[begin + 1:end
    + 1], of which the last n_scored are scored (those no earlier window scored). Every window is block_size long but
    the last, which may be shorter."""
    scored_until = 0
    for begin in range(0, n_tokens - 1, stride):
        end = min(begin + block_size, n_tokens - 1)
        yield begin, end, end - scored_until
        scored_until = end
        if end == n_tokens - 1:
            break


@torch.no_grad()
def summed_loss(model: GPT, batches, dtype: torch.dtype, distributed: bool = False, progress=None) -> tuple[float, int]:
    """(the summed next-token loss in nats, the number of targets scored) over batches, the one loss loop of training's
    validation and `gptkit eval`. Each batch is (inputs, targets, scored): the last scored[row] targets of each row
    count (a strided window scores only what earlier windows did not), but a target of -1 never does. With distributed, the sums of every process
    are added up (each process scores its share of the batches). progress(scored so far) runs after each batch and
    may raise to stop."""
    device = model.transformer.wte.weight.device
    total = torch.zeros(2, dtype=torch.float64, device=device)  # nats, targets
    for inputs, targets, scored in batches:
        inputs, targets = inputs.to(device), targets.to(device)
        with autocast(device, dtype):
            logits, _ = model(inputs)
        for row, n in enumerate(scored):
            counted = targets[row, -n:]  # -1: a target the loss does not count (a conversation's prompt, padding)
            total[0] += F.cross_entropy(logits[row, -n:].float(), counted, ignore_index=-1, reduction="sum").double()
            total[1] += (counted >= 0).sum()
        if progress:
            progress(int(total[1].item()))
    if distributed:
        torch.distributed.all_reduce(total)
    return total[0].item(), int(total[1].item())


class WindowBatches:
    """The batches (inputs, targets, scored) of the windows of tokens[:n_tokens] (lm_windows), read as they are
    iterated: full windows batch_size at a time; only the last window can be shorter, and it goes alone. Counts the
    windows and the UTF-8 bytes of the targets scored."""

    def __init__(self, tokens, n_tokens: int, block_size: int, stride: int, batch_size: int):
        self.tokens, self.n_tokens, self.block_size, self.stride = tokens, n_tokens, block_size, stride
        self.batch_size = batch_size
        self.windows = self.bytes = 0

    def __iter__(self):
        group = []
        for window in lm_windows(self.n_tokens, self.block_size, self.stride):
            if window[1] - window[0] < self.block_size:
                if group:
                    yield self.batch(group)
                group = []
                yield self.batch([window])
                continue
            group.append(window)
            if len(group) == self.batch_size:
                yield self.batch(group)
                group = []
        if group:
            yield self.batch(group)

    def batch(self, group: list[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        rows = np.stack([self.tokens[begin : end + 1] for begin, end, _ in group]).astype(np.int64)
        inputs, targets = rows[:, :-1], rows[:, 1:]
        byte_lengths = token_byte_lengths()
        self.windows += len(group)
        self.bytes += sum(int(byte_lengths[targets[row, -n:]].sum()) for row, (_, _, n) in enumerate(group))
        return torch.from_numpy(inputs), torch.from_numpy(targets), [n for _, _, n in group]


def evaluate_lm(
    model: GPT,
    tokens,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
    max_tokens: int | None = None,
    dtype: torch.dtype = torch.float32,
    progress=None,
) -> dict:
    """Mean next-token loss (nats), perplexity and bits per byte of tokens (an array, or a TokenSequence of
    memory-mapped shards, read a batch of windows at a time) under model.

    block_size defaults to the model's context, stride to block_size; max_tokens caps the scored tokens.
    progress(scored, total) is called after each batch.
    """
    block_size = model.config.block_size if block_size is None else block_size
    stride = block_size if stride is None else stride
    check_window(block_size, stride, model.config.block_size)
    if not isinstance(tokens, TokenSequence):
        tokens = np.asarray(tokens)
    n_tokens = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    if n_tokens < 2:
        raise GptkitError(f"the text is {n_tokens} token(s) long: it needs at least 2 to score one")
    batches = WindowBatches(tokens, n_tokens, block_size, stride, batch_size)
    n_targets = n_tokens - 1
    start = time.perf_counter()
    total_nats, scored = summed_loss(model, batches, dtype, progress=progress and (lambda n: progress(n, n_targets)))
    seconds = time.perf_counter() - start

    n_bytes = batches.bytes  # of the scored targets, tokens[1:n_tokens], each scored once
    loss = total_nats / scored
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": total_nats / math.log(2) / n_bytes if n_bytes else None,
        "tokens": scored,
        "bytes": n_bytes,
        "windows": batches.windows,
        "seconds": seconds,
        "tokens_per_second": scored / seconds,
    }
