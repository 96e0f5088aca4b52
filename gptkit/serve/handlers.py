"""The endpoints, plain functions that find the server in request.app.state: engine (the decoding Engine), info (a
ServerInfo), chat_template and mailbox (the engine's events on their way to the event loop). Each checks its request,
builds its jobs, and answers whole or as a stream."""

import functools
import importlib.resources
import time
import uuid
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse

from gptkit.data.tokenizer import EOT_TOKEN, encode, get_tokenizer
from gptkit.inference.chat_template import ROLES, format_prompt
from gptkit.serve.jobs import Choice, chat_logprobs, completion_logprobs, failure, request_jobs, usage
from gptkit.serve.protocol import (
    MAX_CHOICES,
    MAX_STOPS,
    APIError,
    ChatChoice,
    ChatCompletion,
    ChatMessage,
    ChatRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelList,
    Settings,
    error_response,
)
from gptkit.serve.streaming import ChatChunks, CompletionChunks, stream

CHAT_PAGE = importlib.resources.files("gptkit.serve") / "static" / "chat.html"
CLIENT_GONE = 499  # nginx's status for a request whose client closed the connection first


@dataclass(frozen=True)
class ServerInfo:
    """What the endpoints need besides the engine."""

    model_name: str
    block_size: int
    api_key: str | None = None
    max_body: int = 1_000_000
    chat_template: dict | None = None
    created: int = 0


def fails_alone(endpoint):
    """endpoint, whose unexpected exceptions fail its request alone: a 500 error, and a line on stderr."""

    @functools.wraps(endpoint)
    async def guarded(*args, **kwargs):
        try:
            return await endpoint(*args, **kwargs)
        except APIError:
            raise
        except Exception as e:
            return error_response(500, failure(e))

    return guarded


async def health():
    return {"status": "ok"}


async def chat_page():
    if not CHAT_PAGE.is_file():
        return error_response(404, "the chat page is not installed with this gptkit", code="not_found")
    return HTMLResponse(CHAT_PAGE.read_text(encoding="utf-8"))


def model_card(info: ServerInfo) -> ModelCard:
    return ModelCard(id=info.model_name, created=info.created)


async def models(request: Request) -> ModelList:
    return ModelList(data=[model_card(request.app.state.info)])


async def model(model_id: str, request: Request) -> ModelCard:
    info = request.app.state.info
    if model_id != info.model_name:
        message = f"the model '{model_id}' is not served here: {info.model_name} is"
        raise APIError(404, message, "model", "model_not_found")
    return model_card(info)


# --- request checks --------------------------------------------------------------------------------------------------


def check_settings(body: Settings, choices: int) -> tuple[str, ...]:
    """body's settings that the request's form cannot check; its stop texts."""
    for name, neutral in body.UNSUPPORTED.items():
        if getattr(body, name) not in (None, neutral):
            raise APIError(400, f"{name} is not supported by gptkit serve", name, "unsupported")
    if choices > MAX_CHOICES:
        raise APIError(400, f"at most {MAX_CHOICES} choices a request (prompts x n), not {choices}", "n")
    stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if len(stops) > MAX_STOPS:
        raise APIError(400, f"at most {MAX_STOPS} stop texts, not {len(stops)}", "stop")
    return stops


def check_fits(tokens: list[int], max_tokens: int, param: str, context: int):
    """tokens and max_tokens more fit the model's context."""
    if len(tokens) > context:
        message = f"the prompt is {len(tokens)} tokens long, more than the model's context of {context}"
        raise APIError(400, message, param, "context_length_exceeded")
    if len(tokens) + max_tokens > context:
        message = (
            f"max_tokens {max_tokens} and the prompt's {len(tokens)} tokens exceed the model's context of "
            f"{context} tokens: ask for at most {context - len(tokens)}"
        )
        raise APIError(400, message, "max_tokens", "context_length_exceeded")


def prompt_tokens(prompt) -> list[list[int]]:
    """A completion request's prompts as tokens: a text, texts, tokens or lists of tokens; an empty one is
    <|endoftext|> (as gptkit sample starts)."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt: give a text, a list of texts or of tokens", "prompt")
    prompts = [encode(p) if isinstance(p, str) else list(p) for p in prompt]
    for tokens in prompts:
        if any(not 0 <= t <= EOT_TOKEN for t in tokens):
            raise APIError(400, f"prompt: tokens are between 0 and {EOT_TOKEN}", "prompt")
    return [tokens or [EOT_TOKEN] for tokens in prompts]


def content_text(content, i: int) -> str:
    """A message's content as text: a text, text parts (joined), or nothing."""
    if content is None or isinstance(content, str):
        return content or ""
    if any(part.type != "text" or part.text is None for part in content):
        raise APIError(400, f"messages[{i}].content: only text parts are supported", f"messages.{i}.content")
    return "".join(part.text for part in content)


def chat_prompt(body: ChatRequest, template: dict) -> list[int]:
    """body's messages written out with template, as tokens."""
    messages = []
    for i, message in enumerate(body.messages):
        if message.role not in ROLES:
            message_error = f"messages[{i}].role: '{message.role}' is not one of {', '.join(ROLES)}"
            raise APIError(400, message_error, f"messages.{i}.role")
        messages.append((message.role, content_text(message.content, i)))
    return encode(format_prompt(template, messages))


def head(id_prefix: str, kind: str, model_name: str) -> dict:
    """The fields every answer and chunk of one request starts with (Head's)."""
    return {"id": f"{id_prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": model_name}


# --- the completions -------------------------------------------------------------------------------------------------


@fails_alone
async def completions(body: CompletionRequest, request: Request):
    state = request.app.state
    prompts = prompt_tokens(body.prompt)
    stops = check_settings(body, len(prompts) * body.n)
    max_tokens = 16 if body.max_tokens is None else body.max_tokens  # OpenAI's default
    for tokens in prompts:
        check_fits(tokens, max_tokens, "prompt", state.info.block_size)
    prompt_logprobs = body.echo and body.logprobs is not None
    jobs = request_jobs(state, body, prompts, max_tokens, stops, body.logprobs, prompt_logprobs)
    texts = [get_tokenizer().decode(p) for p in prompts for _ in range(body.n)]
    choices = [Choice(i, text if body.echo else "") for i, text in enumerate(texts)]
    fields = head("cmpl", "text_completion", state.info.model_name)
    if body.stream:
        return stream(jobs, CompletionChunks(fields, body, prompts, choices, texts))
    if not await jobs.collect(choices, request):
        return JSONResponse({}, status_code=CLIENT_GONE)
    answers = []
    for choice, text in zip(choices, texts):
        logprobs = None
        if body.logprobs is not None:
            logprobs = completion_logprobs(choice.prompt_logprobs + choice.logprobs, 0 if body.echo else len(text))
        answers.append(CompletionChoice(index=choice.index, text=choice.text, logprobs=logprobs,
                                        finish_reason=choice.finish))  # fmt: skip
    return Completion(**fields, choices=answers, usage=usage(prompts, choices))


@fails_alone
async def chat_completions(body: ChatRequest, request: Request):
    state = request.app.state
    prompt = chat_prompt(body, state.chat_template)
    stops = tuple(state.chat_template["stop"]) + check_settings(body, body.n)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if max_tokens is None:
        max_tokens = state.info.block_size - len(prompt)  # a prompt longer than the context: check_fits refuses it
    check_fits(prompt, max_tokens, "messages", state.info.block_size)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    jobs = request_jobs(state, body, [prompt], max_tokens, stops, logprobs, False)
    choices = [Choice(i, strip=True) for i in range(body.n)]
    fields = head("chatcmpl", "chat.completion.chunk" if body.stream else "chat.completion", state.info.model_name)
    if body.stream:
        return stream(jobs, ChatChunks(fields, body, [prompt], choices))
    if not await jobs.collect(choices, request):
        return JSONResponse({}, status_code=CLIENT_GONE)
    answers = [
        ChatChoice(index=c.index, message=ChatMessage(content=c.text), finish_reason=c.finish,
                   logprobs=chat_logprobs(c.logprobs) if body.logprobs else None)
        for c in choices
    ]  # fmt: skip
    return ChatCompletion(**fields, choices=answers, usage=usage([prompt], choices))
