"""Chat messages as text for a base model. GPT-2 has no chat tokens, so `gptkit serve` writes a conversation out with
a plain text template, which a checkpoint's gptkit.json ("chat_template") or `--chat-template FILE` can change."""

from pathlib import Path

from gptkit.errors import GptkitError
from gptkit.files import read_json

# Each message is its role's text with {content} replaced, in order; then "generation" starts the reply, which ends
# at <|endoftext|> or at a "stop" text (where the model would begin the next turn).
DEFAULT_TEMPLATE = {
    "system": "{content}\n\n",
    "user": "User: {content}\n",
    "assistant": "Assistant: {content}\n",
    "generation": "Assistant:",
    "stop": ["\nUser:"],
}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def check_template(template, source) -> dict:
    """template (a JSON object with any of DEFAULT_TEMPLATE's keys) over the default, checked; source names it."""
    keys = ", ".join(DEFAULT_TEMPLATE)
    if not isinstance(template, dict) or template.keys() - DEFAULT_TEMPLATE.keys():
        raise GptkitError(f"{source}: a chat template is a JSON object with some of the keys {keys}")
    merged = {**DEFAULT_TEMPLATE, **template}
    for role in ("system", "user", "assistant"):
        if not isinstance(merged[role], str) or "{content}" not in merged[role]:
            raise GptkitError(f'{source}: the chat template\'s "{role}" must be a string with {{content}} in it')
    if not isinstance(merged["generation"], str):
        raise GptkitError(f'{source}: the chat template\'s "generation" must be a string')
    if not isinstance(merged["stop"], list) or not all(isinstance(s, str) and s for s in merged["stop"]):
        raise GptkitError(f'{source}: the chat template\'s "stop" must be a list of texts')
    return merged


def read_template(path: Path) -> dict:
    """A --chat-template file, checked."""
    return check_template(read_json(path, "give a JSON object of chat template keys"), path)


def render(template: dict, messages: list[tuple[str, str]]) -> str:
    """The prompt for messages, (role, content) pairs with a role of ROLES, ending where the reply begins."""
    parts = [template[ROLES[role]].replace("{content}", content) for role, content in messages]
    return "".join(parts) + template["generation"]
