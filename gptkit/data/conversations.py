"""Conversations to fine-tune on: read, tokenized with the chat template (ids and loss mask), split, and packed into
rows of block_size + 1 tokens.

DATA is a file or a folder of files (.jsonl, .jsonl.gz, or .json holding an array), one format a file, recognised from
its rows:
- OpenAI's messages: {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]};
- ShareGPT: {"conversations": [{"from": "system" | "human" | "gpt", "value": "..."}, ...]};
- Alpaca: {"instruction": "...", "input": "...", "output": "..."}, one user turn (the instruction, then the input
  after a blank line when there is one) and the reply.
A conversation ends with the assistant. The validation split is the last val_fraction of the conversations, in the
order of the files (sorted) and of their rows. Each split is packed best-fit: longest conversation first, each into
the fullest row it fits in whole (a new row when none has room), the rest of a row padded and masked; a conversation
longer than a row is cut at the end and takes a row alone (left out if nothing it trains on is left).
"""

import gzip
import json
import re
from bisect import bisect_left, insort
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptkit.data.tokenfolder import TEXT_SUFFIXES, files_under, val_start
from gptkit.data.tokenizer import EOT_TOKEN
from gptkit.errors import GptkitError
from gptkit.files import data_hash
from gptkit.inference.chat_template import DEFAULT_TEMPLATE, tokenize_conversation

SUFFIXES = (".jsonl", ".jsonl.gz", ".json")
FORMAT_NAMES = {"messages": "OpenAI messages", "sharegpt": "ShareGPT", "alpaca": "Alpaca"}
# a format's list of messages, the keys of a message's role and text, and its roles as the chat template's
MESSAGE_FIELDS = {
    "messages": ("messages", "role", "content", {role: role for role in ("system", "developer", "user", "assistant")}),
    "sharegpt": ("conversations", "from", "value", {"system": "system", "human": "user", "gpt": "assistant"}),
}
BETWEEN_RECORDS = re.compile(r"[\s,]*")
FORMATS_HELP = (
    'a row is OpenAI\'s {"messages": [...]}, ShareGPT\'s {"conversations": [...]} or an Alpaca record '
    "(instruction, input, output)"
)


def row_format(row) -> str | None:
    """The format of one row (a key of FORMAT_NAMES), None when it is none of them."""
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    return None


def is_conversation_data(path: str | Path) -> bool:
    """Whether DATA holds conversations: a .json file given itself, or a .json, .jsonl or .jsonl.gz file whose first
    record is one of the formats, or a folder holding such a file (text files beside it are then refused by
    read_conversations; a token folder's own .json files are not conversations)."""
    path = Path(path)
    if path.is_file() and path.name.lower().endswith(".json"):
        return True
    files = files_under(path, SUFFIXES) if path.is_dir() else [path] if path.is_file() else []
    for file in files:
        records = json_array_records(file) if file.name.lower().endswith(".json") else jsonl_records(file)
        try:
            first = next(records, None)
        except GptkitError:
            continue  # not JSON (lines), or not an array: left to the text loader, which says what is wrong
        if first is not None and row_format(first[1]) is not None:
            return True
    return False


def conversation_files(path: Path) -> list[Path]:
    """The files of DATA: the file given, or the conversation files under the folder (recursively, sorted)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise GptkitError(f"{path} does not exist: give a .jsonl or .json file of conversations, or a folder of them")
    files = files_under(path, SUFFIXES)
    others = [p for p in files_under(path, TEXT_SUFFIXES) if p not in files]
    if others:
        raise GptkitError(f"{path} mixes text ({others[0].name}) with conversations: keep them in separate folders")
    if not files:
        raise GptkitError(f"{path} holds no .jsonl or .json files of conversations")
    return files


def jsonl_records(path: Path):
    """(line number, row) of each non-blank line of a .jsonl or .jsonl.gz file."""
    with gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb") as lines:
        for number, raw in enumerate(lines, 1):
            try:
                line = raw.decode("utf-8")
                if line.strip():
                    yield number, json.loads(line)
            except UnicodeDecodeError:
                raise GptkitError(f"{path}:{number}: not UTF-8 text: convert the file to UTF-8") from None
            except json.JSONDecodeError as e:
                raise GptkitError(f"{path}:{number}: not valid JSON ({e.msg}, column {e.colno})") from None


def json_array_records(path: Path):
    """(line number, record) of each record of a .json file holding an array, the line where the record starts."""
    try:
        text = path.read_text(encoding="utf-8")
        records = json.loads(text)
    except UnicodeDecodeError:
        raise GptkitError(f"{path} is not UTF-8 text: convert it to UTF-8") from None
    except json.JSONDecodeError as e:
        raise GptkitError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(records, list):
        raise GptkitError(f"{path}: a .json file of conversations holds an array of them")
    decoder, at, line = json.JSONDecoder(), text.index("[") + 1, 1
    line += text.count("\n", 0, at)
    for record in records:  # decoded again one at a time, for the line each starts on
        start = BETWEEN_RECORDS.match(text, at).end()
        line += text.count("\n", at, start)
        yield line, record
        at = decoder.raw_decode(text, start)[1]
        line += text.count("\n", start, at)


def read_file(path: Path) -> list[list[tuple[str, str]]]:
    """The conversations of one file, (role, content) pairs, checked."""
    records = json_array_records(path) if path.name.lower().endswith(".json") else jsonl_records(path)
    conversations, first = [], None
    for line, row in records:
        where = f"{path}:{line}"
        kind = row_format(row)
        if kind is None:
            raise GptkitError(f"{where}: not a conversation: {FORMATS_HELP}")
        first = first or (kind, line)
        if kind != first[0]:
            raise GptkitError(
                f"{where}: a {FORMAT_NAMES[kind]} row in a file of {FORMAT_NAMES[first[0]]} rows (line {first[1]}): "
                "one format a file"
            )
        conversations.append(check_conversation(row_messages(row, kind, where), where))
    return conversations


def row_messages(row: dict, kind: str, where: str) -> list[tuple[str, str]]:
    """A row's messages as (role, content) pairs."""
    if kind == "alpaca":
        fields = {key: row.get(key) or "" for key in ("instruction", "input", "output")}
        if not all(isinstance(value, str) for value in fields.values()):
            raise GptkitError(f"{where}: an Alpaca record's instruction, input and output are texts")
        prompt = fields["instruction"] + (f"\n\n{fields['input']}" if fields["input"] else "")
        return [("user", prompt), ("assistant", fields["output"])]
    key, role_key, text_key, roles = MESSAGE_FIELDS[kind]
    if not isinstance(row[key], list):
        raise GptkitError(f'{where}: "{key}" must be a list of messages')
    messages = []
    for i, message in enumerate(row[key]):
        role = message.get(role_key) if isinstance(message, dict) else None
        if role not in roles:
            known = ", ".join(roles)
            raise GptkitError(f'{where}: {key}[{i}] has the unknown role {json.dumps(role)} ("{role_key}": {known})')
        if not isinstance(message.get(text_key), str):
            raise GptkitError(f'{where}: {key}[{i}]\'s "{text_key}" must be a text')
        messages.append((roles[role], message[text_key]))
    return messages


def check_conversation(messages: list[tuple[str, str]], where: str) -> list[tuple[str, str]]:
    """messages, if they make a conversation to train on."""
    if not messages:
        raise GptkitError(f"{where}: an empty conversation")
    if not any(role == "assistant" for role, _ in messages):
        raise GptkitError(f"{where}: a conversation with no assistant turn: there is nothing to train on")
    if messages[-1][0] != "assistant":
        raise GptkitError(
            f"{where}: the conversation ends with the {messages[-1][0]}, not the assistant: its last message must be "
            "the reply"
        )
    return messages


def read_conversations(path: str | Path) -> list[list[tuple[str, str]]]:
    """Every conversation of DATA, in the order of its files and rows."""
    path = Path(path)
    conversations = [c for file in conversation_files(path) for c in read_file(file)]
    if not conversations:
        raise GptkitError(f"{path} holds no conversations")
    return conversations


@dataclass
class PackedRows:
    """Rows of packed conversations: tokens (rows, block_size + 1) and, for each target (the tokens after the first),
    whether the loss counts it: trained (rows, block_size)."""

    tokens: np.ndarray
    trained: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) of rows (indices), int64 (len(rows), block_size); a target the loss does not count is
        -1, which the model's loss ignores."""
        tokens = self.tokens[rows].astype(np.int64)
        return tokens[:, :-1], np.where(self.trained[rows], tokens[:, 1:], -1)

    @property
    def trained_tokens(self) -> int:
        return int(self.trained.sum())


def best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of capacity for items of lengths (each at most capacity), as lists of item indices: the longest item first
    (ties in order), each into the fullest bin it fits in (the first such), a new bin when none has room."""
    bins, free = [], []  # free: (room left, bin index) of the bins with room, sorted
    for item in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        found = bisect_left(free, (lengths[item], -1))
        if found < len(free):
            room, index = free.pop(found)
        else:
            room, index = capacity, len(bins)
            bins.append([])
        bins[index].append(item)
        if room > lengths[item]:
            insort(free, (room - lengths[item], index))
    return bins


def pack(examples: list[tuple[np.ndarray, np.ndarray]], block_size: int) -> tuple[PackedRows, int, int]:
    """(rows, truncated, left out) of examples, (ids, trained) pairs of tokenized conversations, packed best-fit into
    rows of block_size + 1 tokens, padded with <|endoftext|> that no target counts. truncated: conversations cut at the
    end to one row; left out: conversations with nothing to train on after their first token (a cut one's all past
    the row), in no row."""
    capacity = block_size + 1
    truncated = [len(ids) > capacity for ids, _ in examples]
    kept = [(ids[:capacity], mask[:capacity]) for ids, mask in examples]
    left_out = [not mask[1:].any() for _, mask in kept]
    kept = [example for example, out in zip(kept, left_out) if not out]
    bins = best_fit([len(ids) for ids, _ in kept], capacity)
    tokens = np.full((len(bins), capacity), EOT_TOKEN, dtype=np.uint16)
    trained = np.zeros((len(bins), capacity), dtype=bool)
    for row, items in enumerate(bins):
        at = 0
        for item in items:
            ids, mask = kept[item]
            tokens[row, at : at + len(ids)] = ids
            trained[row, at : at + len(ids)] = mask
            at += len(ids)
    return PackedRows(tokens, trained[:, 1:]), sum(truncated), sum(left_out)


@dataclass
class ConversationData:
    """DATA's conversations, packed: train and val rows, and what the caller reports."""

    train: PackedRows
    val: PackedRows
    conversations: int  # of the train split
    val_conversations: int
    truncated: int  # conversations longer than a row, cut at the end (both splits)
    left_out: int  # conversations with nothing to train on within a row (cut ones, mostly), in no row
    digest: str  # sha256 of the files


def load_conversations(
    path: str | Path,
    block_size: int,
    val_fraction: float,
    template: dict = DEFAULT_TEMPLATE,
    train_on_prompt: bool = False,
) -> ConversationData:
    """DATA's conversations tokenized with template (the loss on the replies alone, or on every token with
    train_on_prompt), the last val_fraction of them for validation, each split packed into rows of block_size + 1."""
    path = Path(path)
    conversations = read_conversations(path)
    examples = [tokenize_conversation(template, messages, train_on_prompt) for messages in conversations]
    n_train = val_start(len(examples), val_fraction)
    train, train_cut, train_out = pack(examples[:n_train], block_size)
    val, val_cut, val_out = pack(examples[n_train:], block_size)
    digest = data_hash(conversation_files(path))
    return ConversationData(
        train, val, n_train, len(examples) - n_train, train_cut + val_cut, train_out + val_out, digest
    )
