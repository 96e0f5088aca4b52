"""Chat messages as text, and as tokens with the loss mask that fine-tuning on them uses.

GPT-2 has one special token, so a conversation is plain text with role markers, each assistant turn ending in
<|endoftext|> (docs/chat.md says why). A template is a dict of DEFAULT_TEMPLATE's keys: each role's text with
{content} where the message goes; "generation", the text that starts a reply (the start of the assistant's text);
"stop", texts that end a reply besides <|endoftext|> (where a base model would begin the next turn). A checkpoint's
gptkit.json ("chat_template") or `--chat-template FILE` can change any of them. The same template is written as Jinja
into a checkpoint's tokenizer_config.json and GGUF files (jinja_template), for transformers and llama.cpp.
"""

import json
from functools import cache
from pathlib import Path

from gptkit.data.tokenizer import EOT_TEXT
from gptkit.errors import GptkitError
from gptkit.files import read_json

DEFAULT_TEMPLATE = {
    "system": "{content}\n\n",
    "user": "User: {content}\n",
    "assistant": "Assistant: {content}" + EOT_TEXT,
    "generation": "Assistant:",
    "stop": ["\nUser:"],
}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
TEMPLATE_ROLES = ("system", "user", "assistant")


def check_template(template, source) -> dict:
    """template (a JSON object with any of DEFAULT_TEMPLATE's keys) over the default, checked; source names it.
    Without "generation" of its own, a template that sets "assistant" starts replies with the assistant's text
    before {content}, less its trailing spaces."""
    keys = ", ".join(DEFAULT_TEMPLATE)
    if not isinstance(template, dict) or template.keys() - DEFAULT_TEMPLATE.keys():
        raise GptkitError(f"{source}: a chat template is a JSON object with some of the keys {keys}")
    merged = {**DEFAULT_TEMPLATE, **template}
    for role in TEMPLATE_ROLES:
        if not isinstance(merged[role], str) or "{content}" not in merged[role]:
            raise GptkitError(
                f'{source}: the chat template cannot render a {role} message: its "{role}" must be a string with '
                "{content} in it"
            )
    before_reply = merged["assistant"].split("{content}")[0]
    if "assistant" in template and "generation" not in template:
        merged["generation"] = before_reply.rstrip(" ")
    if not isinstance(merged["generation"], str) or not before_reply.startswith(merged["generation"]):
        raise GptkitError(
            f'{source}: the chat template\'s "generation" must be the start of its "assistant" text before '
            f"{{content}} ({before_reply!r}), so that a reply continues the prompt as in training"
        )
    if not isinstance(merged["stop"], list) or not all(isinstance(s, str) and s for s in merged["stop"]):
        raise GptkitError(f'{source}: the chat template\'s "stop" must be a list of texts')
    return merged


def read_template(path: Path) -> dict:
    """A --chat-template file, checked."""
    return check_template(read_json(path, "give a JSON object of chat template keys"), path)


def message_text(template: dict, role: str, content: str) -> str:
    """One message as the template writes it; a role it has no text for is refused."""
    if role not in ROLES:
        raise GptkitError(f"the chat template cannot render a message of role '{role}' (roles: {', '.join(ROLES)})")
    return template[ROLES[role]].replace("{content}", content)


def format_prompt(template: dict, messages: list[tuple[str, str]]) -> str:
    """The prompt for messages, (role, content) pairs, ending where the reply begins: the text format_conversation
    gives for the same messages, then the template's "generation"."""
    return "".join(message_text(template, role, content) for role, content in messages) + template["generation"]


def format_conversation(template: dict, messages: list[tuple[str, str]]) -> list[tuple[str, bool]]:
    """A whole conversation as (text, is_reply) pieces that add up to its text: each assistant message's text after
    the "generation" start (what the model writes, to the end of its turn) is a reply piece, the rest prompt."""
    pieces, prompt = [], ""
    for role, content in messages:
        text = message_text(template, role, content)
        if ROLES[role] == "assistant":
            start = len(template["generation"])
            pieces += [(prompt + text[:start], False), (text[start:], True)]
            prompt = ""
        else:
            prompt += text
    if prompt:
        pieces.append((prompt, False))
    return [(text, reply) for text, reply in pieces if text]


def tokenize_conversation(template: dict, messages: list[tuple[str, str]], train_on_prompt: bool = False):
    """(ids, trained) of a conversation: the tokens of its whole text (gptkit.data.tokenizer.encode, as
    transformers tokenizes the text of the folder's Jinja template) and, for each token, whether the loss counts it:
    the tokens that begin inside a reply piece (format_conversation), or all with train_on_prompt. numpy arrays,
    int32 and bool."""
    import numpy as np

    from gptkit.data.tokenizer import encode

    pieces = format_conversation(template, messages)
    ids = np.array(encode("".join(text for text, _ in pieces)), dtype=np.int32)
    if train_on_prompt:
        return ids, np.ones(len(ids), dtype=bool)
    token_ends = np.cumsum(token_byte_lengths()[ids])
    token_starts = token_ends - token_byte_lengths()[ids]
    piece_ends = np.cumsum([len(text.encode("utf-8")) for text, _ in pieces])
    piece = np.searchsorted(piece_ends, token_starts, side="right")
    return ids, np.array([reply for _, reply in pieces], dtype=bool)[piece]


@cache
def token_byte_lengths():
    """The length in bytes of each GPT-2 token (<|endoftext|> as its 13 characters), a numpy array made once."""
    import numpy as np

    from gptkit.data.tokenizer import VOCAB_SIZE, get_tokenizer

    tokenizer = get_tokenizer()
    return np.array([len(tokenizer.decode_single_token_bytes(t)) for t in range(VOCAB_SIZE)])


def jinja_template(template: dict) -> str:
    """The template as a Jinja chat template (transformers' apply_chat_template, llama.cpp's --jinja): the same text
    as format_prompt (with add_generation_prompt) or format_conversation (without); a role the template has no text
    for raises. Texts are JSON string literals, which Jinja reads as its own."""

    def literal(text: str) -> str:
        return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""

    branches = []
    for kind in TEMPLATE_ROLES:
        names = " or ".join(f"message['role'] == '{role}'" for role, of in ROLES.items() if of == kind)
        body = "{{ message['content'] }}".join(literal(part) for part in template[kind].split("{content}"))
        branches.append(f"{{%- {'if' if not branches else 'elif'} {names} -%}}{body}")
    refusal = "{{ raise_exception('the chat template cannot render a message of role ' + message['role']) }}"
    return (
        "{%- for message in messages -%}" + "".join(branches) + "{%- else -%}" + refusal + "{%- endif -%}"
        "{%- endfor -%}{%- if add_generation_prompt -%}" + literal(template["generation"]) + "{%- endif -%}"
    )


def recorded_template(metadata: dict, source) -> dict:
    """The template a checkpoint's gptkit.json (metadata) records, checked, else the default."""
    own = metadata.get("chat_template")
    return DEFAULT_TEMPLATE if own is None else check_template(own, source)
