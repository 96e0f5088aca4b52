"""`gptkit serve`: OpenAI's HTTP API over a checkpoint (POST /v1/completions and /v1/chat/completions, GET /v1/models
and /health) and a chat page (GET /), streamed as server-sent events or answered whole, every request decoded in one
continuous batch (batching.Engine). FastAPI and uvicorn (gptkit[serve]). The request and answer shapes are in
protocol.py, the endpoints in handlers.py, the event stream in streaming.py.

make_app() is the application (the tests run it in a thread); serve() is the command: it listens, loads the model,
serves, and on SIGTERM or Ctrl-C stops accepting, finishes what is in flight (--grace-period) and exits 0.
"""

import asyncio
import contextlib
import hmac
import signal
import socket
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from gptkit.errors import GptkitError
from gptkit.inference.batching import Engine
from gptkit.inference.chat_template import DEFAULT_TEMPLATE, check_template
from gptkit.options import ServeOptions
from gptkit.serve import handlers
from gptkit.serve.handlers import ServerInfo
from gptkit.serve.jobs import Mailbox, log
from gptkit.serve.protocol import APIError, error_response

OPEN_PATHS = ("/", "/health")  # served without the API key: the chat page asks for the key itself


class Guard:
    """ASGI middleware: every request but the chat page and /health carries the API key (if one is set); no request
    body is longer than max_body bytes."""

    def __init__(self, app, api_key: str | None, max_body: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if scope["path"] not in OPEN_PATHS and not self.authorized(headers.get(b"authorization", b"")):
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

    def authorized(self, authorization: bytes) -> bool:
        """No key is set, or authorization is "Bearer KEY" (the scheme in any case, one space) with the whole token
        equal to the key, compared in constant time: a prefix of the key, the key and more, or no token is refused."""
        if self.api_key is None:
            return True
        scheme, _, token = authorization.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token, self.api_key.encode())

    def too_large_message(self) -> str:
        return f"the request body is over the limit of {self.max_body:,} bytes"

    def too_large(self):
        return error_response(413, self.too_large_message(), code="request_too_large")


# --- the app ---------------------------------------------------------------------------------------------------------


async def refused(request: Request, e: APIError):
    return error_response(e.status, e.message, e.param, e.code)


async def invalid(request: Request, e: RequestValidationError):
    error = e.errors()[0]
    if error["type"] == "json_invalid":
        return error_response(400, f"the body is not valid JSON: {error['msg']}", code="invalid_json")
    where = [str(part) for part in error["loc"] if part != "body"]
    param = ".".join(where) or None
    return error_response(400, f"{param or 'the body'}: {error['msg']}", param, "invalid_value")


async def http_error(request: Request, e: HTTPException):
    if e.status_code == 404:
        return error_response(404, f"no such endpoint: {request.method} {request.url.path}", code="not_found")
    if e.status_code == 405:
        return error_response(405, f"{request.method} is not allowed on {request.url.path}", code="bad_method")
    return error_response(e.status_code, str(e.detail), code="request_too_large" if e.status_code == 413 else None)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    """Start the engine, say so (app.state.ready), serve, stop the engine."""
    app.state.mailbox = Mailbox(asyncio.get_running_loop())
    app.state.engine.start()
    if app.state.ready is not None:
        app.state.ready()
    yield
    app.state.engine.stop(timeout=10)


def make_app(engine: Engine, info: ServerInfo, ready=None) -> FastAPI:
    """The application serving engine's model; its lifespan starts and stops the engine and then calls ready()."""
    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.engine, app.state.info, app.state.ready = engine, info, ready
    app.state.chat_template = info.chat_template or DEFAULT_TEMPLATE
    app.add_middleware(Guard, api_key=info.api_key, max_body=info.max_body)
    app.add_exception_handler(APIError, refused)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.get("/")(handlers.chat_page)
    app.get("/health")(handlers.health)
    app.get("/v1/models")(handlers.models)
    app.get("/v1/models/{model_id:path}")(handlers.model)
    app.post("/v1/completions")(handlers.completions)
    app.post("/v1/chat/completions")(handlers.chat_completions)
    return app


# --- the command -----------------------------------------------------------------------------------------------------


class Server(uvicorn.Server):
    """uvicorn's server, which exits 0 once SIGTERM or Ctrl-C have drained it (uvicorn raises the signal again)."""

    @contextlib.contextmanager
    def capture_signals(self):
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
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


def in_passing_thread(work):
    """work()'s result (or its exception), computed in a thread that ends with it.

    The torch work of serving is to be the decoding thread's alone. OpenMP gives each thread that runs parallel work
    a pool of threads of its own, for good; with two pools in the process there are more of its threads than cores,
    and they then sleep between parallel regions instead of spinning, which made a decoding step 1.6x slower on 2
    cores. A pool ends with its thread: so the model is loaded (and a compiled step warmed up) in a thread that ends,
    and the event loop's thread never runs parallel work."""
    outcome = []

    def run():
        try:
            outcome.append((work(), None))
        except BaseException as e:
            outcome.append((None, e))

    thread = threading.Thread(target=run, name="gptkit-loading", daemon=True)  # Ctrl-C while loading ends the process
    thread.start()
    thread.join()
    result, error = outcome[0]
    if error is not None:
        raise error
    return result


def serve(opts: ServeOptions):
    """`gptkit serve`: listen first (a port in use is refused before the model loads), load the model, serve until
    SIGTERM or Ctrl-C, then drain (opts checked itself when it was made)."""
    from gptkit.checkpoint.locate import checkpoint_or_latest, quantization_of
    from gptkit.inference.decode import load_for_decoding
    from gptkit.machine.runtime import pick_device, pick_dtype

    ckpt = checkpoint_or_latest(opts.ckpt, "CKPT")
    template = chat_template_of(opts, ckpt)
    sock = listen(opts.host, opts.port)
    device = pick_device(opts.device)
    dtype = pick_dtype(opts.dtype, device)

    def make_engine() -> Engine:
        model = load_for_decoding(ckpt, device, dtype, opts.quantize, opts.compile, dynamic=True)
        engine = Engine(model, opts.max_batch)
        if opts.compile:
            engine.warm_up()
        return engine

    engine = in_passing_thread(make_engine)
    model = engine.model
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
