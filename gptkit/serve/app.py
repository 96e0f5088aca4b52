"""`gptkit serve`: OpenAI's HTTP API over a checkpoint (POST /v1/completions and /v1/chat/completions, GET /v1/models
and /health) and a chat page (GET /), streamed as server-sent events or answered whole, every request decoded in one continuous batch
(batching.Engine). FastAPI and uvicorn (gptkit[serve]).

make_app() is the application (the tests run it in a thread); serve() is the command: it listens, loads the model,
serves, and on SIGTERM or Ctrl-C stops accepting, finishes what is in flight (--grace-period) and exits 0.
"""

import asyncio
import contextlib
import functools
import hmac
import importlib.resources
import json
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from gptkit.inference.batching import Done, Engine, Failed, Job, PromptLogprobs, Token
from gptkit.inference.chat_template import DEFAULT_TEMPLATE, ROLES, check_template, format_prompt
from gptkit.errors import GptkitError
from gptkit.options import ServeOptions
from gptkit.inference.sample import Sampling
from gptkit.data.tokenizer import EOT_TOKEN, encode, get_tokenizer

MAX_CHOICES = 128  # choices a request (prompts x n), OpenAI's limit of n
MAX_STOPS = 4  # stop texts a request, as OpenAI
MAX_LOGPROBS = 20  # top log-probabilities a token
DISCONNECT_POLL_S = 0.5  # how often a request answered whole checks that its client is still there
OPEN_PATHS = ("/", "/health")  # served without the API key: the chat page asks for the key itself


# --- requests ----------------------------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: bool = False


class Settings(BaseModel):
    """What both endpoints take: how many tokens, how they are drawn, where they stop, how they come back. The model
    is the served one whatever the request names; penalties and logit_bias are refused unless neutral."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # not OpenAI's: an extension
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None


class CompletionRequest(Settings):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = None
    suffix: str | None = None


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class Message(BaseModel):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatRequest(Settings):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


# --- errors ----------------------------------------------------------------------------------------------------------


class APIError(Exception):
    """A request the server refuses: status, and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(status: int, message: str, param=None, code=None, headers=None) -> JSONResponse:
    """OpenAI's error JSON: {"error": {"message", "type", "param", "code"}}."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    error = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def log(line: str):
    print(f"gptkit serve: {line}", file=sys.stderr, flush=True)


def failure(e: Exception) -> str:
    """The message of a request that failed with e (and the line on stderr saying so)."""
    what = f"{type(e).__name__}: {e}"
    log(f"a request failed: {what}")
    return f"the server failed on this request: {what}"


def answers(endpoint):
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


class Guard:
    """ASGI middleware: every request but the chat page and /health carries the API key (if one is set), compared in constant time;
    no request body is longer than max_body bytes."""

    def __init__(self, app, api_key: str | None, max_body: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key is not None and scope["path"] not in OPEN_PATHS:
            scheme, _, key = headers.get(b"authorization", b"").partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(key.strip(), self.api_key.encode())):
                message = "a valid API key is needed: send the header 'Authorization: Bearer KEY'"
                response = error_response(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body:
            return await self.too_large()(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise HTTPException(413, self.too_large_message())
            return message

        await self.app(scope, limited_receive, send)

    def too_large_message(self) -> str:
        return f"the request body is over the limit of {self.max_body:,} bytes"

    def too_large(self) -> JSONResponse:
        return error_response(413, self.too_large_message(), code="request_too_large")


# --- the pieces of an answer -------------------------------------------------------------------------------------------


def token_bytes(token: int) -> bytes:
    return get_tokenizer().decode_single_token_bytes(token)


def token_text(token: int) -> str:
    return token_bytes(token).decode("utf-8", errors="replace")


def completion_logprobs(entries: list, offset: int) -> dict:
    """OpenAI's completion logprobs of entries, (token, log-probability, top pairs or None), the first at offset."""
    tokens = [token_text(token) for token, _, _ in entries]
    return {
        "tokens": tokens,
        "token_logprobs": [logprob for _, logprob, _ in entries],
        "top_logprobs": [None if top is None else {token_text(t): lp for t, lp in top} for _, _, top in entries],
        "text_offset": list(accumulate((len(t) for t in tokens[:-1]), initial=offset)) if tokens else [],
    }


def chat_logprobs(entries: list) -> dict:
    """OpenAI's chat logprobs of entries, (token, log-probability, top pairs)."""

    def item(token, logprob):
        return {"token": token_text(token), "logprob": logprob, "bytes": list(token_bytes(token))}

    return {"content": [{**item(t, lp), "top_logprobs": [item(*pair) for pair in top or []]} for t, lp, top in entries]}


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


class Run:
    """The jobs of one request on the engine, and their events read back on the event loop."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.jobs: list[Job] = []

    def add(self, **job) -> Job:
        index = len(self.jobs)
        self.jobs.append(
            Job(emit=lambda event: self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, event)), **job)
        )
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
                except asyncio.TimeoutError:
                    index, event = None, None
                if time.monotonic() - checked > DISCONNECT_POLL_S:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        return
                if event is None:
                    continue
            left -= isinstance(event, (Done, Failed))
            yield index, event

    def cancel(self):
        """Let the jobs go: their rows are freed at the engine's next step."""
        for job in self.jobs:
            job.cancelled = True


def sse(data) -> str:
    return f"data: {json.dumps(data)}\n\n"


# --- the app ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerInfo:
    """What the endpoints need besides the engine."""

    model_name: str
    block_size: int
    api_key: str | None = None
    max_body: int = 1_000_000
    chat_template: dict | None = None
    created: int = 0


def make_app(engine: Engine, info: ServerInfo, ready=None) -> FastAPI:
    """The application serving engine's model; its lifespan starts and stops the engine and then calls ready()."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        if ready is not None:
            ready()
        yield
        engine.stop(timeout=10)

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.add_middleware(Guard, api_key=info.api_key, max_body=info.max_body)
    template = info.chat_template or DEFAULT_TEMPLATE
    device = engine.device

    @app.exception_handler(APIError)
    async def refused(request, e: APIError):
        return error_response(e.status, e.message, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        error = e.errors()[0]
        if error["type"] == "json_invalid":
            return error_response(400, f"the body is not valid JSON: {error['msg']}", code="invalid_json")
        where = [str(part) for part in error["loc"] if part != "body"]
        param = ".".join(where) or None
        return error_response(400, f"{param or 'the body'}: {error['msg']}", param, "invalid_value")

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        if e.status_code == 404:
            return error_response(404, f"no such endpoint: {request.method} {request.url.path}", code="not_found")
        if e.status_code == 405:
            return error_response(405, f"{request.method} is not allowed on {request.url.path}", code="bad_method")
        return error_response(e.status_code, str(e.detail), code="request_too_large" if e.status_code == 413 else None)

    def model_card() -> dict:
        return {"id": info.model_name, "object": "model", "created": info.created, "owned_by": "gptkit"}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/")
    async def chat_page():
        page = importlib.resources.files("gptkit.serve") / "static" / "chat.html"
        if not page.is_file():
            return error_response(404, "the chat page is not installed with this gptkit", code="not_found")
        return HTMLResponse(page.read_text(encoding="utf-8"))

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != info.model_name:
            raise APIError(
                404, f"the model '{model_id}' is not served here: {info.model_name} is", "model", "model_not_found"
            )
        return model_card()

    def check_fits(tokens: list[int], max_tokens: int, param: str):
        context = info.block_size
        if len(tokens) > context:
            message = f"the prompt is {len(tokens)} tokens long, more than the model's context of {context}"
            raise APIError(400, message, param, "context_length_exceeded")
        if len(tokens) + max_tokens > context:
            message = (
                f"max_tokens {max_tokens} and the prompt's {len(tokens)} tokens exceed the model's context of "
                f"{context} tokens: ask for at most {context - len(tokens)}"
            )
            raise APIError(400, message, "max_tokens", "context_length_exceeded")

    def check_settings(body: Settings, choices: int) -> tuple[str, ...]:
        """body's settings that the request's form cannot check; its stop texts."""
        for name, neutral in (("presence_penalty", 0), ("frequency_penalty", 0), ("logit_bias", {})):
            if getattr(body, name) not in (None, neutral):
                raise APIError(400, f"{name} is not supported by gptkit serve", name, "unsupported")
        if choices > MAX_CHOICES:
            raise APIError(400, f"at most {MAX_CHOICES} choices a request (prompts x n), not {choices}", "n")
        stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        if len(stops) > MAX_STOPS:
            raise APIError(400, f"at most {MAX_STOPS} stop texts, not {len(stops)}", "stop")
        return stops

    def start(body: Settings, prompts: list[list[int]], max_tokens: int, stops, logprobs, prompt_logprobs) -> Run:
        """A Run of body.n jobs for each prompt (choice i = prompt i // n), each with its own generator."""
        run = Run(engine)
        temperature = 1.0 if body.temperature is None else body.temperature
        top_p = body.top_p if body.top_p is not None and body.top_p < 1 else None
        for i, prompt in enumerate(p for p in prompts for _ in range(body.n)):
            generator = None if body.seed is None else torch.Generator(device).manual_seed(body.seed + i)
            sampling = Sampling(temperature, body.top_k or None, top_p, generator)
            run.add(
                prompt=prompt,
                max_tokens=max_tokens,
                sampling=sampling,
                stop=stops,
                logprobs=logprobs,
                prompt_logprobs=prompt_logprobs,
            )
        return run

    def usage(prompts: list[list[int]], choices: list[Choice]) -> dict:
        prompt_tokens = sum(len(p) for p in prompts)
        completion_tokens = sum(choice.tokens for choice in choices)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip

    async def answer(run: Run, choices: list[Choice], request: Request) -> bool:
        """Read run's events into choices; False if the client left first."""
        try:
            async for index, event in run.events(request):
                if isinstance(event, Failed):
                    raise event.error
                choices[index].add(event)
        finally:
            run.cancel()
        return all(choice.finish for choice in choices)

    def stream(run: Run, chunks, final) -> StreamingResponse:
        """Server-sent events: chunks(index, event) for each event (a list of objects), then final() if anything, then
        [DONE]; a failure ends the stream with an error object."""

        async def events():
            try:
                async for index, event in run.events():
                    if isinstance(event, Failed):
                        error = {"message": failure(event.error), "type": "server_error", "param": None, "code": None}
                        yield sse({"error": error})
                        return
                    for chunk in chunks(index, event):
                        yield sse(chunk)
                if (last := final()) is not None:
                    yield sse(last)
                yield "data: [DONE]\n\n"
            finally:
                run.cancel()

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    @app.post("/v1/completions")
    @answers
    async def completions(body: CompletionRequest, request: Request):
        for name, neutral in (("best_of", 1), ("suffix", "")):
            if getattr(body, name) not in (None, neutral):
                raise APIError(400, f"{name} is not supported by gptkit serve", name, "unsupported")
        prompts = prompt_tokens(body.prompt)
        stops = check_settings(body, len(prompts) * body.n)
        max_tokens = 16 if body.max_tokens is None else body.max_tokens  # OpenAI's default
        for tokens in prompts:
            check_fits(tokens, max_tokens, "prompt")
        prompt_logprobs = body.echo and body.logprobs is not None
        run = start(body, prompts, max_tokens, stops, body.logprobs, prompt_logprobs)
        texts = [get_tokenizer().decode(p) for p in prompts for _ in range(body.n)]
        choices = [Choice(i, text if body.echo else "") for i, text in enumerate(texts)]
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": info.model_name}  # fmt: skip

        def logprobs_of(entries: list, offset: int):
            return None if body.logprobs is None else completion_logprobs(entries, offset)

        if not body.stream:
            if not await answer(run, choices, request):
                return JSONResponse({}, status_code=499)
            data = []
            for choice, text in zip(choices, texts):
                entries = choice.prompt_logprobs + choice.logprobs
                offset = 0 if body.echo else len(text)
                data.append({"index": choice.index, "text": choice.text, "finish_reason": choice.finish,
                             "logprobs": logprobs_of(entries, offset)})  # fmt: skip
            return {**head, "choices": data, "usage": usage(prompts, choices)}

        offsets = [0 if body.echo else len(text) for text in texts]
        started = set()

        def chunks(index: int, event) -> list[dict]:
            text = choices[index].add(event)
            if body.echo and index not in started:  # the prompt first
                text = texts[index] + text
            started.add(index)
            entries = []
            if isinstance(event, PromptLogprobs):
                entries = event.entries
            elif isinstance(event, Token) and event.logprob is not None:
                entries = [(event.token, event.logprob, event.top)]
            elif isinstance(event, Token) and not text:
                return []
            logprobs = logprobs_of(entries, offsets[index])
            offsets[index] += sum(len(token_text(t)) for t, _, _ in entries)
            finish = event.reason if isinstance(event, Done) else None
            return [
                {**head, "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]}
            ]

        def final():
            if body.stream_options and body.stream_options.include_usage:
                return {**head, "choices": [], "usage": usage(prompts, choices)}

        return stream(run, chunks, final)

    @app.post("/v1/chat/completions")
    @answers
    async def chat_completions(body: ChatRequest, request: Request):
        messages = []
        for i, message in enumerate(body.messages):
            if message.role not in ROLES:
                message_error = f"messages[{i}].role: '{message.role}' is not one of {', '.join(ROLES)}"
                raise APIError(400, message_error, f"messages.{i}.role")
            messages.append((message.role, content_text(message.content, i)))
        prompt = encode(format_prompt(template, messages))
        stops = tuple(template["stop"]) + check_settings(body, body.n)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if max_tokens is None:
            max_tokens = info.block_size - len(prompt)  # a prompt longer than the context: check_fits refuses it
        check_fits(prompt, max_tokens, "messages")
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        run = start(body, [prompt], max_tokens, stops, logprobs, False)
        choices = [Choice(i, strip=True) for i in range(body.n)]
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": info.model_name}  # fmt: skip

        if not body.stream:
            if not await answer(run, choices, request):
                return JSONResponse({}, status_code=499)
            data = [
                {"index": c.index, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish,
                 "logprobs": chat_logprobs(c.logprobs) if body.logprobs else None}
                for c in choices
            ]  # fmt: skip
            return {**head, "choices": data, "usage": usage([prompt], choices)}

        head["object"] = "chat.completion.chunk"
        started = set()

        def chunks(index: int, event) -> list[dict]:
            text = choices[index].add(event)
            out = []
            if index not in started:
                started.add(index)
                out.append({"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
            logprobs = None
            if body.logprobs and isinstance(event, Token):
                logprobs = chat_logprobs([(event.token, event.logprob, event.top)])
            if text or logprobs:
                out.append({"index": index, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": None})
            if isinstance(event, Done):
                out.append({"index": index, "delta": {}, "finish_reason": event.reason})
            return [{**head, "choices": [choice]} for choice in out]

        def final():
            if body.stream_options and body.stream_options.include_usage:
                return {**head, "choices": [], "usage": usage([prompt], choices)}

        return stream(run, chunks, final)

    return app


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


# --- the command -----------------------------------------------------------------------------------------------------


class Server(uvicorn.Server):
    """uvicorn's server, which exits 0 once SIGTERM or Ctrl-C have drained it (uvicorn raises the signal again)."""

    @contextlib.contextmanager
    def capture_signals(self):
        handlers = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig, frame):
        if not self.should_exit:
            log(f"stopping: no new requests, those in flight get {self.config.timeout_graceful_shutdown:g} s to finish")
        super().handle_exit(sig, frame)


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (port 0: a free one)."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        raise GptkitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def chat_template_of(opts: ServeOptions, ckpt: Path) -> dict:
    """--chat-template's (read when opts were made), else the checkpoint's (gptkit.json's "chat_template"), else the
    default."""
    from gptkit.checkpoint.folder import read_metadata

    if opts.template is not None:
        return opts.template
    own = read_metadata(ckpt).get("chat_template")
    return DEFAULT_TEMPLATE if own is None else check_template(own, f"{ckpt}'s gptkit.json")


def serve(opts: ServeOptions):
    """`gptkit serve`: listen first (a port in use is refused before the model loads), load the model, serve until
    SIGTERM or Ctrl-C, then drain (opts checked itself when it was made)."""
    from gptkit.checkpoint.folder import checkpoint_or_latest, quantization_of
    from gptkit.machine.runtime import pick_device, pick_dtype
    from gptkit.inference.sample import load_for_decoding

    ckpt = checkpoint_or_latest(opts.ckpt, "CKPT")
    template = chat_template_of(opts, ckpt)
    sock = listen(opts.host, opts.port)
    device = pick_device(opts.device)
    dtype = pick_dtype(opts.dtype, device)
    model = load_for_decoding(ckpt, device, dtype, opts.quantize, opts.compile, dynamic=True)
    engine = Engine(model, opts.max_batch)
    if opts.compile:
        engine.warm_up()
    path = Path(ckpt).resolve()
    name = path.name if path.is_dir() else path.stem
    info = ServerInfo(
        name, model.config.block_size, opts.api_key, int(opts.max_body_mb * 1e6), template, int(time.time())
    )
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"
    key = "API key required" if opts.api_key else "no API key"
    quantized = opts.quantize or quantization_of(ckpt)
    weights = f", {quantized} weights" if quantized else ""
    line = (
        f"serving {name} ({model.config.block_size} tokens of context) at {url} on {device}, "
        f"{str(dtype).removeprefix('torch.')}{weights}, {opts.max_batch} sequences "
        f"at once, {key} (Ctrl-C to stop)"
    )
    app = make_app(engine, info, ready=lambda: log(line))
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=opts.grace_period)
    Server(config).run(sockets=[sock])
