"""Training data: token sources read through memory maps, the train / validation split, and the batch stream.

`gptkit train DATA` accepts:
- text (a text file, .jsonl / .jsonl.gz, .parquet, or a folder of them): tokenized once by gptkit.data.prepare into a
  token folder in the cache, $GPTKIT_CACHE_DIR/tokens (default ~/.cache/gptkit/tokens), named by the sha256 of the
  content, so a second run on the same data starts at once, wherever the data lives;
- a folder made by `gptkit prepare` (a token folder, see tokenfolder.py);
- nanoGPT's prepared folder (train.bin and val.bin, raw uint16);
- build-nanogpt's shards (*_train_*.npy and *_val_*.npy, uint16).
Token files are opened with np.memmap / np.load(mmap_mode="r"), never read whole: memory stays near one batch, plus
what the OS keeps in its page cache.
"""

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gptkit.errors import GptkitError
from gptkit.files import data_hash
from gptkit.data.tokenfolder import (
    MANIFEST,
    TEXT_SUFFIXES,
    TOKEN_DTYPE,
    check_shards,
    files_under,
    not_utf8,
    read_manifest,
    refuse_mixed,
    val_start,
)
from gptkit.data.tokenizer import VOCAB_SIZE

CACHE_VERSION = 3  # part of the cache folder names: bumped whenever the tokens of a text change
CHECK_TOKENS = 1 << 24  # tokens per block when checking token ids


def read_utf8(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(path, e.start) from None


def cache_dir() -> Path:
    return Path(os.environ.get("GPTKIT_CACHE_DIR", Path.home() / ".cache" / "gptkit")) / "tokens"


@dataclass
class TokenSource:
    """The tokens of a corpus, as memory-mapped token arrays in order (batch windows never span two of them).

    The validation split is the tail of `shards` (val_fraction of all tokens; prepared and text data), or the
    separate `val_shards` of nanoGPT's and build-nanogpt's folders."""

    path: Path
    format: str  # "text", "gptkit", "nanogpt" or "build-nanogpt"
    digest: str  # sha256 of the text (text data), of the manifest (gptkit), of names, sizes and ends (others)
    shards: list[np.ndarray]
    val_shards: list[np.ndarray] | None = None
    val_fraction: float | None = None  # the split `gptkit prepare` recorded (gptkit folders)
    names: list[str] = field(default_factory=list)

    @property
    def all_shards(self) -> list[np.ndarray]:
        """Every token array, the separate validation files' last."""
        return self.shards + (self.val_shards or [])

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.all_shards)

    @property
    def split_kind(self) -> str:
        return "files" if self.val_shards is not None else "tail"

    def split(self, val_fraction: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(train shards, validation shards): the separate val files, or the last val_fraction of the tokens."""
        if self.val_shards is not None:
            return self.shards, self.val_shards
        return split_tokens(self.shards, val_fraction)


def open_data(path: str | Path, progress=None, check: bool = True) -> TokenSource:
    """The token source of DATA: a pre-tokenized folder as it is, text through the token cache (tokenizing it the
    first time, with progress(done_bytes, total_bytes, tokens)). check: verify the token ids of foreign formats."""
    path = Path(path)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return open_prepared(path, "gptkit")
        if (path / "train.bin").is_file():
            return open_nanogpt(path, check)
        if list(path.glob("*_train_*.npy")):
            return open_build_nanogpt(path, check)
    return open_text(path, progress)


def open_text(path: Path, progress=None) -> TokenSource:
    from gptkit.data.inputs import input_files
    from gptkit.data.prepare import prepare

    files = input_files(path)
    digest = data_hash(files)
    folder = cache_dir() / f"{digest}.v{CACHE_VERSION}"
    if not (folder / MANIFEST).is_file() or not read_manifest(folder).get("complete"):
        prepare(path, folder, progress=progress, files=files)
    source = open_prepared(folder, "text")
    source.path, source.digest, source.val_fraction = path, digest, None
    return source


def open_prepared(folder: Path, format: str) -> TokenSource:
    manifest = read_manifest(folder)
    if not manifest.get("complete"):
        raise GptkitError(f"the prepare of {folder} was interrupted: run gptkit prepare again to finish it")
    check_shards(folder, manifest)
    shards = [np.memmap(folder / s["file"], dtype=TOKEN_DTYPE, mode="r") for s in manifest["shards"]]
    identity = {"sources": [s["sha256"] for s in manifest["sources"]], "shards": manifest["shards"]}
    digest = hashlib.sha256(json_bytes(identity)).hexdigest()
    names = [s["file"] for s in manifest["shards"]]
    return TokenSource(folder, format, digest, shards, None, manifest.get("val_fraction"), names)


def json_bytes(data) -> bytes:
    return json.dumps(data, sort_keys=True).encode()


def fingerprint(files: list[Path]) -> str:
    """sha256 of the files' names, sizes and first and last MiB: an identity for token folders too large to hash on
    every run."""
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return h.hexdigest()


def check_token_ids(path: Path, tokens: np.ndarray):
    """Refuse a token id outside GPT-2's vocabulary (read a block at a time)."""
    for begin in range(0, len(tokens), CHECK_TOKENS):
        block = tokens[begin : begin + CHECK_TOKENS]
        if len(block) and int(block.max()) >= VOCAB_SIZE:
            at = begin + int(np.argmax(block >= VOCAB_SIZE))
            raise GptkitError(
                f"{path}: token {at:,} is {int(tokens[at])}, outside GPT-2's vocabulary (0-{VOCAB_SIZE - 1}): "
                "these are not GPT-2 tokens"
            )


def raw_tokens(path: Path, check: bool) -> np.ndarray:
    """A raw uint16 token file (nanoGPT's .bin), memory-mapped."""
    size = path.stat().st_size
    if size % 2:
        raise GptkitError(f"{path} has an odd number of bytes ({size:,}): it is not a uint16 token file (cut short?)")
    if size == 0:
        raise GptkitError(f"{path} is empty")
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    if check:
        check_token_ids(path, tokens)
    return tokens


def npy_tokens(path: Path, check: bool) -> np.ndarray:
    """A build-nanogpt .npy shard (1-D uint16), memory-mapped; never unpickled."""
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise GptkitError(f"{path} is not a readable .npy file ({e})") from None
    if tokens.dtype != np.uint16 or tokens.ndim != 1:
        raise GptkitError(f"{path} holds {tokens.dtype} of shape {tokens.shape}, not a 1-D array of uint16 tokens")
    if check:
        check_token_ids(path, tokens)
    return tokens


def open_nanogpt(folder: Path, check: bool) -> TokenSource:
    files = [folder / "train.bin"] + ([folder / "val.bin"] if (folder / "val.bin").is_file() else [])
    refuse_mixed(folder, files, files_under(folder, TEXT_SUFFIXES))
    train, *val = [raw_tokens(f, check) for f in files]
    return TokenSource(folder, "nanogpt", fingerprint(files), [train], val, names=[f.name for f in files])


def open_build_nanogpt(folder: Path, check: bool) -> TokenSource:
    train_files, val_files = sorted(folder.glob("*_train_*.npy")), sorted(folder.glob("*_val_*.npy"))
    refuse_mixed(folder, train_files, files_under(folder, TEXT_SUFFIXES))
    train = [npy_tokens(f, check) for f in train_files]
    val = [npy_tokens(f, check) for f in val_files]
    files = train_files + val_files
    return TokenSource(folder, "build-nanogpt", fingerprint(files), train, val, names=[f.name for f in files])


def load_tokens(path: str | Path, progress=None) -> tuple[np.ndarray, str]:
    """(all the tokens of DATA in memory, its digest): for small data (eval of a text, tests, benchmarks)."""
    source = open_data(path, progress)
    shards = source.all_shards
    return np.concatenate(shards) if len(shards) != 1 else np.array(shards[0]), source.digest


class TokenSequence:
    """Token arrays (memory-mapped shards, or views of them) read as one sequence without ever being concatenated:
    len(), and a slice [begin:end] that copies only those tokens, across the arrays' boundaries. np.asarray() of it
    copies them all (for small data and tests)."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = [p for p in parts if len(p)]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])  # where each part begins; its end last
        self.dtype = np.result_type(*self.parts) if self.parts else TOKEN_DTYPE

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key):
        if isinstance(key, slice):
            begin, end, step = key.indices(len(self))
            if step != 1:
                raise ValueError("a TokenSequence is sliced with a step of 1")
            return self.read(begin, end)
        index = int(key) + (len(self) if int(key) < 0 else 0)
        if not 0 <= index < len(self):
            raise IndexError(f"token {key} of {len(self)}")
        return self.read(index, index + 1)[0]

    def read(self, begin: int, end: int) -> np.ndarray:
        """A copy of tokens begin to end (0 <= begin, end <= len)."""
        out = np.empty(max(end - begin, 0), dtype=self.dtype)
        part = int(np.searchsorted(self.starts, begin, side="right")) - 1
        at = begin
        while at < end:
            offset = at - int(self.starts[part])
            n = min(end - at, len(self.parts[part]) - offset)
            out[at - begin : at - begin + n] = self.parts[part][offset : offset + n]
            at, part = at + n, part + 1
        return out

    def head(self, n: int) -> "TokenSequence":
        """The first n tokens, as views of the same arrays (nothing read)."""
        return TokenSequence([p[: max(0, n - int(begin))] for p, begin in zip(self.parts, self.starts)])

    def __array__(self, dtype=None, copy=None):
        tokens = self.read(0, len(self))
        return tokens if dtype is None else tokens.astype(dtype)

    def tolist(self) -> list[int]:
        return self.read(0, len(self)).tolist()


def split_tokens(tokens: np.ndarray | list[np.ndarray], val_fraction: float = 0.1):
    """(train, validation) of tokens, cut where tokenfolder.val_start says: of an array, two arrays; of shards (arrays
    one after the other), two lists of shards (the shard the cut falls in split in two, no empty shard)."""
    shards = [tokens] if isinstance(tokens, np.ndarray) else tokens
    n_train = val_start(sum(len(s) for s in shards), val_fraction)
    train, val, begin = [], [], 0
    for shard in shards:
        cut = min(max(n_train - begin, 0), len(shard))
        train.append(shard[:cut])
        val.append(shard[cut:])
        begin += len(shard)
    if isinstance(tokens, np.ndarray):
        return train[0], val[0]
    return [s for s in train if len(s)], [s for s in val if len(s)]


class BatchLoader:
    """Batches of (B, T) inputs and targets from token arrays, deterministic given the seed and the position.

    Each array (a shard) is cut into windows of T + 1 tokens (consecutive windows overlap by one token, so every token
    is a target once per epoch; windows never span two shards); each epoch visits all the windows in its own seeded
    random order. A step's global batch is the next batch_size * world_size windows of that order, and process `rank`
    takes its own batch_size of them, so N processes with batch B see exactly the windows of one process with batch
    N * B. The position (epoch, index) is all the state there is: saving and restoring it resumes the stream exactly.
    Only the windows of a batch are read from the (memory-mapped) shards.
    """

    def __init__(
        self,
        tokens: np.ndarray | list[np.ndarray],
        batch_size: int,
        block_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.shards = [tokens] if isinstance(tokens, np.ndarray) else list(tokens)
        self.batch_size = batch_size
        self.block_size = block_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        windows = [max(0, (len(s) - 1) // block_size) for s in self.shards]
        self.first_window = np.cumsum([0] + windows)  # the global index of each shard's first window
        self.n_windows = int(self.first_window[-1])
        self.n_tokens = sum(len(s) for s in self.shards)
        global_batch = batch_size * world_size
        if self.n_windows < global_batch:
            raise GptkitError(
                f"the training data is too short: {self.n_tokens:,} tokens, but one batch of {global_batch} x "
                f"{block_size} needs {global_batch * block_size + 1:,}: give more text or a smaller "
                "--batch-size / --block-size"
            )
        self.epoch = 0
        self.index = 0
        self.last_trained = global_batch * block_size  # the targets of the last global batch: all of them count
        self._order_epoch = None
        self._order = None

    def order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            # the same order as rng.permutation(n_windows), in 4 bytes a window (40 MB for 10B tokens of 1024)
            self._order = np.arange(self.n_windows, dtype=np.uint32 if self.n_windows < 2**32 else np.int64)
            np.random.default_rng([self.seed, epoch]).shuffle(self._order)
            self._order_epoch = epoch
        return self._order

    def window(self, w: int) -> np.ndarray:
        shard = int(np.searchsorted(self.first_window, w, side="right")) - 1
        begin = (w - int(self.first_window[shard])) * self.block_size
        return self.shards[shard][begin : begin + self.block_size + 1]

    def next_batch(self):
        """(x, y): int64 tensors of shape (batch_size, block_size), this process's slice of the next global batch."""
        import torch

        windows = []
        for _ in range(self.batch_size * self.world_size):
            windows.append(int(self.order(self.epoch)[self.index]))
            self.index += 1
            if self.index == self.n_windows:
                self.epoch, self.index = self.epoch + 1, 0
        mine = windows[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        rows = np.stack([self.window(w) for w in mine]).astype(np.int64)
        batch = torch.from_numpy(rows)
        return batch[:, :-1], batch[:, 1:]

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict):
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def eval_batches(
    tokens: np.ndarray | list[np.ndarray],
    n_tokens: int,
    batch_size: int,
    block_size: int,
    rank: int = 0,
    world_size: int = 1,
):
    """(x, y) batches of this process's share of the first n_tokens of tokens (an array, or shards one after the
    other), cut in sequential windows of block_size (shorter when there are fewer tokens) that do not span shards;
    process r takes windows r, r + world_size, ..."""
    import torch

    shards = [tokens] if isinstance(tokens, np.ndarray) else [s for s in tokens if len(s)]
    if not shards:
        return
    T = min(block_size, max(len(s) for s in shards) - 1)
    if T < 1:
        return
    wanted = max(1, n_tokens // T)
    windows = []  # (shard, begin)
    for shard in shards:
        for begin in range(0, len(shard) - T, T):
            if len(windows) == wanted:
                break
            windows.append((shard, begin))
    mine = windows[rank::world_size]
    for i in range(0, len(mine), batch_size):
        rows = np.stack([shard[begin : begin + T + 1] for shard, begin in mine[i : i + batch_size]]).astype(np.int64)
        batch = torch.from_numpy(rows)
        yield batch[:, :-1], batch[:, 1:]
