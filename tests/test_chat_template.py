"""The chat template: the prompt and the training text agree, the loss mask counts the replies alone, and the Jinja
template in a checkpoint folder makes transformers write and tokenize a conversation as gptkit does."""

import json

import pytest
import torch

from gptkit.checkpoint.folder import save_checkpoint
from gptkit.checkpoint.tokenizer_files import write_tokenizer_files
from gptkit.data.tokenizer import EOT_TEXT, EOT_TOKEN, decode, encode
from gptkit.errors import GptkitError
from gptkit.inference.chat_template import (
    DEFAULT_TEMPLATE,
    check_template,
    format_conversation,
    format_prompt,
    jinja_template,
    tokenize_conversation,
)

pytestmark = pytest.mark.usefixtures("offline_hub")

# Each ends with the assistant: system or not, an empty system, many turns, unicode, braces, Jinja's own syntax,
# quotes, backslashes, newlines and <|endoftext|> in contents, replies that start with a space, newline or digit.
CONVERSATIONS = [
    [("user", "Hi"), ("assistant", "Hello!")],
    [("system", "Be brief."), ("user", "What is 2+2?"), ("assistant", "4")],
    [("system", ""), ("user", "Hi"), ("assistant", "Hello")],
    [("developer", "Answer in French."), ("user", "Thanks"), ("assistant", "De rien.")],
    [("user", "Count"), ("assistant", "1, 2"), ("user", "more"), ("assistant", " 3, 4")],
    [("user", "ok?"), ("assistant", "\nyes\n"), ("user", "and?"), ("assistant", "no")],
    [("user", "日本語で? Ελληνικά, café 🤖👍🏽"), ("assistant", "はい、🤖 ok")],
    [("user", "f(x) = {x: {y}} {{ not jinja }} {% if %} {# no #}"), ("assistant", "{content} {}}")],
    [("user", "a \"quote\", 'single', back\\slash \\n and\ttab\r\n"), ("assistant", "line one\n\nline two  ")],
    [("system", "multi\nline\n\nsystem"), ("user", "\n\nleading newlines"), ("assistant", "  two spaces")],
    [("user", f"an {EOT_TEXT} inside"), ("assistant", f"a reply with {EOT_TEXT} in it")],
    [("assistant", "I speak first."), ("user", "fine"), ("assistant", "!")],
    [("user", ""), ("assistant", "")],
]
CUSTOM = check_template(
    {"system": "<<SYS>> «{content}» \\ \"q\"\n", "user": "### Frage:\n{content}\n", "assistant": "### Antwort: {content}\n\n"},
    "custom",
)  # fmt: skip


def as_dicts(messages):
    return [{"role": role, "content": content} for role, content in messages]


def whole_text(template, messages) -> str:
    return "".join(text for text, _ in format_conversation(template, messages))


def assistant_turns(messages):
    return [i for i, (role, _) in enumerate(messages) if role == "assistant"]


def test_the_default_template():
    messages = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "And?")]
    text = "Be brief.\n\nUser: Hi\nAssistant: Hello!<|endoftext|>User: And?\nAssistant:"
    assert format_prompt(DEFAULT_TEMPLATE, messages) == text
    assert format_conversation(DEFAULT_TEMPLATE, messages[:3]) == [
        ("Be brief.\n\nUser: Hi\nAssistant:", False),
        (" Hello!<|endoftext|>", True),
    ]


@pytest.mark.parametrize("template", [DEFAULT_TEMPLATE, CUSTOM], ids=["default", "custom"])
def test_a_prompt_is_the_start_of_the_training_text_and_tokens(template):
    for messages in CONVERSATIONS:
        text = whole_text(template, messages)
        ids, trained = tokenize_conversation(template, messages)
        assert ids.tolist() == encode(text) and len(trained) == len(ids) and trained.dtype == bool
        for turn in assistant_turns(messages):
            prompt = format_prompt(template, messages[:turn])
            assert text.startswith(prompt)
            if template is DEFAULT_TEMPLATE:  # its prompts end where a token ends: the reply's first has its space
                assert ids[: len(encode(prompt))].tolist() == encode(prompt)


@pytest.mark.parametrize("template", [DEFAULT_TEMPLATE, CUSTOM], ids=["default", "custom"])
def test_the_mask_counts_each_reply_and_its_end_alone(template):
    for messages in CONVERSATIONS:
        ids, trained = tokenize_conversation(template, messages)
        replies = []
        for turn in assistant_turns(messages):
            whole = template["assistant"].replace("{content}", messages[turn][1])
            replies.append(whole[len(template["generation"]) :])
        assert decode(ids[trained]) == "".join(replies)
        if template is DEFAULT_TEMPLATE:  # each trained run is exactly what a prompt of the turn is answered with
            for turn, reply in zip(assistant_turns(messages), replies):
                start = len(encode(format_prompt(template, messages[:turn])))
                end = start + len(encode(reply))
                assert trained[start:end].all() and not trained[start - 1]
                assert ids[end - 1] == EOT_TOKEN and (end == len(ids) or not trained[end])
        assert not trained[0]
        all_ids, everything = tokenize_conversation(template, messages, train_on_prompt=True)
        assert (all_ids == ids).all() and everything.all()


def test_templates_refused_in_one_line():
    with pytest.raises(GptkitError, match="cannot render a user message"):
        check_template({"user": "User: no content"}, "file.json")
    with pytest.raises(GptkitError, match="cannot render a system message"):
        check_template({"system": None}, "file.json")
    with pytest.raises(GptkitError, match='"generation" must be the start of its "assistant"'):
        check_template({"generation": "A:"}, "file.json")
    with pytest.raises(GptkitError, match="some of the keys"):
        check_template({"tool": "{content}"}, "file.json")
    assert check_template({"assistant": "A: {content}\n"}, "file.json")["generation"] == "A:"
    assert check_template({"assistant": "A: {content}\n", "generation": "A"}, "file.json")["generation"] == "A"
    with pytest.raises(GptkitError, match="cannot render a message of role 'tool'"):
        format_prompt(DEFAULT_TEMPLATE, [("tool", "42")])
    with pytest.raises(GptkitError, match="cannot render a message of role 'tool'"):
        tokenize_conversation(DEFAULT_TEMPLATE, [("tool", "42"), ("assistant", "ok")])


@pytest.mark.parametrize("template", [DEFAULT_TEMPLATE, CUSTOM], ids=["default", "custom"])
def test_transformers_writes_and_tokenizes_the_prompt_as_gptkit(tmp_path, template):
    from jinja2.exceptions import TemplateError
    from transformers import AutoTokenizer

    (tmp_path / "gptkit.json").write_text(json.dumps({"chat_template": template}))
    write_tokenizer_files(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.chat_template == jinja_template(template)
    for messages in CONVERSATIONS:
        for end in range(1, len(messages) + 1):
            prefix = as_dicts(messages[:end])
            prompt = format_prompt(template, messages[:end])
            assert tokenizer.apply_chat_template(prefix, add_generation_prompt=True, tokenize=False) == prompt
            tokens = tokenizer.apply_chat_template(prefix, add_generation_prompt=True, tokenize=True)["input_ids"]
            assert tokens == encode(prompt)
        assert tokenizer.apply_chat_template(as_dicts(messages), tokenize=False) == whole_text(template, messages)
    if template is DEFAULT_TEMPLATE:  # the end of a turn is the special token on both sides
        ids = tokenizer.apply_chat_template(as_dicts(CONVERSATIONS[0]), tokenize=True)["input_ids"]
        assert ids[-1] == EOT_TOKEN and ids == encode(whole_text(template, CONVERSATIONS[0]))
    with pytest.raises(TemplateError, match="cannot render a message of role tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "42"}], tokenize=False)


def test_the_jinja_template_writes_a_templates_own_characters_outside_the_basic_plane():
    """Jinja reads a \\u escape in a literal as one UTF-16 unit: an emoji of the template's own text written as an
    escaped surrogate pair would come out as two lone surrogates."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # as transformers renders it

    template = check_template({"system": "🤖 {content}\n", "assistant": "🦜 {content}" + EOT_TEXT}, "emoji")
    messages = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")]
    jinja = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(jinja_template(template))
    assert jinja.render(messages=as_dicts(messages)) == whole_text(template, messages)
    prompt = jinja.render(messages=as_dicts(messages[:2]), add_generation_prompt=True)
    assert prompt == format_prompt(template, messages[:2]) and prompt.endswith("🦜")


def test_a_checkpoint_folder_carries_its_template(tmp_path, tiny_model):
    default = save_checkpoint(tiny_model, tmp_path / "default")
    assert json.loads((default / "tokenizer_config.json").read_text())["chat_template"] == jinja_template(
        DEFAULT_TEMPLATE
    )
    own = save_checkpoint(tiny_model, tmp_path / "own", {"chat_template": CUSTOM})
    assert json.loads((own / "tokenizer_config.json").read_text())["chat_template"] == jinja_template(CUSTOM)
    (own / "gptkit.json").write_text(json.dumps({"chat_template": {"user": "no content"}}))
    with pytest.raises(GptkitError, match="gptkit.json: the chat template cannot render a user message"):
        write_tokenizer_files(own)


def test_pipeline_chats_with_the_folder(tmp_path, lively_model):
    from transformers import pipeline

    ckpt = save_checkpoint(lively_model, tmp_path / "lively")
    messages = [("system", "Be brief."), ("user", "Hello, who are you?")]
    ids = torch.tensor([encode(format_prompt(DEFAULT_TEMPLATE, messages))])
    with torch.no_grad():
        for _ in range(8):  # gptkit's own greedy reply
            logits, _ = lively_model(ids)
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    reply = ids[0, -8:].tolist()
    assert EOT_TOKEN not in reply and len(set(reply)) > 2
    chat = pipeline("text-generation", model=str(ckpt), device="cpu")
    (out,) = chat(as_dicts(messages), do_sample=False, max_new_tokens=8)
    assert out["generated_text"][:-1] == as_dicts(messages)
    assert out["generated_text"][-1] == {"role": "assistant", "content": decode(reply)}
