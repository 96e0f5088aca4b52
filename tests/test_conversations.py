"""Conversation data: the three formats read, each bad input refused in one line naming file and line, and the
packing: whole conversations where they fit, padding masked, every reply token a target exactly once."""

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptkit.data.conversations import (
    best_fit,
    is_conversation_data,
    load_conversations,
    pack,
    read_conversations,
)
from gptkit.data.tokenizer import EOT_TOKEN
from gptkit.errors import GptkitError
from gptkit.inference.chat_template import DEFAULT_TEMPLATE, tokenize_conversation

HI = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!")]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def messages_row(messages):
    return {"messages": [{"role": role, "content": content} for role, content in messages]}


def sharegpt_row(messages):
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": names[role], "value": content} for role, content in messages]}


def made_up(n: int, seed: int = 0):
    """n conversations of varied lengths (1 to 3 turns), each text its own, no <|endoftext|> inside."""
    rng = random.Random(seed)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "owls", "sing"]
    conversations = []
    for i in range(n):
        messages = [("system", f"You are helper {i}.")] if i % 3 == 0 else []
        for turn in range(rng.randint(1, 3)):
            messages.append(("user", f"Q{i}.{turn}: " + " ".join(rng.choices(words, k=rng.randint(1, 12)))))
            messages.append(("assistant", f"A{i}.{turn}: " + " ".join(rng.choices(words, k=rng.randint(0, 20)))))
        conversations.append(messages)
    return conversations


def test_the_three_formats_and_a_folder(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [messages_row(HI), messages_row([("developer", "x"), ("assistant", "y")])])
    write_jsonl(tmp_path / "b.jsonl", [sharegpt_row(HI)])
    alpaca = [
        {"instruction": "Name a color.", "input": "", "output": "Blue."},
        {"instruction": "Add.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "output": "Hi."},
    ]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.json").write_text(json.dumps(alpaca, indent=2))
    write_jsonl(tmp_path / "d.jsonl", alpaca[:1])
    assert read_conversations(tmp_path) == [
        HI,
        [("developer", "x"), ("assistant", "y")],
        HI,
        [("user", "Name a color."), ("assistant", "Blue.")],
        [("user", "Name a color."), ("assistant", "Blue.")],
        [("user", "Add.\n\n2 and 3"), ("assistant", "5")],
        [("user", "Say hi."), ("assistant", "Hi.")],
    ]  # files sorted: a.jsonl, b.jsonl, d.jsonl, sub/c.json
    assert read_conversations(tmp_path / "b.jsonl") == [HI]


def test_which_data_holds_conversations(tmp_path):
    assert is_conversation_data(write_jsonl(tmp_path / "chat.jsonl", [messages_row(HI)]))
    assert is_conversation_data(write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "a", "output": "b"}]))
    assert not is_conversation_data(write_jsonl(tmp_path / "text.jsonl", [{"text": "Once upon a time"}]))
    (tmp_path / "plain.txt").write_text("Once upon a time")
    assert not is_conversation_data(tmp_path / "plain.txt")
    (tmp_path / "broken.jsonl").write_text("Once upon a time\n")
    assert not is_conversation_data(tmp_path / "broken.jsonl")  # the text loader says what is wrong
    (tmp_path / "texts").mkdir()
    write_jsonl(tmp_path / "texts" / "t.jsonl", [{"text": "a"}])
    assert not is_conversation_data(tmp_path / "texts")
    write_jsonl(tmp_path / "texts" / "u.jsonl", [sharegpt_row(HI)])
    assert is_conversation_data(tmp_path / "texts")
    (tmp_path / "array.json").write_text("[]")
    assert is_conversation_data(tmp_path / "array.json")
    assert not is_conversation_data(tmp_path / "missing.jsonl")  # the text loader says it does not exist


BAD = [  # (lines of a file, its name, the error after "file:line: ")
    (['{"text": "hi"}'], "t.jsonl", "1: not a conversation: a row is OpenAI's"),
    ([json.dumps(messages_row(HI)), json.dumps(sharegpt_row(HI))], "t.jsonl",
     "2: a ShareGPT row in a file of OpenAI messages rows (line 1): one format a file"),
    (['{"messages": [{"role": "tool", "content": "42"}, {"role": "assistant", "content": "ok"}]}'], "t.jsonl",
     '1: messages[0] has the unknown role "tool"'),
    (['{"conversations": [{"from": "bot", "value": "hi"}]}'], "t.jsonl", '1: conversations[0] has the unknown role "bot"'),
    (['{"conversations": [{"value": "hi"}]}'], "t.jsonl", "1: conversations[0] has the unknown role null"),
    (["", json.dumps(messages_row([("system", "s"), ("user", "u")]))], "t.jsonl",
     "2: a conversation with no assistant turn"),
    (['{"messages": []}'], "t.jsonl", "1: an empty conversation"),
    ([json.dumps(messages_row([*HI, ("user", "more?")]))], "t.jsonl",
     "1: the conversation ends with the user, not the assistant"),
    (['{"messages": [{"role": "assistant", "content": null}]}'], "t.jsonl", "1: messages[0]'s \"content\" must be a text"),
    (['{"messages": "hi"}'], "t.jsonl", '1: "messages" must be a list of messages'),
    (['{"instruction": "a", "output": 5}'], "t.jsonl", "1: an Alpaca record's instruction, input and output are texts"),
    (['{"messages": [', "]}"], "t.jsonl", "1: not valid JSON"),
    (["[", '  {"instruction": "a", "output": "b"},', '  {"instruction": "c"}', "]"], "t.json",
     "3: not a conversation"),
    (["[", '  {"instruction": "a", "output": "b"},', "  {oops}", "]"], "t.json", "3: not valid JSON"),
]  # fmt: skip


@pytest.mark.parametrize("lines, name, message", BAD, ids=[m.split(": ")[1][:30] for _, _, m in BAD])
def test_bad_input_is_one_line_naming_file_and_line(tmp_path, lines, name, message):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(GptkitError) as error:
        read_conversations(path)
    assert str(error.value).startswith(f"{path}:{message}") and "\n" not in str(error.value)


def test_bad_files_and_folders(tmp_path):
    (tmp_path / "object.json").write_text('{"messages": []}')
    with pytest.raises(GptkitError, match="object.json: a .json file of conversations holds an array of them"):
        read_conversations(tmp_path / "object.json")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(GptkitError, match="empty.jsonl holds no conversations"):
        read_conversations(tmp_path / "empty.jsonl")
    (tmp_path / "notes.txt").write_text("text")
    with pytest.raises(GptkitError, match=r"mixes text \(notes.txt\) with conversations"):
        read_conversations(tmp_path)
    with pytest.raises(GptkitError, match="does not exist"):
        read_conversations(tmp_path / "missing")


def test_best_fit():
    assert best_fit([5, 4, 3, 3, 2, 1], 8) == [[0, 2], [1, 3, 5], [4]]
    rng = random.Random(1)
    lengths = [rng.randint(1, 64) for _ in range(500)]
    bins = best_fit(lengths, 65)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 65 for b in bins)
    assert len(bins) <= 1.05 * sum(lengths) / 65 + 1


def test_packing_keeps_conversations_whole_and_counts_each_reply_token_once():
    conversations = made_up(300)
    examples = [tokenize_conversation(DEFAULT_TEMPLATE, messages) for messages in conversations]
    block_size = max(len(ids) for ids, _ in examples) + 7
    rows, truncated, left_out = pack(examples, block_size)
    assert (truncated, left_out) == (0, 0)
    assert rows.tokens.shape == (len(rows), block_size + 1) and rows.trained.shape == (len(rows), block_size)
    # each row is whole conversations, one after another, then padding that no target counts
    unplaced = sorted(tuple(ids.tolist()) for ids, _ in examples)
    lengths = sorted({len(ids) for ids in unplaced})
    for tokens, trained in zip(rows.tokens.tolist(), rows.trained):
        at = 0
        while found := [n for n in lengths if tuple(tokens[at : at + n]) in unplaced]:
            unplaced.remove(tuple(tokens[at : at + found[0]]))
            at += found[0]
        assert at > 0 and set(tokens[at:]) <= {EOT_TOKEN} and not trained[max(at - 1, 0) :].any()
    assert unplaced == []
    # the targets the loss counts are the replies' tokens, each once
    counted = [t for tokens, trained in zip(rows.tokens, rows.trained) for t in tokens[1:][trained]]
    replies = [t for ids, mask in examples for t in ids[mask]]
    assert sorted(counted) == sorted(replies) and rows.trained_tokens == len(replies)
    assert len(rows) <= 1.1 * sum(len(ids) for ids, _ in examples) / (block_size + 1) + 1  # little padding


def test_a_conversation_longer_than_a_row_is_cut_at_the_end():
    short = tokenize_conversation(DEFAULT_TEMPLATE, HI)
    long_reply = tokenize_conversation(DEFAULT_TEMPLATE, [("user", "Tell me."), ("assistant", "la " * 40)])
    long_prompt = tokenize_conversation(DEFAULT_TEMPLATE, [("user", "la " * 40), ("assistant", "ok")])
    rows, truncated, left_out = pack([short, long_reply, long_prompt], 16)
    assert (truncated, left_out, len(rows)) == (2, 1, 2)  # the long prompt's reply is past its row: left out
    assert rows.tokens[0].tolist() == long_reply[0][:17].tolist()
    assert (rows.trained[0] == long_reply[1][1:17]).all()
    assert rows.tokens[1, : len(short[0])].tolist() == short[0].tolist()


def test_a_conversation_of_exactly_a_row_is_whole_and_not_cut():
    ids, mask = tokenize_conversation(DEFAULT_TEMPLATE, HI)
    rows, truncated, left_out = pack([(ids, mask)], len(ids) - 1)  # a row holds block_size + 1 tokens
    assert (truncated, left_out, len(rows)) == (0, 0, 1) and rows.tokens[0].tolist() == ids.tolist()
    assert (rows.trained[0] == mask[1:]).all()
    rows, truncated, left_out = pack([(ids, mask)], len(ids) - 2)
    assert (truncated, left_out) == (1, 0) and rows.tokens[0].tolist() == ids[:-1].tolist()


def test_train_on_prompt_counts_every_token_but_padding(tmp_path):
    write_jsonl(tmp_path / "chat.jsonl", [messages_row(m) for m in made_up(20)])
    data = load_conversations(tmp_path / "chat.jsonl", 256, 0.0, train_on_prompt=True)
    assert data.truncated == 0
    lengths = [len(tokenize_conversation(DEFAULT_TEMPLATE, m)[0]) for m in made_up(20)]
    assert data.train.trained_tokens == sum(lengths) - len(data.train)  # each row's first token is no target


def test_split_batches_and_the_models_loss(tmp_path, tiny_model):
    conversations = made_up(50, seed=3)
    write_jsonl(tmp_path / "chat.jsonl", [messages_row(m) for m in conversations])
    data = load_conversations(tmp_path / "chat.jsonl", 48, 0.2)
    again = load_conversations(tmp_path / "chat.jsonl", 48, 0.2)
    assert (data.train.tokens == again.train.tokens).all() and (data.train.trained == again.train.trained).all()
    assert (data.conversations, data.val_conversations) == (40, 10) and data.digest == again.digest
    val_only = load_conversations(write_jsonl(tmp_path / "val.jsonl", [messages_row(m) for m in conversations[40:]]),
                                  48, 0.0)  # fmt: skip
    assert (val_only.train.tokens == data.val.tokens).all()  # the last 10 conversations, packed alike
    x, y = data.train.batch([2, 0])
    assert x.dtype == y.dtype == np.int64 and x.shape == y.shape == (2, 48)
    assert (x == data.train.tokens[[2, 0], :-1]).all()
    assert ((y == -1) == ~data.train.trained[[2, 0]]).all()
    assert (y[y != -1] == data.train.tokens[[2, 0], 1:][data.train.trained[[2, 0]]]).all()
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    _, loss = tiny_model(x, y)  # -1 targets ignored: the mean over the counted ones
    logits, _ = tiny_model(x)
    expected = F.cross_entropy(logits[y != -1], y[y != -1])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
