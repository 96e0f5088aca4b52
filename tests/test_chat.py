"""Make it answer (issue 33): a tiny model fine-tuned on made-up facts answers them through `gptkit chat`, `gptkit
sample --chat`, the served API (OpenAI's client) and transformers' pipeline with the folder's own template; the loss
mask keeps the users' text out of what it learns; a run on conversations resumes exactly."""

import json
import socket
import subprocess
import sys
import time

import numpy as np
import openai
import pytest
import torch
from conftest import assert_one_line_error
from facts import FACTS, answer, fact_conversations, question, write_facts
from safetensors.torch import load_file

from gptkit.data.tokenizer import encode
from gptkit.inference.chat_template import DEFAULT_TEMPLATE, format_conversation, format_prompt

# a model small enough to learn six facts in seconds on a CPU: memorizing them takes it a few hundred steps at this lr
TINY = ["--model", "nano", "--block-size", "64", "--batch-size", "8", "--lr", "3e-3"]
QUIET = ["--eval-every", "0", "--save-every", "0", "--device", "cpu", "--dtype", "float32"]


def gptkit(*args, stdin: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gptkit", *map(str, args)], input=stdin, capture_output=True, text=True, timeout=timeout
    )


def train(data, out, *options) -> subprocess.CompletedProcess:
    ran = gptkit("train", data, *TINY, *QUIET, "--out", out, *options)
    assert ran.returncode == 0, ran.stderr
    return ran


@pytest.fixture(scope="module")
def facts_run(tmp_path_factory):
    """A run folder fine-tuned (from scratch, to keep it tiny) on the made-up facts as conversations."""
    folder = tmp_path_factory.mktemp("facts")
    train(write_facts(folder / "facts.jsonl"), folder / "run", "--steps", "200")
    return folder / "run"


@pytest.mark.slow  # trains the facts model (minutes on 2 cores)
def test_gptkit_chat_answers_the_facts_it_was_fine_tuned_on(facts_run):
    """Each line of standard input is a message; each reply one line, streamed from the run's recorded template."""
    lines = "".join(f"{question(country)}\n" for country, _ in FACTS)
    ran = gptkit("chat", facts_run, "--temperature", "0", "--device", "cpu", stdin=lines)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [answer(capital) for _, capital in FACTS]
    assert "records no chat template" not in ran.stderr
    assert json.loads((facts_run / "gptkit.json").read_text())["chat_template"] == DEFAULT_TEMPLATE


@pytest.mark.slow  # trains the facts model (minutes on 2 cores)
def test_sample_chat_answers_one_message(facts_run):
    country, capital = FACTS[2]
    ran = gptkit("sample", question(country), "--ckpt", facts_run, "--chat", "--temperature", "0", "--device", "cpu")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == answer(capital)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # trains the facts model (minutes on 2 cores)
def test_the_served_api_answers_through_openais_client(facts_run):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gptkit", "serve", str(facts_run), "--port", str(port), "--device", "cpu"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
        deadline = time.monotonic() + 120
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        for country, capital in FACTS:
            messages = [{"role": "user", "content": question(country)}]
            reply = client.chat.completions.create(model="run", messages=messages, temperature=0, max_tokens=20)
            assert reply.choices[0].message.content == answer(capital)
            assert reply.choices[0].finish_reason == "stop"  # it ended its turn with <|endoftext|> by itself
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.slow  # trains the facts model (minutes on 2 cores)
def test_transformers_pipeline_answers_with_the_folders_template(facts_run):
    from transformers import AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(facts_run)
    messages = [{"role": "user", "content": question(FACTS[0][0])}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == format_prompt(DEFAULT_TEMPLATE, [("user", messages[0]["content"])])
    chat = pipeline("text-generation", model=str(facts_run), device="cpu")
    for country, capital in FACTS:
        out = chat([{"role": "user", "content": question(country)}], max_new_tokens=20, do_sample=False)
        assert out[0]["generated_text"][-1] == {"role": "assistant", "content": " " + answer(capital)}


def user_and_reply_losses(run, conversations) -> tuple[float, float]:
    """The model's mean loss on the users' tokens and on the replies' tokens of conversations."""
    from gptkit.checkpoint.folder import load_checkpoint

    model = load_checkpoint(run, dtype=torch.float32).eval()
    losses = {True: [], False: []}
    for messages in conversations:
        pieces = format_conversation(DEFAULT_TEMPLATE, [(m["role"], m["content"]) for m in messages])
        ids, is_reply = [], []
        for text, reply in pieces:
            piece = encode(text)
            ids += piece
            is_reply += [reply] * len(piece)
        with torch.no_grad():
            logits, _ = model(torch.tensor([ids[:-1]]))
        nats = torch.nn.functional.cross_entropy(logits[0], torch.tensor(ids[1:]), reduction="none")
        for t, nat in enumerate(nats.tolist(), start=1):
            losses[is_reply[t]].append(nat)
    return float(np.mean(losses[False])), float(np.mean(losses[True]))


@pytest.mark.slow  # trains the facts model (minutes on 2 cores)
def test_the_mask_keeps_the_users_text_out_of_what_the_model_learns(facts_run, tmp_path):
    """Trained on conversations, the model learns the replies but not to continue the users' text; the same
    conversations trained as plain text teach it both. The questions differ only in the country, six ways: a model
    that learned them predicts nearly every other token, one that did not is left near its untrained loss."""
    text = tmp_path / "facts.txt"
    conversations = fact_conversations(8)
    text.write_text(
        "".join(
            "".join(t for t, _ in format_conversation(DEFAULT_TEMPLATE, [(m["role"], m["content"]) for m in c]))
            for c in conversations
        )
    )
    plain = tmp_path / "plain"
    train(text, plain, "--steps", "200", "--val-fraction", "0")
    masked_user, masked_reply = user_and_reply_losses(facts_run, conversations[: len(FACTS)])
    plain_user, _ = user_and_reply_losses(plain, conversations[: len(FACTS)])
    # A model that never learned a text scores it near ln(50257) = 10.8 nats a token; one that learned the questions
    # misses only which of six countries is asked about, ln 6 = 1.8 nats on one of their dozen tokens.
    assert masked_reply < 0.5  # the masked run learned the replies
    assert plain_user < 2.0  # the plain-text run learned the questions too
    assert masked_user > 5.0  # the masked run did not


@pytest.mark.slow  # three training runs in subprocesses
def test_a_run_on_conversations_resumes_exactly(tmp_path):
    """Six steps straight, or three and three more resumed, give the same weights (a constant learning rate, so
    that the schedule does not depend on --steps, which a resumed run may raise)."""
    data = write_facts(tmp_path / "facts.jsonl", repeats=4)
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    constant = ["--warmup-steps", "0", "--min-lr", "3e-3", "--save-every", "3"]
    train(data, straight, "--steps", "6", *constant)
    train(data, cut, "--steps", "3", *constant)
    train(data, cut, "--steps", "6", *constant, "--resume")
    a, b = load_file(straight / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    straight_records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens_trained"] for r in records] == [r["tokens_trained"] for r in straight_records]
    assert [r["loss"] for r in records] == [r["loss"] for r in straight_records]
    assert_one_line_error(gptkit("eval", straight), "fine-tuned on conversations")


def test_train_on_prompt_with_text_is_one_line(text, tmp_path):
    ran = gptkit("train", text, *TINY, *QUIET, "--steps", "1", "--out", tmp_path / "run", "--train-on-prompt")
    assert_one_line_error(ran, "--train-on-prompt is for conversations")
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_bad_conversation_file_is_one_line_naming_its_line(tmp_path):
    data = tmp_path / "bad.jsonl"
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    rows.append({"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "boo"}]})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ran = gptkit("train", data, *TINY, *QUIET, "--steps", "1", "--out", tmp_path / "run")
    assert_one_line_error(ran, f"{data}:2")
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_chat_on_a_base_model_says_once_that_it_uses_the_default_template(tiny_checkpoint):
    ran = gptkit("chat", tiny_checkpoint, "--max-new-tokens", "4", "--device", "cpu", stdin="Hello\nAgain\n/exit\nNo\n")
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr.count("records no chat template") == 1
    assert len(ran.stdout.splitlines()) == 2  # two replies; nothing after /exit


def test_chat_drops_the_oldest_turns_when_the_context_is_full(tiny_checkpoint):
    """The tiny checkpoint's context is 64 tokens: a few long messages outgrow it, which is said once."""
    long = "tell me about " + "the sea and the sky " * 4
    ran = gptkit("chat", tiny_checkpoint, "--max-new-tokens", "8", "--device", "cpu", stdin=f"{long}\n" * 4)
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr.count("outgrew the model's context") == 1
    assert len(ran.stdout.splitlines()) == 4
