"""gptkit chat's turns without a trained model: the prompt within the context (the oldest turns dropped, the newest
message kept), a reply streamed up to <|endoftext|> or the template's stop text, and the command's loop (/reset, a
message too long for the context refused and forgotten)."""

import io
import sys

import pytest
import torch

import gptkit.inference.conversation as conversation_module
from gptkit.commands.chat import chat
from gptkit.data.tokenizer import EOT_TOKEN, encode
from gptkit.errors import GptkitError
from gptkit.inference.chat_template import DEFAULT_TEMPLATE, format_prompt
from gptkit.inference.conversation import Conversation, stream_reply
from gptkit.options import ChatOptions

TURNS = [("user", "question one"), ("assistant", "answer one"), ("user", "question two"), ("assistant", "answer two")]


def test_the_prompt_drops_the_oldest_turns_and_keeps_the_newest_message():
    conversation = Conversation(DEFAULT_TEMPLATE, "Be brief.")
    for role, text in TURNS:
        (conversation.ask if role == "user" else conversation.answer)(text)
    conversation.ask("question three")
    whole = encode(format_prompt(DEFAULT_TEMPLATE, conversation.messages()))
    assert conversation.prompt(len(whole) + 10, 10) == whole and conversation.dropped == 0  # it fits exactly

    tokens = conversation.prompt(len(whole) + 9, 10)  # one token short: the oldest turn goes
    assert conversation.dropped == 1 and conversation.turns == [*TURNS[2:], ("user", "question three")]
    assert tokens == encode(format_prompt(DEFAULT_TEMPLATE, [("system", "Be brief."), *conversation.turns]))

    last = encode(format_prompt(DEFAULT_TEMPLATE, [("system", "Be brief."), ("user", "question three")]))
    assert conversation.prompt(len(tokens), 1) == last and conversation.dropped == 2
    with pytest.raises(GptkitError, match="the message and the system prompt take"):
        conversation.prompt(len(last), 1)  # the newest message alone does not fit: never dropped
    assert conversation.turns == [("user", "question three")]


def test_a_message_too_long_for_the_context_leaves_the_conversation_as_it_was():
    conversation = Conversation(DEFAULT_TEMPLATE)
    for role, text in TURNS:
        (conversation.ask if role == "user" else conversation.answer)(text)
    conversation.ask("far too long " * 40)
    with pytest.raises(GptkitError, match="the message and the system prompt take"):
        conversation.prompt(64, 8)
    assert conversation.turns[:-1] == TURNS and conversation.dropped == 0  # the chat loop then takes the message back


@pytest.mark.parametrize(
    "drawn, max_new_tokens, reply",
    [
        ([" The capital is Quellmark.\nUser: and now"], 50, "The capital is Quellmark."),  # the template's stop text
        ([" Hello there.", EOT_TOKEN, " more"], 50, "Hello there."),
        ([" Line one\n", EOT_TOKEN], 50, "Line one\n"),  # held back as a stop text's start, released at the end
        (["  two spaces\n"], None, "two spaces\n"),  # max_new_tokens: all it drew, what was held back too
    ],
    ids=["stop text", "end of text", "end of text after held text", "max tokens"],
)
def test_a_reply_ends_at_the_end_of_text_or_a_stop_text_without_its_leading_space(
    tiny_model, monkeypatch, drawn, max_new_tokens, reply
):
    tokens = [t for piece in drawn for t in ([piece] if isinstance(piece, int) else encode(piece))]
    max_new_tokens = max_new_tokens or len(tokens)
    asked = []

    def generate(model, idx, max_new_tokens, sampling, stop_tokens=()):
        asked.append(max_new_tokens)
        yield from (torch.tensor([t]) for t in tokens[:max_new_tokens])

    monkeypatch.setattr(conversation_module, "generate", generate)
    assert "".join(stream_reply(tiny_model, [1, 2, 3], DEFAULT_TEMPLATE, None, max_new_tokens)) == reply
    assert asked == [min(max_new_tokens, 64 - 3)]  # the context's room after the prompt


def test_the_chat_loop_resets_and_forgets_a_message_too_long_for_the_context(tiny_checkpoint, monkeypatch, capsys):
    prompts = []

    def stream_reply(model, prompt, template, sampling, room):
        prompts.append((prompt, room))
        yield "Hi there."

    monkeypatch.setattr(conversation_module, "stream_reply", stream_reply)
    long = "word " * 70
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{long}\nHello\n/reset\nHello\nAgain\n"))
    chat(ChatOptions(ckpt=tiny_checkpoint, device="cpu", dtype="float32"))
    out, err = capsys.readouterr()
    assert out.splitlines() == ["Hi there."] * 3
    assert "a new conversation" in err and "the model's context holds 64" in err and "outgrew" not in err
    hello = encode(format_prompt(DEFAULT_TEMPLATE, [("user", "Hello")]))
    again = encode(format_prompt(DEFAULT_TEMPLATE, [("user", "Hello"), ("assistant", "Hi there."), ("user", "Again")]))
    assert prompts == [(hello, 32), (hello, 32), (again, 32)]  # a reply gets at most half the context
