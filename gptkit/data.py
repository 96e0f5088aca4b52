"""Training text: read a file or a folder of .txt files, tokenize it once, cache the tokens, split train / val.

The token cache is a flat uint16 file named by the sha256 of the text, under $GPTKIT_CACHE_DIR (default
~/.cache/gptkit/tokens), so a second run on the same data starts at once, wherever the data lives.
"""

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from gptkit.checkpoint import atomic_path
from gptkit.errors import GptkitError
from gptkit.tokenizer import EOT_TOKEN, EOT_TEXT, get_tokenizer

CHUNK_CHARS = 1 << 20
# A newline followed by a non-space character is always a boundary of GPT-2's pre-tokenizer, so splitting the
# text there and encoding the pieces in parallel gives exactly the tokens of encoding it whole.
SAFE_SPLIT = re.compile(r"\n(?=\S)")


def text_files(path: Path) -> list[Path]:
    """The .txt files of a folder (recursively, sorted), or the one file given."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise GptkitError(f"{path} holds no .txt files")
        return files
    if path.is_file():
        return [path]
    raise GptkitError(f"{path} does not exist: give a UTF-8 text file or a folder of .txt files")


def data_hash(files: list[Path]) -> str:
    """sha256 of the data's content (and, for several files, their order)."""
    h = hashlib.sha256()
    for f in files:
        if len(files) > 1:
            h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def read_utf8(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GptkitError(f"{path} is not UTF-8 text (invalid byte at offset {e.start}): convert it to UTF-8") from None


def split_for_encoding(text: str, chunk_chars: int = CHUNK_CHARS) -> list[str]:
    pieces, start = [], 0
    while len(text) - start > chunk_chars:
        m = SAFE_SPLIT.search(text, start + chunk_chars)
        if m is None:
            break
        pieces.append(text[start : m.start() + 1])
        start = m.start() + 1
    pieces.append(text[start:])
    return pieces


def tokenize(text: str, progress=None) -> list[int]:
    """GPT-2 tokens of text (<|endoftext|> read as the special token), encoded in parallel chunks."""
    enc = get_tokenizer()
    pieces = split_for_encoding(text)
    tokens: list[int] = []
    batch = max(1, os.cpu_count() or 1)
    for i in range(0, len(pieces), batch):
        for piece_tokens in enc.encode_batch(pieces[i : i + batch], allowed_special={EOT_TEXT}):
            tokens.extend(piece_tokens)
        if progress:
            progress(min(i + batch, len(pieces)), len(pieces))
    return tokens


def cache_dir() -> Path:
    return Path(os.environ.get("GPTKIT_CACHE_DIR", Path.home() / ".cache" / "gptkit")) / "tokens"


def load_tokens(path: str | Path, progress=None) -> tuple[np.ndarray, str]:
    """(uint16 tokens of the data, sha256 of the data), tokenizing only on the first call for this content.

    Documents of a folder are each followed by <|endoftext|>. progress(done, total) is called while tokenizing.
    """
    files = text_files(Path(path))
    digest = data_hash(files)
    cached = cache_dir() / f"{digest}.u16"
    if cached.is_file():
        return np.fromfile(cached, dtype=np.uint16), digest
    tokens: list[int] = []
    for f in files:
        tokens.extend(tokenize(read_utf8(f), progress))
        if len(files) > 1:
            tokens.append(EOT_TOKEN)
    if not tokens:
        raise GptkitError(f"{path} is empty: give it some text")
    array = np.array(tokens, dtype=np.uint16)
    with atomic_path(cached) as tmp:
        array.tofile(tmp)
    return array, digest


def split_tokens(tokens: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split: the first (1 - val_fraction) of the tokens train, the rest validate (as nanoGPT)."""
    if not 0.0 <= val_fraction < 1.0:
        raise GptkitError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    n_train = len(tokens) - int(len(tokens) * val_fraction)
    return tokens[:n_train], tokens[n_train:]
