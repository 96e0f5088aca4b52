"""Speculative decoding (Leviathan et al., 2023; gpt-fast's speculative_decode): a small draft model proposes
tokens, the model scores them all in one pass and keeps what its own sampling would have drawn."""

from pathlib import Path

import torch

from gptkit.errors import GptkitError
from gptkit.inference.decode import decode_step, decoding_cache, prefill
from gptkit.inference.sampling import Sampling
from gptkit.model.gpt import GPT
from gptkit.model.kv_cache import KVCache


def speculate(model, draft, idx, max_new_tokens, k, sampling: Sampling, stop_tokens, stats):
    """generate()'s speculative decoding.

    Each round the draft proposes up to k tokens one at a time and the model scores them all in one forward pass;
    the proposal i is accepted with probability min(1, p(x_i) / q(x_i)) (p the model's distribution, q the draft's),
    and the first rejected one is replaced by a draw from max(p - q, 0), normalised; when all are accepted a bonus
    token comes from the model's next distribution. Every token is so distributed exactly as the model's own
    sampling; greedy (temperature 0) yields exactly the model's greedy tokens. In a batch, the rows advance together
    by the fewest tokens any row accepted: a row that accepted more keeps its accepted proposal at that place,
    which is still a draw from p.
    """
    batch_size, prompt_len = idx.shape
    block_size = model.config.block_size
    cache = decoding_cache(model, batch_size, prompt_len + max_new_tokens)
    # a model drafting for itself keeps one cache: what the draft stores there is the model's own
    draft_cache = cache if draft is model else decoding_cache(draft, batch_size, prompt_len + max_new_tokens)
    stop = torch.tensor(stop_tokens, dtype=idx.dtype, device=idx.device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=idx.device)
    stats = {} if stats is None else stats
    stats.update(proposed=0, accepted=0, rounds=0)

    def start(context):  # both caches hold context but its last token, which the next round feeds
        if context.size(1) > 1:
            for m, c in ((model, cache), (draft, draft_cache)):
                prefill(m, context[:, :-1], c)
        return context[:, -1:], context.size(1) - 1

    history = [idx]  # the tokens so far, for refilling the caches when the window slides
    token, pos = start(idx)
    produced = 0
    while True:
        if pos == block_size:  # the context is full: slide the window, as generate() does
            history = [torch.cat(history, dim=1)[:, -(block_size // 2) :]]
            token, pos = start(history[0])
        n_draft = min(k, block_size - 1 - pos, max_new_tokens - produced - 1)
        proposed, draft_probs = propose(draft, draft_cache, token, pos, n_draft, sampling)
        logits = model(proposed, cache=cache, pos=pos)[0]  # the model's next-token logits after each of them
        accepted, n, last = verify(logits, proposed, draft_probs, sampling)
        stats["proposed"] += n_draft * batch_size
        stats["accepted"] += int(accepted.sum())
        stats["rounds"] += 1
        if n == n_draft and n_draft:  # the draft never ran its last proposal: cache it for the next round
            decode_step(draft, proposed[:, -1:], pos + n_draft, draft_cache)
        new = [*proposed[:, 1 : n + 1].unbind(dim=1), last]
        for next_token in new:
            yield next_token
            produced += 1
            if stop_tokens:
                done |= torch.isin(next_token, stop)
                if done.all():
                    return
            if produced == max_new_tokens:
                return
        history.append(torch.stack(new, dim=1))
        token, pos = last[:, None], pos + n + 1


def propose(draft: GPT, cache: KVCache, token: torch.Tensor, pos: int, n: int, sampling: Sampling):
    """The draft's n proposals after token (B, 1) at position pos, one decoding step each over its cache: (token
    followed by the proposals, (B, 1 + n); the distributions q (B, vocab_size) they were drawn from)."""
    proposals, draft_probs, current = [], [], token
    for i in range(n):
        q = sampling.distribution(decode_step(draft, current, pos + i, cache))
        current = q.argmax(dim=-1, keepdim=True) if sampling.temperature == 0 else sampling.draw(q)[:, None]
        proposals.append(current)
        draft_probs.append(q)
    return torch.cat([token, *proposals], dim=1), draft_probs


def verify(logits: torch.Tensor, proposed: torch.Tensor, draft_probs: list, sampling: Sampling):
    """The model's verdict on the proposals, proposed[:, 1:], given its logits after each token of proposed:
    (the proposals each row accepted (B,), the fewest any row accepted n, the token (B,) after the first n)."""
    batch_size, n_draft = proposed.size(0), proposed.size(1) - 1
    if sampling.temperature == 0:
        target = logits.argmax(dim=-1)  # (B, 1 + n_draft)
        accepted = (target[:, :n_draft] == proposed[:, 1:]).int().cumprod(dim=1).sum(dim=1)
        n = int(accepted.min())
        return accepted, n, target[:, n]  # the model's own token where the first row disagrees (or the bonus token)
    p = torch.stack([sampling.distribution(logits[:, i]) for i in range(n_draft + 1)], dim=1)
    if n_draft:
        q = torch.stack(draft_probs, dim=1)
        drafted = proposed[:, 1:, None]
        p_x, q_x = p[:, :n_draft].gather(-1, drafted)[..., 0], q.gather(-1, drafted)[..., 0]
        u = torch.rand(p_x.shape, generator=sampling.generator, device=p_x.device)
        accepted = (u * q_x < p_x).int().cumprod(dim=1).sum(dim=1)
    else:
        accepted = torch.zeros(batch_size, dtype=torch.long, device=proposed.device)
    n = int(accepted.min())
    if n == n_draft:
        return accepted, n, sampling.draw(p[:, n])
    # the rows rejected at n draw from the residual; the others keep their proposal
    residual = (p[:, n] - q[:, n]).clamp(min=0)
    residual = torch.where(residual.sum(dim=-1, keepdim=True) > 0, residual, p[:, n])
    rows = torch.arange(batch_size, device=proposed.device)
    return accepted, n, torch.where(accepted > n, proposed[rows, n + 1], sampling.draw(residual))


def check_draft(draft_config, config, draft: Path):
    """A draft must share the model's vocabulary and see at least the model's context."""
    if draft_config.vocab_size != config.vocab_size:
        raise GptkitError(
            f"the draft {draft} has a vocabulary of {draft_config.vocab_size} tokens, the model {config.vocab_size}: "
            "a draft must use the same tokenizer"
        )
    if draft_config.block_size < config.block_size:
        raise GptkitError(
            f"the draft {draft} has a context of {draft_config.block_size} tokens, shorter than the model's "
            f"{config.block_size}: use a draft with at least the model's context"
        )
