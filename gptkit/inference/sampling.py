"""How the next token is drawn from the logits: temperature, top-k and top-p, as Hugging Face applies them."""

from dataclasses import dataclass

import torch
from torch.nn import functional as F


def candidates(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None):
    """(probabilities, token ids) of each row's candidates under temperature (> 0), top-k, then top-p (the smallest
    set of most likely tokens whose probability reaches top_p), as Hugging Face orders them; ids None: all tokens."""
    # Only the candidates are upcast and sorted: top-k first (it is unchanged by the temperature), else a full sort.
    if top_k:
        logits, ids = torch.topk(logits, min(top_k, logits.size(-1)))
    elif top_p is not None and top_p < 1:
        logits, ids = torch.sort(logits, descending=True)
    else:
        ids = None
    probs = F.softmax(logits.float() / temperature, dim=-1)
    if top_p is not None and top_p < 1:
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= top_p, 0.0)  # always keeps the first
    return probs, ids


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator=None):
    """Draw the next token of each row from logits (B, vocab_size); temperature 0 is greedy (see candidates())."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs, ids = candidates(logits, temperature, top_k, top_p)
    choice = torch.multinomial(probs, 1, generator=generator)
    return (choice if ids is None else ids.gather(-1, choice)).squeeze(-1)


def next_token_distribution(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None):
    """The distribution sample_next draws from, (B, vocab_size) probabilities (speculative decoding needs them)."""
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).float()
    probs, ids = candidates(logits, temperature, top_k, top_p)
    probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs if ids is None else torch.zeros_like(logits, dtype=probs.dtype).scatter_(-1, ids, probs)


@dataclass(frozen=True)
class Sampling:
    """How generate() draws tokens: sample_next's settings (temperature 0 is greedy; top_k and top_p None turn them
    off) and the random numbers (generator None: torch's global ones)."""

    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float | None = None
    generator: torch.Generator | None = None

    def next(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token (B,) of each row of logits (B, vocab_size), as sample_next draws it."""
        return sample_next(logits, self.temperature, self.top_k, self.top_p, self.generator)

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        return next_token_distribution(logits, self.temperature, self.top_k, self.top_p)

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """One token (B,) from each row of probs (B, vocab_size)."""
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0]
