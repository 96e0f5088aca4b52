"""gptkit serve: OpenAI's API over a tiny model, through the openai client and raw HTTP, on a free loopback port."""

import contextlib
import http.client
import importlib.resources
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import httpx
import openai
import pytest
import torch
import uvicorn
from conftest import assert_one_line_error, lively
from typer.testing import CliRunner

from gptkit.inference import batching
from gptkit.inference.batching import Engine
from gptkit.inference.chat_template import DEFAULT_TEMPLATE, format_prompt
from gptkit.checkpoint.folder import save_checkpoint
from gptkit.cli import app
from gptkit.model.config import GPTConfig
from gptkit.options import ServeOptions
from gptkit.inference.decode import load_for_decoding
from gptkit.serve import handlers
from gptkit.serve.app import ServerInfo, chat_template_of, in_passing_thread, listen, make_app
from gptkit.data.tokenizer import encode

KEY = "test-key"
PROMPTS = [
    "Hello, my name is",
    "The capital of France",
    "ROMEO:",
    "Once upon a time there was a",
    "1 2 3",
    "def main():",
    "In the beginning",
    "She said",
    "The quick brown fox jumps over the lazy dog and then",
    "Q: What is",
    "It was the best of times,",
    "Dear Sir,",
    "import torch",
    "A B C D E F",
    "Why",
    "To be, or not to be",
]


class ThreadedServer:
    """make_app's application under uvicorn in a thread, on a free loopback port; stop() ends it."""

    def __init__(self, ckpt, api_key: str | None = KEY, max_body: int = 100_000, max_batch: int = 16):
        model = load_for_decoding(ckpt, torch.device("cpu"), torch.float32, None, False)
        self.engine = Engine(model, max_batch)
        info = ServerInfo("tiny", model.config.block_size, api_key, max_body, DEFAULT_TEMPLATE)
        sock = listen("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(make_app(self.engine, info), log_config=None, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive()
        assert not self.engine.thread.is_alive()

    def client(self, api_key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=50257)
    return save_checkpoint(lively(config), tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def server(checkpoint):
    running = ThreadedServer(checkpoint)
    yield running
    running.stop()


@contextlib.contextmanager
def slow_steps(engine: Engine):
    """Each decoding step takes at least 20 ms: requests sent together overlap in the batch."""
    step = engine.step

    def slow():
        time.sleep(0.02)
        step()

    engine.step, engine.peak_rows = slow, 0
    try:
        yield
    finally:
        del engine.step


def complete(client, prompt, **settings):
    settings = {"max_tokens": 20, "temperature": 0, **settings}
    return client.completions.create(model="tiny", prompt=prompt, **settings)


def in_parallel(fn, args: list) -> list:
    with ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(fn, args))


# --- the batch -------------------------------------------------------------------------------------------------------


def test_each_row_of_the_cache_is_a_sequence_of_its_own(tiny_model):
    """Prompts of different lengths prefilled into rows of one cache, then one step with a position per row: each
    row's logits are those of its own sequence run alone from scratch."""
    from gptkit.inference.decode import decode_step, prefill
    from gptkit.model.kv_cache import KVCache

    sequences = [torch.randint(0, 50257, (n,), generator=torch.Generator().manual_seed(n)) for n in (3, 9, 5, 12)]
    with torch.inference_mode():
        cache = KVCache.for_model(tiny_model, len(sequences), 16)
        for row, tokens in enumerate(sequences):
            prefill(tiny_model, tokens[None, :-1], cache.view(slice(row, row + 1)))
        positions = torch.tensor([len(tokens) - 1 for tokens in sequences])
        last = torch.stack([tokens[-1:] for tokens in sequences])
        batch = cache.view(slice(0, len(sequences)), int(positions.max()) + 1)
        logits = decode_step(tiny_model, last, positions, batch)
        for row, tokens in enumerate(sequences):
            torch.testing.assert_close(logits[row], tiny_model(tokens[None])[0][0, -1], atol=1e-5, rtol=0)


# --- the OpenAI API --------------------------------------------------------------------------------------------------


def test_greedy_completions_plain_and_streamed_match_gptkit_sample(server, checkpoint):
    client = server.client()
    for prompt in PROMPTS[:3]:
        args = ["sample", prompt, "--ckpt", str(checkpoint), "--temperature", "0", "--max-new-tokens", "24",
                "--dtype", "float32", "--device", "cpu"]  # fmt: skip
        sampled = CliRunner().invoke(app, args)
        assert sampled.exit_code == 0, sampled.output
        completion = complete(client, prompt, max_tokens=24)
        assert prompt + completion.choices[0].text + "\n" == sampled.stdout
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage.completion_tokens == 24 and completion.usage.prompt_tokens == len(encode(prompt))
        chunks = list(complete(client, prompt, max_tokens=24, stream=True))
        assert len(chunks) > 10  # a chunk a token or so, not the text at the end
        assert "".join(chunk.choices[0].text for chunk in chunks) == completion.choices[0].text
        assert [chunk.choices[0].finish_reason for chunk in chunks][-1] == "length"


def test_sixteen_concurrent_greedy_requests_each_equal_their_solo_result(server):
    client = server.client()
    lengths = [20 + 3 * (i % 8) for i in range(16)]  # rows leave at different steps, others move into their place
    solo = [complete(client, p, max_tokens=n, logprobs=2) for p, n in zip(PROMPTS, lengths)]
    margins = [top[0] - top[1] for c in solo for top in (sorted(t.values(), reverse=True) for t in
               c.choices[0].logprobs.top_logprobs)]  # fmt: skip
    # Batched and solo products differ in float32's last bits (about 1e-6 here): greedy tokens agree when each one
    # wins by far more than that, as this model's do.
    assert min(margins) > 1e-3
    with slow_steps(server.engine):
        together = in_parallel(lambda pn: complete(client, pn[0], max_tokens=pn[1]), list(zip(PROMPTS, lengths)))
    assert server.engine.peak_rows == 16
    assert [c.choices[0].text for c in together] == [c.choices[0].text for c in solo]


def test_sixteen_concurrent_seeded_requests_each_equal_their_solo_result(server):
    client = server.client()
    settings = [dict(temperature=0.5 + i / 16, top_p=0.95 if i % 2 else None, seed=i, max_tokens=20) for i in range(16)]
    settings[3]["extra_body"] = {"top_k": 5}
    solo = [complete(client, p, **s).choices[0].text for p, s in zip(PROMPTS, settings)]
    with slow_steps(server.engine):
        together = in_parallel(
            lambda ps: complete(client, ps[0], **ps[1]).choices[0].text, list(zip(PROMPTS, settings))
        )
    assert server.engine.peak_rows == 16
    assert together == solo
    assert len(set(solo)) == 16
    # n choices: choice i draws with seed + i, so the first is the request with n=1
    three = complete(client, PROMPTS[0], n=3, **settings[0])
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert three.choices[0].text == solo[0] and len({c.text for c in three.choices}) == 3


def test_several_prompts_and_choices(server):
    client = server.client()
    both = complete(client, PROMPTS[:2], n=2, max_tokens=8)
    solo = [complete(client, p, max_tokens=8).choices[0].text for p in PROMPTS[:2]]
    assert [c.text for c in both.choices] == [solo[0], solo[0], solo[1], solo[1]]
    assert both.usage.prompt_tokens == sum(len(encode(p)) for p in PROMPTS[:2])
    assert both.usage.completion_tokens == 32
    tokens = complete(client, encode(PROMPTS[0]), max_tokens=8)  # a prompt of tokens
    assert tokens.choices[0].text == solo[0]


def test_stop_texts_end_the_text_before_them(server):
    client = server.client()
    full = complete(client, PROMPTS[1], max_tokens=30).choices[0].text
    stop = full[10:14]
    cut = complete(client, PROMPTS[1], max_tokens=30, stop=[stop, "never appears"])
    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = complete(client, PROMPTS[1], max_tokens=30, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


def test_echo_and_logprobs(server):
    client = server.client()
    prompt = PROMPTS[0]
    assert complete(client, "Hi", max_tokens=1, echo=True, logprobs=1).choices[0].logprobs.token_logprobs[0] is None
    scored = complete(client, prompt, max_tokens=0, echo=True, logprobs=3).choices[0]  # scoring a text
    assert scored.text == prompt and scored.finish_reason == "length"
    assert scored.logprobs.token_logprobs[0] is None and len(scored.logprobs.tokens) == len(encode(prompt))
    assert all(lp < 0 for lp in scored.logprobs.token_logprobs[1:])
    assert "".join(scored.logprobs.tokens) == prompt and scored.logprobs.text_offset[0] == 0
    made = complete(client, prompt, max_tokens=5, logprobs=0).choices[0]
    assert made.logprobs.text_offset[0] == len(prompt) and len(made.logprobs.token_logprobs) == 5
    assert "".join(made.logprobs.tokens) == made.text
    echoed = complete(client, prompt, max_tokens=5, echo=True, stream=True)
    assert "".join(c.choices[0].text for c in echoed) == prompt + made.text


def test_chat_renders_the_messages_with_the_template(server):
    client = server.client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    assert format_prompt(DEFAULT_TEMPLATE, [(m["role"], m["content"]) for m in messages]) == (
        "Be brief.\n\nUser: Hi there\nAssistant:"
    )
    prompt = "Be brief.\n\nUser: Hi there\nAssistant:"
    same = complete(client, prompt, max_tokens=12, stop=["\nUser:"]).choices[0]
    assert reply.choices[0].message.content == same.text.lstrip()
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].finish_reason == same.finish_reason
    assert reply.usage.prompt_tokens == len(encode(prompt))
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == reply.usage.total_tokens
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}]
    logprobs = client.chat.completions.create(model="tiny", messages=[messages[0], *parts], max_tokens=12,
                                              temperature=0, logprobs=True, top_logprobs=2)  # fmt: skip
    assert logprobs.choices[0].message.content == reply.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 for t in logprobs.choices[0].logprobs.content)


def test_chat_replies_end_at_the_templates_stop_texts(server):
    """The template's stop texts end a chat reply as a request's own do: a word from the middle of a reply, made the
    template's stop text, cuts the same reply before it, whole or streamed."""
    client = server.client()
    messages = [{"role": "user", "content": "Tell me more"}]
    settings = {"model": "tiny", "messages": messages, "max_tokens": 16, "temperature": 0}
    whole = client.chat.completions.create(**settings).choices[0].message.content
    stop = whole.split()[len(whole.split()) // 2]
    assert whole.index(stop) > 0
    state = server.server.config.app.state  # starlette's State: monkeypatch's undo deletes the attribute instead
    state.chat_template = {**DEFAULT_TEMPLATE, "stop": [stop]}
    try:
        reply = client.chat.completions.create(**settings).choices[0]
        assert reply.message.content == whole[: whole.index(stop)] and reply.finish_reason == "stop"
        chunks = list(client.chat.completions.create(**settings, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply.message.content
    finally:
        state.chat_template = DEFAULT_TEMPLATE


def test_chat_template_from_the_checkpoint_or_a_file(tmp_path, checkpoint):
    options = ServeOptions(ckpt=checkpoint)
    assert chat_template_of(options, checkpoint) == DEFAULT_TEMPLATE
    own = tmp_path / "own"
    own.mkdir()
    for name in ("model.safetensors", "config.json"):
        (own / name).symlink_to(checkpoint / name)
    own_template = {"user": "Q: {content}\n", "assistant": "A: {content}"}  # replies start with "A:"
    (own / "gptkit.json").write_text(json.dumps({"chat_template": own_template}))
    template = chat_template_of(ServeOptions(ckpt=own), own)
    assert format_prompt(template, [("user", "2+2?")]) == "Q: 2+2?\nA:"
    file = tmp_path / "template.json"
    file.write_text(json.dumps({"user": "<{content}>", "stop": ["<"]}))
    options = ServeOptions(ckpt=own, chat_template=file)
    file.unlink()  # read once, when the options were made
    template = chat_template_of(options, own)
    assert format_prompt(template, [("user", "hi")]) == "<hi>Assistant:" and template["stop"] == ["<"]


def test_models_and_health(server):
    assert [m.id for m in server.client().models.list()] == ["tiny"]
    assert server.client().models.retrieve("tiny").id == "tiny"
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}  # no key needed


def test_the_chat_page_is_served_without_the_key(server, monkeypatch, tmp_path):
    page = importlib.resources.files("gptkit.serve") / "static" / "chat.html"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = httpx.get(f"{server.url}/", headers=headers)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert response.text == page.read_text(encoding="utf-8")
    monkeypatch.setattr(handlers, "CHAT_PAGE", tmp_path / "chat.html")  # an install without the page
    response = httpx.get(f"{server.url}/")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


# --- security and faults ---------------------------------------------------------------------------------------------


KEYED_ROUTES = [
    ("get", "/v1/models", None),
    ("get", "/v1/models/tiny", None),
    ("post", "/v1/completions", {"prompt": "Hi", "max_tokens": 2}),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
]
NEAR_MISSES = {
    "no key": {},
    "a prefix of the key": {"Authorization": f"Bearer {KEY[:-1]}"},
    "the key's first character": {"Authorization": f"Bearer {KEY[0]}"},
    "the key with a character added": {"Authorization": f"Bearer {KEY}x"},
    "the key after a character": {"Authorization": f"Bearer x{KEY}"},
    "the key twice": {"Authorization": f"Bearer {KEY}{KEY}"},
    "the key in capitals": {"Authorization": f"Bearer {KEY.upper()}"},
    "another key as long": {"Authorization": f"Bearer {'x' * len(KEY)}"},
    "an empty bearer token": {"Authorization": "Bearer "},
    "Bearer alone": {"Authorization": "Bearer"},
    "two spaces before the key": {"Authorization": f"Bearer  {KEY}"},
    "the key without a scheme": {"Authorization": KEY},
    "the key under another scheme": {"Authorization": f"Basic {KEY}"},
    "the scheme run into the key": {"Authorization": f"Bearer{KEY}"},
    "the key in X-API-Key": {"X-API-Key": KEY},
    "the key in api-key": {"api-key": KEY},
}


class Answer(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: dict


def request(server, method: str, path: str, body, headers: dict) -> Answer:
    """The answer to a request sent with http.client, which sends header values as given ("Bearer " too)."""
    connection = http.client.HTTPConnection(*server.url.removeprefix("http://").split(":"), timeout=60)
    content = None if body is None else json.dumps(body)
    connection.request(method.upper(), path, body=content, headers={"Content-Type": "application/json", **headers})
    response = connection.getresponse()
    answer = Answer(response.status, response.headers, json.loads(response.read()))
    connection.close()
    return answer


@pytest.mark.parametrize("headers", NEAR_MISSES.values(), ids=NEAR_MISSES.keys())
def test_a_near_miss_of_the_api_key_is_refused_on_every_route(server, headers):
    for method, path, body in KEYED_ROUTES:
        response = request(server, method, path, body, headers)
        assert response.status == 401, f"{method} {path}: {response.body}"
        assert response.body["error"]["code"] == "invalid_api_key"
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_the_api_key_is_enforced(server):
    with pytest.raises(openai.AuthenticationError):
        complete(server.client("wrong-key"), "Hi")
    for method, path, body in KEYED_ROUTES:
        for scheme in ("Bearer", "bearer", "BEARER"):  # a scheme is read in any case
            response = request(server, method, path, body, {"Authorization": f"{scheme} {KEY}"})
            assert response.status == 200, f"{method} {path}: {response.body}"
    for headers in ({}, {"Authorization": f"Bearer {KEY}"}, {"Authorization": "Bearer wrong"}):  # no key needed
        assert request(server, "get", "/health", None, headers).body == {"status": "ok"}


def test_without_an_api_key_every_route_is_open(checkpoint):
    open_server = ThreadedServer(checkpoint, api_key=None, max_batch=2)
    try:
        for method, path, body in KEYED_ROUTES:
            assert request(open_server, method, path, body, {}).status == 200
            assert request(open_server, method, path, body, {"Authorization": "Bearer any"}).status == 200
    finally:
        open_server.stop()


LONG = " hello" * 70  # 70 tokens: more than the context of 64
BAD_REQUESTS = [
    ("post", "/v1/completions", b'{"prompt": "Hi", "max_tokens": ', 400, "not valid JSON"),
    ("post", "/v1/completions", {"prompt": "Hi", "max_tokens": "many"}, 400, "max_tokens"),
    ("post", "/v1/completions", {"max_tokens": 5}, 400, "prompt"),
    ("post", "/v1/completions", {"prompt": {"text": "Hi"}}, 400, "prompt"),
    ("post", "/v1/completions", {"prompt": "Hi", "temperature": -1}, 400, "temperature"),
    ("post", "/v1/completions", {"prompt": "Hi", "n": 0}, 400, "n"),
    ("post", "/v1/completions", {"prompt": "Hi", "n": 129}, 400, "at most 128 choices"),
    ("post", "/v1/completions", {"prompt": ["Hi"] * 65, "n": 2}, 400, "at most 128 choices"),
    ("post", "/v1/completions", {"prompt": LONG}, 400, "more than the model's context of 64"),
    ("post", "/v1/completions", {"prompt": "Hi", "max_tokens": 64}, 400, "ask for at most 63"),
    ("post", "/v1/completions", {"prompt": [50257]}, 400, "tokens are between 0 and 50256"),
    ("post", "/v1/completions", {"prompt": "Hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4 stop texts"),
    ("post", "/v1/completions", {"prompt": "Hi", "presence_penalty": 1}, 400, "presence_penalty is not supported"),
    ("post", "/v1/completions", {"prompt": "Hi", "logprobs": 21}, 400, "logprobs"),
    ("post", "/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, 400, "not one of"),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}]}, 400, "tokens long, more than"),
    (
        "post",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        400,
        "only text parts",
    ),  # fmt: skip
    ("post", "/v1/completions", {"prompt": "x" * 200_000}, 413, "over the limit of 100,000 bytes"),
    ("get", "/v1/nowhere", None, 404, "no such endpoint: GET /v1/nowhere"),
    ("get", "/v1/completions", None, 405, "GET is not allowed"),
    ("get", "/v1/models/gpt-4", None, 404, "not served here"),
]


@pytest.mark.parametrize("method, path, body, status, message", BAD_REQUESTS, ids=[c[-1] for c in BAD_REQUESTS])
def test_bad_requests_get_an_openai_error_and_the_server_goes_on(server, method, path, body, status, message):
    content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    response = httpx.request(method, f"{server.url}{path}", content=content, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and message in error["message"]
    assert error["type"] == "invalid_request_error"
    assert complete(server.client(), "Hi", max_tokens=2).choices[0].finish_reason == "length"


def test_a_body_over_the_limit_without_its_length_is_refused(server):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"x" * 10_000
        yield b'"}'

    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    response = httpx.post(f"{server.url}/v1/completions", content=chunks(), headers=headers)  # chunked
    assert response.status_code == 413 and "over the limit" in response.json()["error"]["message"]


def test_a_failure_fails_its_request_alone(server, monkeypatch):
    prefill = batching.prefill
    marker = encode(" boom")[0]

    def failing(model, tokens, cache):
        if marker in tokens[0].tolist():
            raise RuntimeError("the prefill broke")
        return prefill(model, tokens, cache)

    monkeypatch.setattr(batching, "prefill", failing)
    client = server.client()
    with pytest.raises(openai.InternalServerError, match="the prefill broke"):
        complete(client, "It goes boom")
    with pytest.raises(openai.APIError, match="the prefill broke"):
        list(complete(client, "It goes boom", stream=True))
    fine, broken = in_parallel(lambda p: httpx.post(f"{server.url}/v1/completions", json={"prompt": p},
                                                    headers={"Authorization": f"Bearer {KEY}"}),
                               ["It goes on", "It goes boom"])  # fmt: skip
    assert fine.status_code == 200 and broken.status_code == 500
    assert broken.json()["error"]["type"] == "server_error"
    # a bug in the endpoint itself
    monkeypatch.setattr("gptkit.serve.handlers.format_prompt", lambda template, messages: 1 / 0)
    with pytest.raises(openai.InternalServerError, match="ZeroDivisionError"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}])
    assert complete(client, "Hi", max_tokens=2).choices[0].finish_reason == "length"


def test_a_client_that_disconnects_frees_its_row(server):
    body = {"prompt": "Hi", "max_tokens": 60, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with slow_steps(server.engine):
        steps = server.engine.steps
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=headers) as response:
            assert next(response.iter_lines()).startswith("data: {") and server.engine.rows
        deadline = time.monotonic() + 5
        while server.engine.rows:
            assert time.monotonic() < deadline, "the row was not freed"
            time.sleep(0.01)
        assert server.engine.steps - steps < 30  # of the 60 steps asked for
    assert complete(server.client(), "Hi", max_tokens=2).choices[0].finish_reason == "length"


def test_a_client_that_stops_waiting_for_a_whole_answer_frees_its_row(server):
    body = {"prompt": "Hi", "max_tokens": 60, "temperature": 0}
    with slow_steps(server.engine):
        steps = server.engine.steps
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{server.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=0.2
            )
        deadline = time.monotonic() + 5
        while server.engine.rows or server.engine.steps == steps:
            assert time.monotonic() < deadline, "the row was not freed"
            time.sleep(0.01)
        assert server.engine.steps - steps < 50  # of the 60 steps asked for


# --- the command -----------------------------------------------------------------------------------------------------


# Runs gptkit serve with arguments (sys.argv[1], JSON); with fastapi and uvicorn missing if sys.argv[2] says so.
# Prints the exit code, stderr and the heavy modules imported.
SERVE_RUN = """
import io, json, sys
if sys.argv[2] == "without":
    sys.modules["fastapi"] = sys.modules["uvicorn"] = None
from gptkit.cli import main
sys.argv, sys.stderr = ["gptkit", "serve", *json.loads(sys.argv[1])], io.StringIO()
try:
    main()
    code = 0
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "fastapi", "uvicorn") if sys.modules.get(m) is not None)
print(json.dumps({"code": code, "stderr": sys.stderr.getvalue(), "heavy": heavy}), file=sys.__stdout__)
"""

BAD_OPTIONS = [
    (["--host", "0.0.0.0"], "--host 0.0.0.0 can be reached from other machines: give --api-key KEY"),
    (["--host", "192.168.1.5"], "or add --no-api-key"),
    (["--api-key", "k", "--no-api-key"], "--api-key and --no-api-key contradict each other"),
    (["--max-batch", "0"], "--max-batch must be at least 1"),
    (["--port", "70000"], "--port must be between 0 and 65535"),
    (["--max-body-mb", "0"], "--max-body-mb must be positive"),
    (["--dtype", "fp8"], "unknown dtype 'fp8'"),
    (["{root}/nowhere"], "checkpoint {root}/nowhere does not exist"),
    (["--chat-template", "{root}/nowhere.json"], "{root}/nowhere.json does not exist"),
]


@pytest.mark.parametrize("args, message", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_options_fail_before_importing_torch(tmp_path, args, message):
    args = [a.format(root=tmp_path) for a in args]
    run = subprocess.run([sys.executable, "-c", SERVE_RUN, json.dumps(args), "with"], capture_output=True, text=True)
    result = json.loads(run.stdout)
    assert result["heavy"] == []
    assert_one_line_error(subprocess.CompletedProcess(args, result["code"], "", result["stderr"]),
                          message.format(root=tmp_path))  # fmt: skip


def test_without_the_serve_extra_it_says_what_to_install(tmp_path):
    run = subprocess.run([sys.executable, "-c", SERVE_RUN, "[]", "without"], capture_output=True, text=True)
    result = json.loads(run.stdout)
    assert result["heavy"] == []
    assert_one_line_error(subprocess.CompletedProcess([], result["code"], "", result["stderr"]), "gptkit[serve]")


def test_a_port_in_use_is_one_line(checkpoint):
    taken = listen("127.0.0.1", 0)
    port = str(taken.getsockname()[1])
    result = CliRunner().invoke(app, ["serve", str(checkpoint), "--port", port, "--device", "cpu"])
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}")
    taken.close()


def test_the_model_is_loaded_in_a_thread_that_ends_with_it():
    """serve loads the model in a thread that ends (each thread that runs parallel torch work keeps a pool of OpenMP
    threads as long as it lives): its result, or its exception, comes back."""
    ran_in = []

    def work():
        ran_in.append(threading.current_thread())
        return 42

    def fails():
        raise ValueError("no such checkpoint")

    assert in_passing_thread(work) == 42
    assert ran_in[0] is not threading.current_thread() and not ran_in[0].is_alive()
    with pytest.raises(ValueError, match="no such checkpoint"):
        in_passing_thread(fails)


def test_help_imports_no_web_stack():
    code = (
        "import sys; from gptkit.cli import main; sys.argv = ['gptkit', '--help']\n"
        "try: main()\nexcept SystemExit: pass\n"
        "assert not {'fastapi', 'uvicorn', 'torch'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


class ServeProcess:
    """`gptkit serve CKPT --port 0 ...args` in a process of its own, and the URL from its start-up line."""

    def __init__(self, ckpt, *args):
        command = [sys.executable, "-m", "gptkit", "serve", str(ckpt), "--port", "0", "--device", "cpu",
                   "--dtype", "float32", *args]  # fmt: skip
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.process.stderr], daemon=True).start()
        first = self.lines.get(timeout=60)
        match = re.search(r" at (http://\S+)/v1 on cpu, float32", first)
        assert match, first
        self.url = match[1]

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture(scope="module")
def long_checkpoint(tmp_path_factory):
    """A tiny model with a context of 1024: one request can stream for a while."""
    config = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=1024, vocab_size=50257)
    return save_checkpoint(lively(config), tmp_path_factory.mktemp("serve") / "long")


def stream_in_thread(url: str, body: dict) -> tuple[threading.Event, list[str]]:
    """Stream a completion in a thread: (set at its first chunk, the lines received)."""
    first, lines = threading.Event(), []

    def read():
        try:
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
                for line in response.iter_lines():
                    lines.append(line)
                    first.set()
        except httpx.HTTPError as e:
            lines.append(f"error: {e}")
        first.set()

    threading.Thread(target=read, daemon=True).start()
    return first, lines


@pytest.mark.parametrize("grace", [None, "0.2"])
def test_sigterm_drains_the_requests_in_flight_and_exits_0(long_checkpoint, grace):
    server = ServeProcess(long_checkpoint, *(["--grace-period", grace] if grace else []))
    try:
        body = {"prompt": "Hi", "max_tokens": 500, "temperature": 0, "stream": True, "n": 2}
        first, lines = stream_in_thread(server.url, body)
        assert first.wait(30)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(120) == 0  # a hang guard: 2 x 500 tokens took over 30 s on 2 loaded cores
        assert "stopping: no new requests" in server.lines.get(timeout=5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health")
        chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        finished = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
        if grace is None:  # finished in full
            assert [line for line in lines if line][-1] == "data: [DONE]" and finished == ["length", "length"]
        else:  # cancelled after the grace period
            assert "data: [DONE]" not in lines and not finished
    finally:
        server.stop()


def test_the_command_serves_with_a_key_from_the_environment(long_checkpoint, monkeypatch):
    monkeypatch.setenv("GPTKIT_API_KEY", "from-env")
    server = ServeProcess(long_checkpoint, "--max-batch", "2")
    try:
        assert httpx.get(f"{server.url}/v1/models").status_code == 401
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="from-env", max_retries=0)
        four = client.completions.create(model="long", prompt="Hi", n=4, max_tokens=5, temperature=0)
        assert len({c.text for c in four.choices}) == 1  # four greedy rows through a batch of 2
        server.process.send_signal(signal.SIGINT)  # Ctrl-C
        assert server.process.wait(30) == 0
    finally:
        server.stop()
