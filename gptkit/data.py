"""Training text: read a file or a folder of .txt files, tokenize it once, cache the tokens, split train / val.

The token cache is a flat uint16 file named by the sha256 of the text, in $GPTKIT_CACHE_DIR/tokens
(default ~/.cache/gptkit/tokens), so a second run on the same data starts at once, wherever the data lives.
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
# A newline between two non-space characters is always a pre-token of its own for GPT-2's pre-tokenizer, so
# splitting the text after it and encoding the pieces in parallel gives exactly the tokens of encoding it whole.
# (After other whitespace it is not: "\n\nA" is "\n", "\n", "A" whole, but "\n\n" + "A" in pieces.)
SAFE_SPLIT = re.compile(r"(?<=\S)\n(?=\S)")
CACHE_VERSION = 2  # part of the cache file names: bumped whenever the tokens of a text change


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
    cached = cache_dir() / f"{digest}.v{CACHE_VERSION}.u16"
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


class TokenizeProgress:
    """A progress(done, total) callback for load_tokens that shows a rich bar, only when tokenizing takes several
    rounds of parallel chunks (inputs of many megabytes); a no-op for small inputs and when told to be quiet."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        self.task = None

    def __call__(self, done: int, total: int):
        if not self.enabled:
            return
        if self.bar is None:
            if done >= total:
                return
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("tokenizing"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("MB"),
                TimeRemainingColumn(),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("tokenizing", total=total)
        self.bar.update(self.task, completed=done, total=total)

    def close(self):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class BatchLoader:
    """Batches of (B, T) inputs and targets from a token array, deterministic given the seed and the position.

    The tokens are cut into windows of T + 1 tokens (consecutive windows overlap by one token, so every token is a
    target once per epoch); each epoch visits the windows in its own seeded random order. A step's global batch is
    the next batch_size * world_size windows of that order, and process `rank` takes its own batch_size of them, so
    N processes with batch B see exactly the windows of one process with batch N * B. The position (epoch, index)
    is all the state there is: saving and restoring it resumes the stream exactly.
    """

    def __init__(
        self, tokens: np.ndarray, batch_size: int, block_size: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        self.tokens = tokens
        self.batch_size = batch_size
        self.block_size = block_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.n_windows = (len(tokens) - 1) // block_size
        global_batch = batch_size * world_size
        if self.n_windows < global_batch:
            raise GptkitError(
                f"the training data is too short: {len(tokens):,} tokens, but one batch of {global_batch} x "
                f"{block_size} needs {global_batch * block_size + 1:,}: give more text or a smaller "
                "--batch-size / --block-size"
            )
        self.epoch = 0
        self.index = 0
        self._order_epoch = None
        self._order = None

    def order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._order_epoch = epoch
        return self._order

    def next_batch(self):
        """(x, y): int64 tensors of shape (batch_size, block_size), this process's slice of the next global batch."""
        import torch

        windows = []
        for _ in range(self.batch_size * self.world_size):
            windows.append(self.order(self.epoch)[self.index])
            self.index += 1
            if self.index == self.n_windows:
                self.epoch, self.index = self.epoch + 1, 0
        mine = windows[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        T = self.block_size
        rows = np.stack([self.tokens[w * T : w * T + T + 1] for w in mine]).astype(np.int64)
        batch = torch.from_numpy(rows)
        return batch[:, :-1], batch[:, 1:]

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict):
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def eval_batches(
    tokens: np.ndarray, n_tokens: int, batch_size: int, block_size: int, rank: int = 0, world_size: int = 1
):
    """(x, y) batches of this process's share of the first n_tokens of tokens, cut in sequential windows of
    block_size (shorter when there are fewer tokens); process r takes windows r, r + world_size, ..."""
    import torch

    T = min(block_size, len(tokens) - 1)
    if T < 1:
        return
    n_windows = max(1, min(n_tokens // T, (len(tokens) - 1) // T))
    mine = range(rank, n_windows, world_size)
    for i in range(0, len(mine), batch_size):
        rows = np.stack([tokens[w * T : w * T + T + 1] for w in mine[i : i + batch_size]]).astype(np.int64)
        batch = torch.from_numpy(rows)
        yield batch[:, :-1], batch[:, 1:]
