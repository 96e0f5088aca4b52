"""Continuous batching: one decoding loop over one model, in a thread of its own, for many requests at once.

Each sequence being generated (a Job) is a row of one key/value cache with its own position, Sampling and stop
rules. A job joins the batch after its prompt's prefill, at the next step, and leaves it when done or cancelled; the
last rows then move into the freed ones, so that a step runs rows 0..n-1 over the cache up to the furthest position.
The pieces are decode.py's steps (prefill, decode_step) over views of one KVCache, Sampling and TextStream.
"""

import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F

from gptkit.data.tokenizer import EOT_TOKEN
from gptkit.inference.decode import decode_step, prefill
from gptkit.inference.sampling import Sampling
from gptkit.inference.stream import TextStream
from gptkit.model.gpt import GPT
from gptkit.model.kv_cache import KVCache

# The cache grows in steps of this many positions, as far as the longest job needs (at most the model's context).
CACHE_STEP = 64
# Prompts of one length that join at one step are prefilled together, up to this many tokens a pass.
PREFILL_TOKENS = 4096


@dataclass
class Token:
    """A token drawn: the text it releases (may be empty: part of a character, or maybe the start of a stop text),
    and with Job.logprobs its log-probability and the top ones, (token, log-probability) pairs."""

    token: int
    text: str
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


@dataclass
class PromptLogprobs:
    """With Job.prompt_logprobs, once before the first Token: each prompt token's (token, log-probability given
    the ones before it (None for the first), the top ones)."""

    entries: list[tuple[int, float | None, list[tuple[int, float]] | None]]


@dataclass
class Done:
    """The job ended: reason "stop" (<|endoftext|> or a stop text) or "length" (max_tokens); text is what was held
    back until now; tokens the Tokens emitted."""

    reason: str
    text: str
    tokens: int


@dataclass
class Failed:
    """The job failed with error; nothing follows."""

    error: Exception


@dataclass
class Job:
    """One sequence to generate: prompt (tokens) continued by at most max_tokens tokens, drawn with sampling, up to
    <|endoftext|> or a stop text. emit(event) is called from the engine's thread with each Token, then one Done or
    Failed; an emit that raises cancels the job. Setting cancelled (a client gone) frees its row at the next step."""

    prompt: list[int]
    max_tokens: int
    sampling: Sampling
    emit: Callable
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # the top-N log-probabilities of each token (0: the drawn token's only)
    prompt_logprobs: bool = False
    cancelled: bool = False


@dataclass
class Row:
    """A job in the batch: the position its next token goes to, its text so far, its tokens."""

    job: Job
    pos: int
    stream: TextStream
    tokens: int = 0
    done: bool = False
    token: int = 0  # the token drawn this step, fed at pos next


def logprobs_of(logits: torch.Tensor, tokens: list[int], top: int | None):
    """Each row's (token, log-probability of tokens[i] under logits[i] (vocab_size,), the top ones or None)."""
    logprobs = F.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(-1, torch.tensor(tokens, dtype=torch.long, device=logits.device)[:, None])[:, 0].tolist()
    if not top:
        return [(token, lp, [] if top == 0 else None) for token, lp in zip(tokens, chosen)]
    values, ids = logprobs.topk(min(top, logprobs.size(-1)), dim=-1)
    pairs = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    return list(zip(tokens, chosen, pairs))


def send(job: Job, event):
    """job.emit(event); a receiver that is gone (emit raises) cancels the job."""
    try:
        job.emit(event)
    except Exception:
        job.cancelled = True


class Engine:
    """The decoding loop over model for up to max_batch jobs at once (see the module's docstring): submit() jobs
    from any thread; start() and stop() the loop's thread."""

    def __init__(self, model: GPT, max_batch: int):
        self.model = model
        self.max_batch = max_batch
        self.cache = KVCache.for_model(model, max_batch, CACHE_STEP)  # grown as jobs need
        self.waiting: deque[Job] = deque()
        self.rows: list[Row] = []
        self.logits: torch.Tensor | None = None  # (rows, vocab_size): what each row's next token is drawn from
        self.wake = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self.run, name="gptkit-decoding", daemon=True)
        self.steps = 0
        self.peak_rows = 0  # the most rows a step ran

    @property
    def device(self) -> torch.device:
        return self.cache.device

    def start(self):
        self.thread.start()

    def stop(self, timeout: float | None = None):
        """End the loop after its current step; jobs still there fail."""
        with self.wake:
            self.stopping = True
            self.wake.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)

    @torch.inference_mode()
    def warm_up(self):
        """Before start(): run the shapes a compiled step is made for (one row, then two, at growing positions) over
        a cache of the whole context, so that compiling is done before the first request."""
        self.fit(self.model.config.block_size)
        for rows in (1, 2):
            for _ in range(rows):
                self.join(Job([EOT_TOKEN], 3, Sampling(temperature=0), emit=lambda event: None))
            while self.rows:
                self.step()

    def submit(self, job: Job):
        """Queue job (from any thread); it joins the batch when a row is free."""
        if len(job.prompt) + job.max_tokens > self.model.config.block_size:
            raise ValueError(f"{len(job.prompt)} + {job.max_tokens} tokens exceed the context")
        with self.wake:
            self.waiting.append(job)
            self.wake.notify()

    @torch.inference_mode()
    def run(self):
        """The loop, in the engine's thread: waiting jobs join the free rows, then the batch runs one step."""
        while True:
            with self.wake:
                while not (self.stopping or self.waiting or self.rows):
                    self.wake.wait()
                if self.stopping:
                    break
                free = self.max_batch - len(self.rows)
                joining = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
            self.join(*joining)
            if self.rows:
                try:
                    self.step()
                except Exception as e:  # a failed step fails its rows, never the loop
                    self.fail_all(e)
        self.fail_all(RuntimeError("the server is shutting down"), list(self.waiting))

    def join(self, *jobs: Job):
        """Prefill the jobs' prompts into the next free rows, those of one length together (up to PREFILL_TOKENS a
        pass); each is drawn from at the next step."""
        by_length: dict[int, list[Job]] = {}
        for job in jobs:
            if job.cancelled:
                continue
            if job.max_tokens == 0 and not job.prompt_logprobs:  # nothing to draw or score: no pass over the prompt
                send(job, Done("length", "", 0))
            elif job.prompt_logprobs:
                self.join_scored(job)
            else:
                by_length.setdefault(len(job.prompt), []).append(job)
        for length, group in by_length.items():
            size = max(1, PREFILL_TOKENS // length)
            for start in range(0, len(group), size):
                self.join_group(group[start : start + size])

    def join_group(self, jobs: list[Job]):
        """Prefill jobs, prompts of one length, in one pass into the next free rows."""
        try:
            self.fit(max(len(job.prompt) + job.max_tokens for job in jobs))
            slot = len(self.rows)
            idx = torch.tensor([job.prompt for job in jobs], device=self.device)
            logits = prefill(self.model, idx, self.cache.view(slice(slot, slot + len(jobs))))
        except Exception as e:
            for job in jobs:
                send(job, Failed(e))
            return
        self.rows.extend(Row(job, len(job.prompt), TextStream(job.stop)) for job in jobs)
        self.logits = logits if self.logits is None else torch.cat([self.logits, logits])

    def join_scored(self, job: Job):
        """Prefill job's prompt into the next free row, scoring each of its tokens (PromptLogprobs)."""
        try:
            self.fit(len(job.prompt) + job.max_tokens)
            slot = len(self.rows)
            idx = torch.tensor([job.prompt], device=self.device)
            logits = self.model(idx, cache=self.cache.view(slice(slot, slot + 1)), pos=0)[0][0]  # (prompt, vocab)
            entries = logprobs_of(logits[:-1], job.prompt[1:], job.logprobs)
            send(job, PromptLogprobs([(job.prompt[0], None, None), *entries]))
            if job.max_tokens == 0:
                send(job, Done("length", "", 0))
                return
            self.rows.append(Row(job, len(job.prompt), TextStream(job.stop)))
            self.logits = logits[-1:] if self.logits is None else torch.cat([self.logits, logits[-1:]])
        except Exception as e:
            send(job, Failed(e))

    def fit(self, length: int):
        """Make the cache hold length positions (grown in steps of CACHE_STEP), keeping what the rows hold; where it
        fails (out of memory), the cache stays as it was (KVCache.grow) and the rows go on."""
        if length > self.cache.length:
            self.cache.grow(min(self.model.config.block_size, -(-length // CACHE_STEP) * CACHE_STEP))

    def step(self):
        """Draw each row's next token and hand it over; let the finished rows go; run the others one step."""
        self.peak_rows = max(self.peak_rows, len(self.rows))
        for group in self.sampling_groups():
            try:
                tokens = self.rows[group[0]].job.sampling.next(self.logits[group]).tolist()
            except Exception as e:  # fails the group's rows
                for i in group:
                    self.rows[i].done = True
                    send(self.rows[i].job, Failed(e))
                continue
            for i, token in zip(group, tokens):
                self.advance(self.rows[i], self.logits[i : i + 1], token)
        self.compact([i for i, row in enumerate(self.rows) if not (row.done or row.job.cancelled)])
        if not self.rows:
            self.logits = None
            return
        tokens = torch.tensor([[row.token] for row in self.rows], device=self.device)
        positions = [row.pos for row in self.rows]
        batch = self.cache.view(slice(0, len(self.rows)), max(positions) + 1)
        # rows at one position (a lone client's) attend to the positions filled so far, unmasked (decode_step)
        positions = positions[0] if min(positions) == max(positions) else torch.tensor(positions, device=self.device)
        self.logits = decode_step(self.model, tokens, positions, batch)
        for row in self.rows:
            row.pos += 1
        self.steps += 1

    def sampling_groups(self) -> list[list[int]]:
        """The rows not cancelled (indices) in groups that draw their next tokens in one call: the unseeded rows of
        equal sampling settings together, each seeded row alone (its generator then draws the same tokens whichever
        rows run beside it)."""
        groups = {}
        for i, row in enumerate(self.rows):
            sampling = row.job.sampling
            if not row.job.cancelled:
                groups.setdefault(sampling if sampling.generator is None else i, []).append(i)
        return list(groups.values())

    def advance(self, row: Row, logits: torch.Tensor, token: int):
        """Emit row's next token, drawn from logits (1, vocab_size), or what ends the job."""
        job = row.job
        try:
            if token == EOT_TOKEN:
                row.done = True
                send(job, Done("stop", row.stream.finish(), row.tokens))
                return
            logprob, top = None, None
            if job.logprobs is not None:
                _, logprob, top = logprobs_of(logits, [token], job.logprobs)[0]
            row.token, row.tokens = token, row.tokens + 1
            send(job, Token(token, row.stream.add(token), logprob, top))
            if row.stream.done:  # a stop text
                row.done = True
                send(job, Done("stop", "", row.tokens))
            elif row.tokens == job.max_tokens:
                row.done = True
                send(job, Done("length", row.stream.finish(), row.tokens))
        except Exception as e:
            row.done = True
            send(job, Failed(e))

    def compact(self, keep: list[int]):
        """Keep the rows keep (indices), the last of them moved into the freed rows below: rows 0..len(keep)-1."""
        if len(keep) == len(self.rows):
            return
        order = self.cache.keep_rows(keep, [row.pos for row in self.rows])
        self.rows = [self.rows[i] for i in order]
        self.logits = self.logits[order] if order else None

    def fail_all(self, error: Exception, jobs: list[Job] = ()):
        """Fail every row's job and jobs; the batch is empty after."""
        for job in [row.job for row in self.rows if not row.done] + list(jobs):
            send(job, Failed(error))
        self.rows, self.logits = [], None
