"""A request's jobs on the decoding engine (RequestJobs), and what their events add up to: each choice's text,
log-probabilities and token count (Choice), in the protocol's shapes."""

import asyncio
import sys
import time
from collections import deque
from itertools import accumulate

import torch
from fastapi import Request

from gptkit.data.tokenizer import get_tokenizer
from gptkit.inference.batching import Done, Engine, Failed, Job, PromptLogprobs, Token
from gptkit.inference.sampling import Sampling
from gptkit.serve.protocol import ChatLogprobs, CompletionLogprobs, Settings, TokenLogprob, TopLogprob, Usage

DISCONNECT_POLL_S = 0.5  # how often a request answered whole checks that its client is still there


def log(line: str):
    print(f"gptkit serve: {line}", file=sys.stderr, flush=True)


def failure(e: Exception) -> str:
    """The message of a request that failed with e (and the line on stderr saying so)."""
    what = f"{type(e).__name__}: {e}"
    log(f"a request failed: {what}")
    return f"the server failed on this request: {what}"


class Choice:
    """One choice's answer as its events come: text (after echo's prompt), the tokens' logprobs, finish reason and
    count. strip: leave out the whitespace the reply starts with (a chat reply follows "Assistant:")."""

    def __init__(self, index: int, text: str = "", strip: bool = False):
        self.index, self.text, self.strip = index, text, strip
        self.logprobs, self.prompt_logprobs = [], []
        self.finish, self.tokens = None, 0
        self.started = not strip

    def add(self, event) -> str:
        """Take event in; the text it adds."""
        text = ""
        if isinstance(event, Token):
            text = event.text
            if event.logprob is not None:
                self.logprobs.append((event.token, event.logprob, event.top))
        elif isinstance(event, PromptLogprobs):
            self.prompt_logprobs = event.entries
        elif isinstance(event, Done):
            text, self.finish, self.tokens = event.text, event.reason, event.tokens
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        self.text += text
        return text


class Mailbox:
    """The engine's events on their way to the event loop's queues: the loop is woken once for all the events that
    arrive before it runs (a step's, whatever the rows), not once an event."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.letters: deque[tuple[asyncio.Queue, tuple]] = deque()
        self.wake_pending = False

    def post(self, queue: asyncio.Queue, item: tuple):
        """From the engine's thread: item for queue. Raises where the loop is closed (the job is then cancelled)."""
        self.letters.append((queue, item))
        if not self.wake_pending:
            self.wake_pending = True
            self.loop.call_soon_threadsafe(self.deliver)

    def deliver(self):
        """On the loop: every letter to its queue. The flag is cleared first: a letter posted from here on either is
        delivered now or has woken the loop again."""
        self.wake_pending = False
        while self.letters:
            queue, item = self.letters.popleft()
            queue.put_nowait(item)


class RequestJobs:
    """The jobs of one request on the engine, and their events read back on the event loop."""

    def __init__(self, engine: Engine, mailbox: Mailbox):
        self.engine, self.mailbox = engine, mailbox
        self.queue: asyncio.Queue = asyncio.Queue()
        self.jobs: list[Job] = []

    def add(self, **job) -> Job:
        index = len(self.jobs)
        self.jobs.append(Job(emit=lambda event: self.mailbox.post(self.queue, (index, event)), **job))
        return self.jobs[-1]

    async def events(self, request: Request | None = None):
        """(job index, event) as they come, until every job has ended. With request, stop when its client has gone."""
        for job in self.jobs:
            self.engine.submit(job)
        left, checked = len(self.jobs), time.monotonic()
        while left:
            if request is None:
                index, event = await self.queue.get()
            else:
                try:
                    index, event = await asyncio.wait_for(self.queue.get(), DISCONNECT_POLL_S)
                except TimeoutError:
                    index, event = None, None
                if time.monotonic() - checked > DISCONNECT_POLL_S:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        return
                if event is None:
                    continue
            left -= isinstance(event, (Done, Failed))
            yield index, event

    async def collect(self, choices: list[Choice], request: Request) -> bool:
        """Read the events into choices (job i's into choices[i]); False if the client left first."""
        try:
            async for index, event in self.events(request):
                if isinstance(event, Failed):
                    raise event.error
                choices[index].add(event)
        finally:
            self.cancel()
        return all(choice.finish for choice in choices)

    def cancel(self):
        """Let the jobs go: their rows are freed at the engine's next step."""
        for job in self.jobs:
            job.cancelled = True


def request_jobs(state, body: Settings, prompts: list[list[int]], max_tokens: int, stops: tuple[str, ...],
                 logprobs: int | None, prompt_logprobs: bool) -> RequestJobs:  # fmt: skip
    """body.n jobs for each prompt (choice i = prompt i // n), each with its own generator, on the server's (state:
    the app's) engine."""
    engine = state.engine
    jobs = RequestJobs(engine, state.mailbox)
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = body.top_p if body.top_p is not None and body.top_p < 1 else None
    for i, prompt in enumerate(p for p in prompts for _ in range(body.n)):
        generator = None if body.seed is None else torch.Generator(engine.device).manual_seed(body.seed + i)
        sampling = Sampling(temperature, body.top_k or None, top_p, generator)
        jobs.add(prompt=prompt, max_tokens=max_tokens, sampling=sampling, stop=stops, logprobs=logprobs,
                 prompt_logprobs=prompt_logprobs)  # fmt: skip
    return jobs


def usage(prompts: list[list[int]], choices: list[Choice]) -> Usage:
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(choice.tokens for choice in choices)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)  # fmt: skip


def token_bytes(token: int) -> bytes:
    return get_tokenizer().decode_single_token_bytes(token)


def token_text(token: int) -> str:
    return token_bytes(token).decode("utf-8", errors="replace")


def completion_logprobs(entries: list, offset: int) -> CompletionLogprobs:
    """OpenAI's completion logprobs of entries, (token, log-probability, top pairs or None), the first at offset."""
    tokens = [token_text(token) for token, _, _ in entries]
    return CompletionLogprobs(
        tokens=tokens,
        token_logprobs=[logprob for _, logprob, _ in entries],
        top_logprobs=[None if top is None else {token_text(t): lp for t, lp in top} for _, _, top in entries],
        text_offset=list(accumulate((len(t) for t in tokens[:-1]), initial=offset)) if tokens else [],
    )


def chat_logprobs(entries: list) -> ChatLogprobs:
    """OpenAI's chat logprobs of entries, (token, log-probability, top pairs)."""

    def top(token: int, logprob: float) -> TopLogprob:
        return TopLogprob(token=token_text(token), logprob=logprob, bytes=list(token_bytes(token)))

    content = [
        TokenLogprob(**top(t, lp).model_dump(), top_logprobs=[top(*pair) for pair in pairs or []])
        for t, lp, pairs in entries
    ]
    return ChatLogprobs(content=content)
