"""The chat page at / of gptkit serve, in a real browser: Debian's headless Chromium (apt packages chromium and
chromium-driver) driven by selenium, against make_app's application over a tiny model on a free loopback port."""

import asyncio
import json
import re
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from conftest import lively
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from gptkit.checkpoint.folder import save_checkpoint
from gptkit.inference.batching import Engine
from gptkit.inference.chat_template import DEFAULT_TEMPLATE
from gptkit.inference.decode import load_for_decoding
from gptkit.model.config import GPTConfig
from gptkit.serve.app import ServerInfo, listen, make_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAGE = Path(__file__).resolve().parents[1] / "gptkit" / "serve" / "static" / "chat.html"
KEY = "page-key"
INJECTION = '<img src=x onerror="window.__pwned=1">'
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,760",
]


def chromium(user_data_dir: Path) -> webdriver.Chrome:
    """Debian's Chromium, headless, with a fresh profile in user_data_dir; selenium is given both binaries, so its
    driver manager never runs (nothing is downloaded)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS + [f"--user-data-dir={user_data_dir}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


class ChatServer:
    """make_app's application under uvicorn in a thread, on a free loopback port, behind a recorder of the requests
    it answers (method, path, status, authorization header, JSON body). step_delay slows each decoding step; with
    scripted, chat requests are answered with those pieces of text, streamed, instead of the model's."""

    def __init__(self, ckpt: Path, api_key: str | None = None, scripted: list[str] | None = None):
        model = load_for_decoding(ckpt, torch.device("cpu"), torch.float32, None, False)
        self.engine = Engine(model, 4)
        self.step_delay, self.scripted, self.requests = 0.0, scripted, []
        step = self.engine.step

        def slow_step():
            time.sleep(self.step_delay)
            step()

        self.engine.step = slow_step
        info = ServerInfo("tiny-chat", model.config.block_size, api_key, 100_000, DEFAULT_TEMPLATE)
        sock = listen("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.recorder(make_app(self.engine, info)), log_config=None, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)

    def recorder(self, app):
        async def recording(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            messages = [await receive()]
            while messages[-1]["type"] == "http.request" and messages[-1].get("more_body"):
                messages.append(await receive())
            body = b"".join(message.get("body", b"") for message in messages)
            entry = {"method": scope["method"], "path": scope["path"], "body": json.loads(body) if body else None,
                     "authorization": dict(scope["headers"]).get(b"authorization", b"").decode()}  # fmt: skip
            self.requests.append(entry)

            async def replay():
                return messages.pop(0) if messages else await receive()

            async def sent(message):
                if message["type"] == "http.response.start":
                    entry["status"] = message["status"]
                await send(message)

            if self.scripted is not None and scope["path"] == "/v1/chat/completions":
                return await self.script(sent)
            await app(scope, replay, sent)

        return recording

    async def script(self, send):
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for piece in self.scripted:
            chunk = json.dumps({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
            await send({"type": "http.response.body", "body": f"data: {chunk}\n\n".encode(), "more_body": True})
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    def chats(self) -> list[dict]:
        """The chat requests' records, in order."""
        return [entry for entry in self.requests if entry["path"] == "/v1/chat/completions"]

    def stop(self):
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model with room for long replies: 512 tokens of context."""
    config = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=512, vocab_size=50257)
    return save_checkpoint(lively(config), tmp_path_factory.mktemp("chat-page") / "tiny")


@pytest.fixture(scope="module")
def server(checkpoint):
    running = ChatServer(checkpoint)
    yield running
    running.stop()


@pytest.fixture
def chat(server):
    """The served model with its records cleared and its steps at full speed."""
    server.requests.clear()
    server.step_delay = 0.0
    return server


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("needs Debian's Chromium and its driver at /usr/bin: apt-get install chromium chromium-driver")
    driver = chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


def wait(driver, condition: str, timeout: float = 30):
    """Wait until the JavaScript expression condition is true in the page."""
    WebDriverWait(driver, timeout, poll_frequency=0.02).until(lambda d: d.execute_script(f"return {condition}"))


def open_page(driver, server: ChatServer):
    driver.get(f"{server.url}/")
    wait(driver, "document.getElementById('model').textContent !== '' || document.getElementById('key-dialog').open")


def say(driver, *keys):
    """Type keys into the message box, then Enter."""
    driver.find_element(By.ID, "input").send_keys(*keys, Keys.ENTER)


def streaming(driver) -> bool:
    return driver.execute_script("return document.querySelector('.message.streaming') !== null")


def wait_for_reply(driver, timeout: float = 60):
    wait(driver, "document.querySelector('.message.streaming') === null && !document.getElementById('send').hidden",
         timeout)  # fmt: skip


def transcript(driver) -> list[tuple[str, str]]:
    """(role, text) of each message shown, the text as the page holds it."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll('.message')]"
        ".map(row => [row.classList.contains('user') ? 'user' : 'assistant', row.querySelector('.text').textContent])"
    )
    return [tuple(row) for row in rows]


def set_settings(driver, temperature: float, max_tokens: int, system: str = ""):
    driver.execute_script(
        "const t = document.getElementById('temperature'); t.value = arguments[0];t.dispatchEvent(new Event('input'));",
        temperature,
    )
    for element_id, value in (("max-tokens", str(max_tokens)), ("system", system)):
        element = driver.find_element(By.ID, element_id)
        element.clear()
        element.send_keys(value)


def visible(driver, element_id: str) -> bool:
    return driver.find_element(By.ID, element_id).is_displayed()


# --- the page itself --------------------------------------------------------------------------------------------------


def test_the_page_loads_nothing_from_elsewhere():
    """One file, nothing fetched from another origin: no http(s) URL anywhere in it, no src or href leaving the page
    but data: ones, no @import."""

    class Links(HTMLParser):
        def __init__(self):
            super().__init__()
            self.links = []

        def handle_starttag(self, tag, attrs):
            self.links += [value for name, value in attrs if name in ("src", "href", "action", "srcset")]

    text = PAGE.read_text(encoding="utf-8")
    parser = Links()
    parser.feed(text)
    assert all(link.startswith("data:") for link in parser.links), parser.links
    assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(", text, re.IGNORECASE)
    assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "document.write" not in text


# --- in the browser ---------------------------------------------------------------------------------------------------


def test_two_turns_the_second_carrying_the_first(browser, chat):
    """Two turns with a system prompt; Shift+Enter breaks a line, Enter sends. The second request carries the whole
    first turn, the reply as the page shows it, which is what the server answers whole for the same request."""
    open_page(browser, chat)
    assert browser.find_element(By.ID, "model").text == "tiny-chat"
    set_settings(browser, temperature=0, max_tokens=24, system="Answer briefly.")
    say(browser, "first line", Keys.SHIFT, Keys.ENTER, Keys.NULL, "second line")
    wait_for_reply(browser)
    say(browser, "And then?")
    wait_for_reply(browser)

    shown = transcript(browser)
    assert [role for role, _ in shown] == ["user", "assistant", "user", "assistant"]
    assert shown[0][1] == "first line\nsecond line" and shown[2][1] == "And then?"
    first, second = (entry["body"] for entry in chat.chats())
    system = {"role": "system", "content": "Answer briefly."}
    assert first == {"messages": [system, {"role": "user", "content": "first line\nsecond line"}], "stream": True,
                     "temperature": 0, "max_tokens": 24}  # fmt: skip
    assert second["messages"] == [
        system,
        {"role": "user", "content": "first line\nsecond line"},
        {"role": "assistant", "content": shown[1][1]},
        {"role": "user", "content": "And then?"},
    ]
    for body, (_, reply) in ((first, shown[1]), (second, shown[3])):
        whole = httpx.post(f"{chat.url}/v1/chat/completions", json={**body, "stream": False}, timeout=60).json()
        assert reply == whole["choices"][0]["message"]["content"] != ""


def test_a_reply_streams_token_by_token(browser, chat):
    """The reply's text grows on the page while the server is still decoding it."""
    open_page(browser, chat)
    set_settings(browser, temperature=0, max_tokens=40)
    chat.step_delay = 0.05
    say(browser, "Tell me a story")
    lengths = []
    while streaming(browser) or not lengths:
        lengths.append(len(transcript(browser)[-1][1]) if len(transcript(browser)) == 2 else 0)
        time.sleep(0.05)
    wait_for_reply(browser)
    final = len(transcript(browser)[-1][1])
    partial = {n for n in lengths if 0 < n < final}
    assert len(partial) >= 2, (lengths, final)


def test_stop_keeps_the_partial_reply_and_the_page_goes_on(browser, chat):
    """Stop ends a long reply early: the text so far stays, marked stopped, and is the assistant's turn of the next
    request, which is answered."""
    open_page(browser, chat)
    set_settings(browser, temperature=0, max_tokens=400)
    chat.step_delay = 0.05  # 400 tokens: 20 s
    say(browser, "Go on and on")
    wait(browser, "document.querySelector('.message.assistant .text').textContent.length > 10")
    started = time.monotonic()
    browser.find_element(By.ID, "stop").click()
    wait_for_reply(browser, timeout=5)
    assert time.monotonic() - started < 5
    partial = transcript(browser)[-1][1]
    time.sleep(0.5)
    assert transcript(browser)[-1][1] == partial != ""
    assert browser.execute_script("return document.querySelector('.message.assistant').classList.contains('stopped')")
    assert not visible(browser, "error")

    chat.step_delay = 0.0
    set_settings(browser, temperature=0, max_tokens=8)
    say(browser, "Shorter, please")
    wait_for_reply(browser)
    shown = transcript(browser)
    assert len(shown) == 4 and shown[3][1] != ""
    assert chat.chats()[-1]["body"]["messages"][1] == {"role": "assistant", "content": partial}


def test_new_chat_starts_over(browser, chat):
    open_page(browser, chat)
    set_settings(browser, temperature=0, max_tokens=8)
    say(browser, "Hello")
    wait_for_reply(browser)
    assert len(transcript(browser)) == 2 and not visible(browser, "empty")
    browser.find_element(By.ID, "new-chat").click()
    assert transcript(browser) == [] and visible(browser, "empty")
    say(browser, "Hello again")
    wait_for_reply(browser)
    assert chat.chats()[-1]["body"]["messages"] == [{"role": "user", "content": "Hello again"}]


def test_a_refused_request_is_one_line_and_the_message_goes_back(browser, chat):
    """A request the server refuses (max tokens beyond the context): its message, on one line; the text goes back
    into the box and the conversation is as before."""
    open_page(browser, chat)
    set_settings(browser, temperature=0, max_tokens=100_000)
    say(browser, "Too long")
    wait(browser, "!document.getElementById('error').hidden")
    error = browser.find_element(By.ID, "error")
    assert "exceed the model's context of 512 tokens" in error.get_attribute("textContent")
    lines = "const r = document.createRange(); r.selectNodeContents(arguments[0]); return r.getClientRects().length"
    assert browser.execute_script(lines, error) == 1
    assert transcript(browser) == [] and browser.find_element(By.ID, "input").get_attribute("value") == "Too long"


def test_the_users_text_is_text_never_html(browser, chat):
    open_page(browser, chat)
    set_settings(browser, temperature=0, max_tokens=8)
    say(browser, INJECTION)
    wait_for_reply(browser)
    time.sleep(0.3)  # an <img> that failed to load would have run its onerror by now
    assert browser.execute_script("return window.__pwned === undefined")
    assert browser.execute_script("return document.querySelectorAll('.message .text *').length") == 0
    assert transcript(browser)[0] == ("user", INJECTION)


def test_the_models_text_is_text_never_html(browser, checkpoint):
    """A reply holding markup, cut mid-tag across chunks, shows as the characters it is."""
    pieces = [
        "Here: <im",
        'g src=x onerror="window.__pwned',
        '=2"> and <b>bold</b> &amp; <script>window.__pwned=3</',
        "script>",
    ]
    scripted = ChatServer(checkpoint, scripted=pieces)
    try:
        open_page(browser, scripted)
        say(browser, "Show me some HTML")
        wait_for_reply(browser)
        time.sleep(0.3)
        assert browser.execute_script("return window.__pwned === undefined")
        assert browser.execute_script("return document.querySelectorAll('.message .text *').length") == 0
        assert transcript(browser)[1] == ("assistant", "".join(pieces))
    finally:
        scripted.stop()


def test_the_page_asks_for_the_api_key_and_keeps_it_in_memory_only(browser, checkpoint):
    """Served with an API key: the page itself opens without it; the first 401 asks for the key (cancelled: a line
    says it is needed; a wrong one: asked again), and with the right one the chat goes on. The key is in no storage."""
    guarded = ChatServer(checkpoint, api_key=KEY)
    try:
        open_page(browser, guarded)
        assert browser.find_element(By.ID, "key-dialog").is_displayed()
        browser.find_element(By.ID, "key-cancel").click()
        wait(browser, "!document.getElementById('error').hidden")
        assert "API key" in browser.find_element(By.ID, "error").text

        set_settings(browser, temperature=0, max_tokens=8)
        say(browser, "Hello")
        wait(browser, "document.getElementById('key-dialog').open")
        browser.find_element(By.ID, "key").send_keys("wrong-key", Keys.ENTER)
        wait(browser, "document.getElementById('key-reason').textContent.includes('refused')")
        browser.find_element(By.ID, "key").send_keys(KEY, Keys.ENTER)
        wait_for_reply(browser)
        shown = transcript(browser)
        assert len(shown) == 2 and shown[1][1] != "" and not visible(browser, "error")
        statuses = [(entry["authorization"], entry["status"]) for entry in guarded.chats()]
        assert statuses == [("", 401), ("Bearer wrong-key", 401), (f"Bearer {KEY}", 200)]
        stored = "return [localStorage.length, sessionStorage.length, document.cookie]"
        assert browser.execute_script(stored) == [0, 0, ""]
    finally:
        guarded.stop()
