"""The files that let transformers load a checkpoint folder on its own: GPT-2's tokenizer as transformers reads it
(vocab.json, merges.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json) and generation_config.json.
tokenizer_config.json holds the folder's chat template as Jinja (its gptkit.json's "chat_template", else the default),
so that transformers' apply_chat_template and pipeline write a conversation as gptkit does.

They are made from the BPE files that ship in the package (no network): vocab.json and merges.txt are those files
byte for byte (encoder.json and vocab.bpe, under the names transformers uses), tokenizer.json is the same vocabulary
and merges for the `tokenizers` library (byte-level BPE, GPT-2's pre-tokenizer, <|endoftext|> as a special token).
The bytes are made once per process; writing them is all a checkpoint save pays. Needs no torch.
"""

import json
from functools import cache
from pathlib import Path

from gptkit.checkpoint.locate import METADATA_FILE
from gptkit.data.tokenizer import EOT_TEXT, EOT_TOKEN, bpe_file
from gptkit.files import atomic_path, read_json
from gptkit.inference.chat_template import DEFAULT_TEMPLATE, jinja_template, recorded_template

CONTEXT = 1024  # the context GPT-2's tokenizer was published with (model_max_length)
EOT_ADDED = {
    "content": EOT_TEXT,
    "lstrip": False,
    "normalized": True,
    "rstrip": False,
    "single_word": False,
    "special": True,
}


def tokens() -> list[str]:
    """GPT-2's 50,257 tokens (byte-level strings, as vocab.json spells them), in id order."""
    vocab = json.loads(bpe_file("encoder.json"))
    return sorted(vocab, key=vocab.__getitem__)


def merges() -> list[str]:
    """GPT-2's 50,000 merges, highest priority first, each as "left right"."""
    return bpe_file("vocab.bpe").decode("utf-8").splitlines()[1:]  # the first line is "#version: 0.2"


def tokenizer_json(vocab) -> dict:
    """tokenizer.json: what transformers' fast GPT-2 tokenizer (the `tokenizers` library) loads, as GPT-2's own.
    vocab: the tokens and their ids (a dict, or anything json.dumps writes in its place)."""
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": EOT_TOKEN, **EOT_ADDED}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges(),
        },
    }


def tokenizer_config(chat_template: str) -> dict:
    """tokenizer_config.json, with chat_template (Jinja)."""
    return {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": CONTEXT,
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": EOT_TEXT,
        "eos_token": EOT_TEXT,
        "unk_token": EOT_TEXT,
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "added_tokens_decoder": {str(EOT_TOKEN): EOT_ADDED},
        "chat_template": chat_template,
    }


def special_tokens_map() -> dict:
    return {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT}


def generation_config() -> dict:
    return {"bos_token_id": EOT_TOKEN, "eos_token_id": EOT_TOKEN}


def tokenizer_json_bytes() -> bytes:
    """tokenizer.json's bytes, with encoder.json's bytes as its vocabulary (parsing and writing it again costs ten
    times more)."""
    placeholder = "@vocab@"
    text = json.dumps(tokenizer_json(placeholder), ensure_ascii=False).encode("utf-8")
    before, after = text.split(json.dumps(placeholder).encode(), 1)
    return before + bpe_file("encoder.json").strip() + after


@cache
def file_bytes(chat_template: str = jinja_template(DEFAULT_TEMPLATE)) -> dict[str, bytes]:
    """Each file's name and content, made once for each chat template (Jinja; the default template's by default)."""
    small = {
        "tokenizer_config.json": tokenizer_config(chat_template),
        "special_tokens_map.json": special_tokens_map(),
        "generation_config.json": generation_config(),
    }
    return {
        "vocab.json": bpe_file("encoder.json"),
        "merges.txt": bpe_file("vocab.bpe"),
        "tokenizer.json": tokenizer_json_bytes(),
        **{name: (json.dumps(data, indent=2) + "\n").encode() for name, data in small.items()},
    }


TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


def folder_template(folder: Path) -> dict:
    """The chat template folder's gptkit.json records, else the default."""
    path = Path(folder) / METADATA_FILE
    metadata = read_json(path, "restore it, or delete it") if path.is_file() else {}
    return recorded_template(metadata, path)


def write_tokenizer_files(folder: Path) -> list[Path]:
    """Write TOKENIZER_FILES into folder, each atomically (a file already holding the same bytes is left alone), with
    the chat template of its gptkit.json (written first) in tokenizer_config.json."""
    folder = Path(folder)
    written = []
    for name, data in file_bytes(jinja_template(folder_template(folder))).items():
        path = folder / name
        if not (path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data):
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        written.append(path)
    return written
