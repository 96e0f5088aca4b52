"""The token folder format, written by `gptkit prepare` (prepare.py) and read by the training data (data.py):

    manifest.json            what was tokenized (the sources and their sha256), the settings, the shards, the split
    tokens_000000.bin ...    the tokens in order, raw uint16, shard_tokens of them a shard (the last one shorter)

A folder is complete once its manifest says so; until then the manifest records where an interrupted prepare
resumes. Also here, the rules that the folder's inputs and its readers share: which files are text and which are
already tokens (a folder never mixes them), that text is UTF-8, and where the validation tail starts. Needs no torch.
"""

from pathlib import Path

import numpy as np

from gptkit import __version__
from gptkit.errors import GptkitError
from gptkit.files import read_json, write_json
from gptkit.data.tokenizer import VOCAB_SIZE

MANIFEST = "manifest.json"
FORMAT = "gptkit-tokens"
FORMAT_VERSION = 1
TOKEN_DTYPE = np.dtype(np.uint16)  # GPT-2's token ids (below VOCAB_SIZE) fit in 16 bits
TEXT_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")
TOKEN_SUFFIXES = (".bin", ".npy")


def shard_name(index: int) -> str:
    return f"tokens_{index:06d}.bin"


def new_manifest(files: list[Path], hashes: list[str], shard_tokens: int, val_fraction: float) -> dict:
    """The manifest of a prepare of files (with their sha256) that has made no shard yet."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gptkit_version": __version__,
        "tokenizer": "gpt2",
        "dtype": TOKEN_DTYPE.name,
        "vocab_size": VOCAB_SIZE,
        "sources": [{"path": str(f.resolve()), "sha256": h, "bytes": f.stat().st_size} for f, h in zip(files, hashes)],
        "shard_tokens": shard_tokens,
        "val_fraction": val_fraction,
        "complete": False,
        "shards": [],
        "resume": {"file": 0, "offset": 0, "skip": 0},
    }


def write_manifest(folder: Path, manifest: dict):
    write_json(folder / MANIFEST, manifest)


def read_manifest(folder: Path) -> dict:
    manifest = read_json(folder / MANIFEST)
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("shards"), list):
        raise GptkitError(f"{folder / MANIFEST} is not a gptkit token manifest: prepare the data again")
    return manifest


def check_shards(folder: Path, manifest: dict):
    """Every shard the manifest lists is there with the size it records."""
    for shard in manifest["shards"]:
        path = folder / shard["file"]
        expected = TOKEN_DTYPE.itemsize * shard["tokens"]
        found = path.stat().st_size if path.is_file() else None
        if found != expected:
            what = "is missing" if found is None else f"has {found:,} bytes, the manifest says {expected:,}"
            raise GptkitError(
                f"{folder / MANIFEST} does not match its shards ({shard['file']} {what}): delete {folder} and "
                "prepare the data again"
            )


def val_start(total: int, val_fraction: float) -> int:
    """Where the validation tail of total tokens starts: the first (1 - val_fraction) of the tokens train, the rest
    validate (as nanoGPT)."""
    if not 0.0 <= val_fraction < 1.0:
        raise GptkitError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    return total - int(total * val_fraction)


# --- inputs ----------------------------------------------------------------------------------------------------------


def files_under(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files under folder (recursively, sorted) whose names end in one of suffixes (in any case)."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name.lower().endswith(suffixes))


def refuse_mixed(folder: Path, token_files: list[Path], text_files: list[Path]):
    """A folder holds text to tokenize or tokens, never both."""
    if token_files and text_files:
        raise GptkitError(
            f"{folder} mixes pre-tokenized files ({token_files[0].name}) with text ({text_files[0].name}): keep them "
            "in separate folders"
        )


def not_utf8(path: Path, offset: int) -> GptkitError:
    """The error for a text input that is not UTF-8, its first invalid byte at offset."""
    return GptkitError(f"{path} is not UTF-8 text (invalid byte at offset {offset}): convert it to UTF-8")
