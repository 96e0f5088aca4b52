"""A chat with a model: the conversation so far, the prompt it makes within the model's context, and a reply
streamed as text. `gptkit chat` and `gptkit sample --chat` use it; the server writes its prompts the same way
(chat_template.format_prompt)."""

import torch

from gptkit.data.tokenizer import EOT_TOKEN, encode
from gptkit.errors import GptkitError
from gptkit.inference.chat_template import format_prompt
from gptkit.inference.generate import generate
from gptkit.inference.sampling import Sampling
from gptkit.inference.stream import TextStream
from gptkit.model.gpt import GPT


class Conversation:
    """The messages of one chat, (role, content) pairs, after an optional system message; the oldest turns make
    room for new ones when the prompt outgrows the context (dropped counts them)."""

    def __init__(self, template: dict, system: str | None = None):
        self.template, self.system = template, system
        self.turns: list[tuple[str, str]] = []
        self.dropped = 0

    def reset(self):
        self.turns, self.dropped = [], 0

    def messages(self) -> list[tuple[str, str]]:
        return ([("system", self.system)] if self.system else []) + self.turns

    def ask(self, text: str):
        self.turns.append(("user", text))

    def answer(self, text: str):
        self.turns.append(("assistant", text))

    def prompt(self, context: int, room: int) -> list[int]:
        """The prompt's tokens for the reply to the last message, leaving room tokens of the context for it: the
        oldest turns (a user message and its reply) are dropped while it does not fit."""
        turns, dropped = self.turns, 0
        while True:
            system = [("system", self.system)] if self.system else []
            tokens = encode(format_prompt(self.template, system + turns))
            if len(tokens) + room <= context:
                self.turns, self.dropped = turns, self.dropped + dropped
                return tokens
            if len(turns) <= 1:  # refused: the conversation stays as it was
                raise GptkitError(
                    f"the message and the system prompt take {len(tokens):,} tokens, and the reply {room:,} more: "
                    f"the model's context holds {context:,}; shorten them, or lower --max-new-tokens"
                )
            turns, dropped = turns[2:], dropped + 1


def reply_room(context: int, max_new_tokens: int) -> int:
    """The context a reply is given: max_new_tokens, but never more than half the context, so a chat keeps some."""
    return min(max_new_tokens, max(1, context // 2))


def stream_reply(model: GPT, prompt: list[int], template: dict, sampling: Sampling, max_new_tokens: int):
    """Yield the reply to prompt as text, piece by piece, until <|endoftext|>, a stop text of the template or
    max_new_tokens; its leading spaces (the template's, between "generation" and the reply) are left out."""
    device = next(model.parameters()).device
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    room = min(max_new_tokens, model.config.block_size - len(prompt))
    stream = TextStream(stop=tuple(template["stop"]))
    started = False
    for token in generate(model, idx, room, sampling, stop_tokens=(EOT_TOKEN,)):
        token = int(token[0])
        text = "" if token == EOT_TOKEN else stream.add(token)
        if not started:
            text = text.lstrip()
            started = bool(text)
        if text:
            yield text
        if token == EOT_TOKEN or stream.done:
            break
    tail = stream.finish()  # what was held back as the possible start of a stop text
    if tail and (started or tail.strip()):
        yield tail if started else tail.lstrip()
