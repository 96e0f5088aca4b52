"""A request answered as server-sent events: a chunk (or a few) for each event of its jobs, then the token counts if
asked for, then [DONE]; a failure ends the stream with an error object."""

import json
from abc import ABC, abstractmethod

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from gptkit.inference.batching import Done, Failed, PromptLogprobs, Token
from gptkit.serve.jobs import Choice, RequestJobs, chat_logprobs, completion_logprobs, failure, token_text, usage
from gptkit.serve.protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    Delta,
    Settings,
    UsageChunk,
    error_body,
)


def sse(data: BaseModel) -> str:
    return f"data: {json.dumps(data.model_dump())}\n\n"


class Chunks(ABC):
    """The chunks of one request's stream: head starts each; choices[i] takes job i's events."""

    def __init__(self, head: dict, body: Settings, prompts: list[list[int]], choices: list[Choice]):
        self.head, self.body, self.prompts, self.choices = head, body, prompts, choices
        self.started = set()  # the choices that have sent a chunk

    @abstractmethod
    def of(self, index: int, event) -> list[BaseModel]:
        """The chunks that job index's event sends (none, one or more)."""

    def final(self) -> UsageChunk | None:
        """The chunk after the last event: the token counts, if the request asked for them."""
        if self.body.include_usage:
            return UsageChunk(**self.head, usage=usage(self.prompts, self.choices))
        return None


class CompletionChunks(Chunks):
    """A completion's chunks: texts[i] is choice i's prompt, sent first with echo."""

    def __init__(self, head: dict, body: CompletionRequest, prompts: list[list[int]], choices: list[Choice],
                 texts: list[str]):  # fmt: skip
        super().__init__(head, body, prompts, choices)
        self.texts = texts
        self.offsets = [0 if body.echo else len(text) for text in texts]  # each choice's next logprobs text_offset

    def of(self, index: int, event) -> list[BaseModel]:
        text = self.choices[index].add(event)
        if self.body.echo and index not in self.started:
            text = self.texts[index] + text
        self.started.add(index)
        entries = []
        if isinstance(event, PromptLogprobs):
            entries = event.entries
        elif isinstance(event, Token) and event.logprob is not None:
            entries = [(event.token, event.logprob, event.top)]
        elif isinstance(event, Token) and not text:
            return []
        logprobs = None if self.body.logprobs is None else completion_logprobs(entries, self.offsets[index])
        self.offsets[index] += sum(len(token_text(t)) for t, _, _ in entries)
        finish = event.reason if isinstance(event, Done) else None
        choice = CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish)
        return [CompletionChunk(**self.head, choices=[choice])]


class ChatChunks(Chunks):
    """A chat completion's chunks: each choice's first says the role, its last the finish reason."""

    def of(self, index: int, event) -> list[BaseModel]:
        text = self.choices[index].add(event)
        out = []
        if index not in self.started:
            self.started.add(index)
            out.append(ChatChunkChoice(index=index, delta=Delta(role="assistant", content="")))
        logprobs = None
        if self.body.logprobs and isinstance(event, Token):
            logprobs = chat_logprobs([(event.token, event.logprob, event.top)])
        if text or logprobs:
            out.append(ChatChunkChoice(index=index, delta=Delta(content=text), logprobs=logprobs))
        if isinstance(event, Done):
            out.append(ChatChunkChoice(index=index, delta=Delta(), finish_reason=event.reason))
        return [ChatCompletionChunk(**self.head, choices=[choice]) for choice in out]


def stream(jobs: RequestJobs, chunks: Chunks) -> StreamingResponse:
    """jobs' events as server-sent events, in chunks' shapes."""

    async def events():
        try:
            async for index, event in jobs.events():
                if isinstance(event, Failed):
                    yield sse(error_body(500, failure(event.error)))
                    return
                for chunk in chunks.of(index, event):
                    yield sse(chunk)
            if (last := chunks.final()) is not None:
                yield sse(last)
            yield "data: [DONE]\n\n"
        finally:
            jobs.cancel()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
