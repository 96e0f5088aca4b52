"""Log-likelihoods of continuations under a gptkit model: what lm-evaluation-harness's tasks (harness.py) and CORE
(core.py) ask of it.

A request is (context tokens, continuation tokens), the context at least one token long. Its answer is the summed
log-probability of the continuation given the context, and whether greedy decoding gives the continuation (each of
its tokens the most likely one). As in the harness's own models, a request longer than the model's context loses
tokens from the left: the model reads (context + continuation)[-(block_size + 1):][:-1], and the logits of its last
len(continuation) positions score the continuation.

Requests run in one of two ways, longest first so that a batch's rows are of similar lengths:
- rows: a request a row, batch_size rows a forward pass. The positions before the batch's first scored one run first,
  into a key/value cache and without logits; then the rest, whose logits are computed. A context's logits are thus
  neither computed nor held (50257 floats a position).
- shared context: the requests that read the same tokens before their scored positions (a question's choices) run
  those tokens once, into a cache copied to one row per request, then their scored positions, batch_size rows at a
  time, over it. The context is computed once instead of once a choice. That pays where a forward pass costs in
  proportion to its tokens, on the CPU; on a GPU a batch of many rows costs little more than one row, so there
  requests go as rows (share_context None chooses by the device). A request whose context no other request shares
  goes as a row either way.
"""

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from gptkit.errors import GptkitError
from gptkit.inference.decode import prefill
from gptkit.model.gpt import GPT
from gptkit.model.kv_cache import KVCache


@dataclass
class Window:
    """A request as the model reads it: inputs, the logits of whose last len(targets) positions score targets."""

    index: int  # of the request, in the caller's order
    inputs: list[int]
    targets: list[int]

    @property
    def start(self) -> int:
        """The first scored position; the inputs before it are what a question's choices may share."""
        return len(self.inputs) - len(self.targets)


def windows_of(requests: list[tuple[list[int], list[int]]], block_size: int) -> list[Window]:
    windows = []
    for index, (context, continuation) in enumerate(requests):
        if not context or not continuation:
            raise ValueError("a request needs at least one context token and one continuation token")
        if len(continuation) > block_size:
            raise GptkitError(
                f"a continuation of {len(continuation)} tokens is longer than the model's context of {block_size}"
            )
        tokens = (context + continuation)[-(block_size + 1) :]
        windows.append(Window(index, tokens[:-1], continuation))
    return windows


def continuation_score(logits: torch.Tensor, targets: list[int]) -> tuple[float, bool]:
    """(summed log-probability of targets, whether each is the most likely) from logits (len(targets), vocab_size)."""
    targets = torch.tensor(targets, device=logits.device)
    logprobs = F.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None])
    return float(logprobs.double().sum()), bool((logits.argmax(dim=-1) == targets).all())


def padded(rows: list[list[int]], device) -> torch.Tensor:
    """rows right-padded with zeros to the longest (a causal model's earlier positions never see the padding)."""
    length = max(len(row) for row in rows)
    return torch.tensor([row + [0] * (length - len(row)) for row in rows], dtype=torch.long, device=device)


def score_rows(model: GPT, batch: list[Window]) -> list[tuple[float, bool]]:
    """The batch's windows, a row each: the positions before the first scored one into a cache, then the rest."""
    inputs = padded([w.inputs for w in batch], model.transformer.wte.weight.device)
    start = min(w.start for w in batch)
    if start:
        cache = KVCache.for_model(model, len(batch), inputs.size(1))
        prefill(model, inputs[:, :start], cache)
        logits = model(inputs[:, start:], cache=cache, pos=start)[0]
    else:
        logits = model(inputs)[0]
    return [
        continuation_score(row[w.start - start : len(w.inputs) - start], w.targets) for row, w in zip(logits, batch)
    ]


def score_shared(model: GPT, group: list[Window], batch_size: int, progress) -> list[tuple[float, bool]]:
    """The windows of group, which share their inputs before their scored positions (the context): the context
    runs once into a one-row cache, which is copied to a row a window for each batch of them; a batch then runs its
    windows' scored positions only. progress(n) after each batch of n."""
    device = model.transformer.wte.weight.device
    length = group[0].start
    context = KVCache.for_model(model, 1, length)
    prefill(model, torch.tensor([group[0].inputs[:length]], device=device), context)
    scores = []
    for first in range(0, len(group), batch_size):
        batch = group[first : first + batch_size]
        tails = [w.inputs[length:] for w in batch]
        cache = KVCache.for_model(model, len(batch), length + max(len(t) for t in tails))
        for rows, shared in zip(cache.k + cache.v, context.k + context.v):
            rows[:, :, :length] = shared
        logits = model(padded(tails, device), cache=cache, pos=length)[0]
        scores += [continuation_score(row[: len(t)], w.targets) for row, t, w in zip(logits, tails, batch)]
        progress(len(batch))
    return scores


@torch.inference_mode()
def score_requests(
    model: GPT,
    requests: list[tuple[list[int], list[int]]],
    batch_size: int = 16,
    share_context: bool | None = None,
    progress=None,
) -> list[tuple[float, bool]]:
    """(log-likelihood of the continuation given the context, whether greedy decoding gives it) of each request,
    (context tokens, continuation tokens), in the model's dtype (see the module's docstring). share_context None:
    on the CPU only. progress(done, total) is called as requests are scored."""
    windows = windows_of(requests, model.config.block_size)
    if share_context is None:
        share_context = model.transformer.wte.weight.device.type == "cpu"
    groups: dict[tuple[int, ...] | int, list[Window]] = {}
    for w in windows:  # a tuple of context tokens, or a request's own index: never equal
        groups.setdefault(tuple(w.inputs[: w.start]) if share_context and w.start else w.index, []).append(w)
    shared = sorted((g for g in groups.values() if len(g) > 1), key=lambda g: -len(g[0].inputs))
    alone = sorted((g[0] for g in groups.values() if len(g) == 1), key=lambda w: -len(w.inputs))
    results: list[tuple[float, bool] | None] = [None] * len(windows)
    done = 0

    def advance(n: int):
        nonlocal done
        done += n
        if progress:
            progress(done, len(windows))

    for group in shared:
        for w, score in zip(group, score_shared(model, group, batch_size, advance)):
            results[w.index] = score
    for first in range(0, len(alone), batch_size):
        batch = alone[first : first + batch_size]
        for w, score in zip(batch, score_rows(model, batch)):
            results[w.index] = score
        advance(len(batch))
    return results
