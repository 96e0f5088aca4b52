"""generate(): a batch of prompts continued token by token, plainly or speculatively, as a Python generator."""

import torch

from gptkit.inference.decode import decode_step, decoding_cache, prefill
from gptkit.inference.sampling import Sampling
from gptkit.inference.speculate import speculate
from gptkit.model.gpt import GPT


@torch.inference_mode()
def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    stop_tokens: tuple[int, ...] = (),
    draft: GPT | None = None,
    draft_tokens: int = 4,
    stats: dict | None = None,
):
    """Yield the next token of every row of idx (B, T), as a (B,) tensor, for max_new_tokens steps, or until every
    row has produced one of stop_tokens (a row's tokens after its stop token are to be ignored).

    The prompt runs through the model once, filling a preallocated key/value cache; each step then runs only the
    newest token. When the context is full, the cache is refilled with its last half (a sliding window).
    With a draft model, decoding is speculative (see speculate()); stats then receives the counts of draft tokens
    proposed and accepted.
    """
    batch_size, prompt_len = idx.shape
    block_size = model.config.block_size
    if prompt_len > block_size:
        raise ValueError(f"the prompt has {prompt_len} tokens, more than the context of {block_size}")
    if draft is not None:
        yield from speculate(model, draft, idx, max_new_tokens, draft_tokens, sampling, stop_tokens, stats)
        return
    cache = decoding_cache(model, batch_size, prompt_len + max_new_tokens)
    stop = torch.tensor(stop_tokens, dtype=idx.dtype, device=idx.device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=idx.device)
    history = [idx]  # the tokens in the cache, for refilling it when the window slides
    logits = prefill(model, idx, cache)
    pos = prompt_len
    for step in range(max_new_tokens):
        next_token = sampling.next(logits)
        yield next_token
        if stop_tokens:
            done |= torch.isin(next_token, stop)
            if done.all():
                return
        if step == max_new_tokens - 1:
            return
        history.append(next_token[:, None])
        if pos == block_size:  # the context is full: slide the window, refilling the cache from its last half
            context = torch.cat(history, dim=1)[:, -(block_size // 2) :]
            history = [context]
            logits = prefill(model, context, cache)
            pos = context.size(1)
        else:
            logits = decode_step(model, next_token[:, None], pos, cache)
            pos += 1
