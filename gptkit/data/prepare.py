"""`gptkit prepare`: tokenize a corpus once, streaming, into a folder of uint16 token shards and a JSON manifest.

The input is read a block at a time and cut into jobs of about a megabyte of text, which a pool of threads encodes
(tiktoken's encoder releases the GIL, so every core encodes); the tokens are written, in input order, into shards of
exactly --shard-tokens tokens (the last one shorter). A shard appears only once complete (written beside its name,
then renamed), and the manifest, rewritten atomically after each shard, records where in the input the next shard
starts: an interrupted prepare resumes there. Memory stays a few jobs of text and tokens, whatever the corpus size.

Inputs: a UTF-8 text file; .jsonl / .jsonl.gz files with a "text" field per line; .parquet files with a "text"
column (FineWeb's format, read in record batches with pyarrow); or a folder of such files (recursively, sorted).
Each document (a record, or a text file among several) is followed by <|endoftext|>. In text files a written
<|endoftext|> is read as the special token (the separator of concatenated documents); in records it is plain text.
"""

import codecs
import gzip
import json
import os
import re
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptkit.errors import GptkitError
from gptkit.files import data_hash
from gptkit.options import check_prepare
from gptkit.data.tokenfolder import (
    MANIFEST,
    TEXT_SUFFIXES,
    TOKEN_DTYPE,
    TOKEN_SUFFIXES,
    check_shards,
    files_under,
    new_manifest,
    not_utf8,
    read_manifest,
    refuse_mixed,
    shard_name,
    val_start,
    write_manifest,
)
from gptkit.data.tokenizer import EOT_TEXT, EOT_TOKEN, get_tokenizer

SHARD_TOKENS = 100_000_000  # 200 MB a shard, as build-nanogpt's
JOB_CHARS = 1 << 20  # text per encoding job
READ_BYTES = 4 << 20
PARQUET_BATCH_ROWS = 1024
# Places where cutting the text and encoding the two sides apart gives exactly the tokens of encoding it whole:
# - after a newline between two non-space characters (that newline is always a pre-token of its own for GPT-2's
#   pre-tokenizer; after other whitespace it is not: "\n\nA" is "\n", "\n", "A" whole, but "\n\n" + "A" in pieces);
# - before a space between two ASCII letters (" word" starts a pre-token, and no pre-token ends in a space before a
#   letter), so that text without line breaks can be cut too.
SAFE_SPLIT = re.compile(r"(?<=\S\n)(?=\S)|(?<=[A-Za-z])(?= [A-Za-z])")


def split_for_encoding(text: str, chunk_chars: int | None = None) -> list[str]:
    """text cut at safe places into pieces of at least chunk_chars (default JOB_CHARS) characters (the last one may
    be shorter)."""
    chunk_chars = chunk_chars or JOB_CHARS
    pieces, start = [], 0
    while len(text) - start > chunk_chars:
        m = SAFE_SPLIT.search(text, start + chunk_chars)
        if m is None:
            break
        pieces.append(text[start : m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


# --- inputs ----------------------------------------------------------------------------------------------------------


def kind_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".jsonl") or name.endswith(".jsonl.gz"):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def input_files(path: Path) -> list[Path]:
    """The files of DATA to tokenize: the one file given, or a folder's text, jsonl and parquet files (recursively,
    sorted); refuses a folder that holds none, or pre-tokenized files beside them."""
    path = Path(path)
    if path.is_file():
        if path.name.lower().endswith(TOKEN_SUFFIXES):
            raise GptkitError(f"{path} is a token file, not text: give gptkit train the folder that holds it")
        return [path]
    if not path.is_dir():
        raise GptkitError(
            f"{path} does not exist: give a text, .jsonl, .jsonl.gz or .parquet file, or a folder of them"
        )
    files, tokenized = files_under(path, TEXT_SUFFIXES), files_under(path, TOKEN_SUFFIXES)
    refuse_mixed(path, tokenized, files)
    if tokenized:
        raise GptkitError(
            f"{path} holds token files ({tokenized[0].name}) but neither nanoGPT's train.bin nor build-nanogpt's "
            "*_train_*.npy shards, nor gptkit's manifest.json: give gptkit train one of those folders"
        )
    if not files:
        raise GptkitError(f"{path} holds no .txt, .jsonl, .jsonl.gz or .parquet files")
    return files


@dataclass
class Item:
    """A piece of input text and where the input after it starts."""

    text: str
    special: bool  # read <|endoftext|> in the text as the special token
    eot: bool  # an <|endoftext|> follows
    position: tuple[int, int]  # (file index, offset): bytes in a text file, lines of jsonl, rows of parquet
    done: int  # input bytes read so far in this file (for the progress bar)


def text_items(path: Path, index: int, start: int, separate: bool):
    """Pieces of a UTF-8 text file from byte offset start, cut at safe places (see SAFE_SPLIT)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, carry = start, ""
    with open(path, "rb") as f:
        f.seek(start)
        while True:
            read_at = f.tell()
            block = f.read(READ_BYTES)
            pending = len(decoder.getstate()[0])
            try:
                carry += decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                raise not_utf8(path, read_at - pending + e.start) from None
            pieces = split_for_encoding(carry)
            if block:
                carry = pieces.pop()
            for i, piece in enumerate(pieces):
                offset += len(piece.encode())
                last = not block and i == len(pieces) - 1
                position = (index + 1, 0) if last else (index, offset)
                yield Item(piece, True, last and separate, position, offset)
            if not block:
                return


def jsonl_items(path: Path, index: int, start: int):
    """The documents of a .jsonl or .jsonl.gz file from line start + 1 on."""
    gzipped = path.name.lower().endswith(".gz")
    try:
        with open(path, "rb") as raw, gzip.open(raw) if gzipped else raw as f:
            for number, line in enumerate(f, 1):
                if number <= start or not line.strip():
                    continue
                where = f"{path} line {number}"
                try:
                    doc = json.loads(line)
                except ValueError as e:
                    raise GptkitError(
                        f"{where}: not valid JSON ({getattr(e, 'msg', e)}): each line must be a JSON object with "
                        'a "text" field'
                    ) from None
                if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
                    raise GptkitError(f'{where}: no "text" field (a string): each line must be {{"text": "..."}}')
                yield Item(doc["text"], False, True, (index, number), raw.tell())
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise GptkitError(f"{path} is not a complete gzip file ({e}): download it again") from None


def parquet_items(path: Path, index: int, start: int):
    """The documents of a parquet file's "text" column from row start + 1 on, a record batch at a time."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise GptkitError("reading .parquet files needs pyarrow: pip install 'gptkit[parquet]'") from None
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise GptkitError(f"{path} is not a readable parquet file ({e})") from None
    columns = parquet.schema_arrow.names
    if "text" not in columns:
        raise GptkitError(f'{path} has no "text" column (it has {", ".join(columns)}): give the documents in "text"')
    total_rows, size, row = max(1, parquet.metadata.num_rows), path.stat().st_size, 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=["text"]):
        if row + batch.num_rows <= start:
            row += batch.num_rows
            continue
        for text in batch.column(0).to_pylist():
            row += 1
            if row <= start:
                continue
            if not isinstance(text, str):
                raise GptkitError(f"{path} row {row}: the text is null: give every row a text")
            yield Item(text, False, True, (index, row), size * row // total_rows)


def read_items(files: list[Path], start: tuple[int, int]):
    """Every piece of input text from position start on, in order."""
    before = sum(f.stat().st_size for f in files[: start[0]])
    for index in range(start[0], len(files)):
        path, offset = files[index], start[1] if index == start[0] else 0
        kind = kind_of(path)
        if kind == "text":
            items = text_items(path, index, offset, separate=len(files) > 1)
        elif kind == "jsonl":
            items = jsonl_items(path, index, offset)
        else:
            items = parquet_items(path, index, offset)
        for item in items:
            item.done += before
            yield item
        before += path.stat().st_size


# --- encoding --------------------------------------------------------------------------------------------------------


@dataclass
class Job:
    start: tuple[int, int]  # the input position of its first item
    items: list[Item]


def make_jobs(items, start: tuple[int, int]):
    job, chars = Job(start, []), 0
    for item in items:
        job.items.append(item)
        chars += len(item.text)
        if chars >= JOB_CHARS:
            yield job
            job, chars = Job(item.position, []), 0
    if job.items:
        yield job


def encode_job(items: list[Item]) -> np.ndarray:
    enc = get_tokenizer()
    parts = []
    for item in items:
        if item.special:
            parts.append(enc.encode_to_numpy(item.text, allowed_special={EOT_TEXT}))
        else:
            parts.append(enc.encode_to_numpy(item.text, allowed_special=set(), disallowed_special=()))
        if item.eot:
            parts.append(np.array([EOT_TOKEN], dtype=np.uint32))
    return np.concatenate(parts).astype(TOKEN_DTYPE)


def encode_in_order(jobs, workers: int):
    """(job, its tokens) of each job, in order, encoded by a pool of threads a few jobs ahead."""
    with ThreadPoolExecutor(workers) as pool:
        ahead = deque()
        for job in jobs:
            ahead.append((job, pool.submit(encode_job, job.items)))
            if len(ahead) > 2 * workers:
                job, future = ahead.popleft()
                yield job, future.result()
        while ahead:
            job, future = ahead.popleft()
            yield job, future.result()


def workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --- shards and manifest ---------------------------------------------------------------------------------------------


class ShardWriter:
    """Writes the token stream into shards of exactly shard_tokens tokens; a shard is renamed into place when
    complete, and the manifest then records it and the input position where the next shard starts."""

    def __init__(self, out: Path, manifest: dict):
        self.out = out
        self.manifest = manifest
        self.shard_tokens = manifest["shard_tokens"]
        self.file = None
        self.count = 0

    @property
    def partial(self) -> Path:
        """Where the next shard is written until complete (named by this process: two prepares of the same data into
        the same folder, such as two runs starting on one text, each write their own and rename the same shard)."""
        return self.out / f".{shard_name(len(self.manifest['shards']))}.{os.getpid()}.partial"

    def write(self, tokens: np.ndarray, job: Job, end: tuple[int, int], skipped: int):
        """Append tokens (the tokens of job from index skipped on; the input after job starts at end)."""
        i = 0
        while i < len(tokens):
            if self.file is None:
                self.out.mkdir(parents=True, exist_ok=True)
                self.file = open(self.partial, "wb")
            take = min(len(tokens) - i, self.shard_tokens - self.count)
            self.file.write(tokens[i : i + take].tobytes())
            self.count += take
            i += take
            if self.count == self.shard_tokens:
                if i == len(tokens):
                    resume = {"file": end[0], "offset": end[1], "skip": 0}
                else:
                    resume = {"file": job.start[0], "offset": job.start[1], "skip": skipped + i}
                self.close_shard(resume)

    def close_shard(self, resume: dict | None):
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.file = None
        name = shard_name(len(self.manifest["shards"]))
        os.replace(self.partial, self.out / name)
        self.manifest["shards"].append({"file": name, "tokens": self.count})
        self.manifest["resume"] = resume
        self.count = 0
        write_manifest(self.out, self.manifest)

    def finish(self):
        if self.file is not None:
            self.close_shard(None)

    def abort(self):
        if self.file is not None:
            self.file.close()
            self.file = None
            self.partial.unlink(missing_ok=True)


def same_work(a: dict, b: dict) -> bool:
    """Whether two manifests describe the same tokenization (sources by content, settings)."""
    keys = ("format_version", "tokenizer", "shard_tokens")
    return all(a.get(k) == b.get(k) for k in keys) and [s["sha256"] for s in a["sources"]] == [
        s["sha256"] for s in b["sources"]
    ]


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@dataclass
class PrepareResult:
    out: Path
    manifest: dict
    seconds: float
    tokens_made: int  # tokens made in this call (less than the total when resumed or already done)
    bytes_read: int


def prepare(
    data: Path,
    out: Path,
    val_fraction: float = 0.1,
    shard_tokens: int = SHARD_TOKENS,
    progress=None,
    files: list[Path] | None = None,
    hashes: list[str] | None = None,
) -> PrepareResult:
    """Tokenize DATA into out (or finish an interrupted prepare there). progress(done_bytes, total_bytes, tokens) is
    called as the work goes on."""
    started = time.perf_counter()
    check_prepare(data, val_fraction, shard_tokens)
    files = files or input_files(data)
    hashes = hashes or [data_hash([f]) for f in files]
    manifest = new_manifest(files, hashes, shard_tokens, val_fraction)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GptkitError(f"{out} is a file: give --out a folder")
    if (out / MANIFEST).is_file():
        found = read_manifest(out)
        if not same_work(found, manifest):
            raise GptkitError(f"{out} holds the tokens of other data or settings: give another --out, or delete {out}")
        check_shards(out, found)
        if found["complete"]:
            if found["val_fraction"] != val_fraction:  # only the split changes
                found.update(val_fraction=val_fraction, val_start=val_start(found["tokens"], val_fraction))
                write_manifest(out, found)
            return PrepareResult(out, found, time.perf_counter() - started, 0, 0)
        manifest["shards"], manifest["resume"] = found["shards"], found["resume"]
    elif out.is_dir() and any(out.iterdir()):
        raise GptkitError(f"{out} is not empty and holds no token manifest: give another --out")
    for stray in out.glob(".tokens_*.partial") if out.is_dir() else ():
        pid = re.fullmatch(r"\.tokens_\d+\.bin\.(\d+)\.partial", stray.name)
        if pid and not process_alive(int(pid[1])):  # left by a prepare that was killed
            stray.unlink(missing_ok=True)

    resume = manifest["resume"]
    start, skip = (resume["file"], resume["offset"]), resume["skip"]
    total_bytes = sum(f.stat().st_size for f in files)
    writer = ShardWriter(out, manifest)
    made, done = 0, 0
    created = not out.exists()
    try:
        for job, tokens in encode_in_order(make_jobs(read_items(files, start), start), workers()):
            dropped = min(skip, len(tokens))
            skip -= dropped
            writer.write(tokens[dropped:], job, job.items[-1].position, dropped)
            made += len(tokens) - dropped
            done = job.items[-1].done
            if progress:
                progress(done, total_bytes, made)
        if not manifest["shards"] and writer.count == 0:
            raise GptkitError(f"{data} is empty: give it some text")
        writer.finish()
    except BaseException:
        writer.abort()
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    total = sum(s["tokens"] for s in manifest["shards"])
    manifest.update(complete=True, resume=None, tokens=total, val_start=val_start(total, val_fraction))
    write_manifest(out, manifest)
    return PrepareResult(out, manifest, time.perf_counter() - started, made, done)


def default_out(data: Path) -> Path:
    """<data>-tokens beside DATA (the suffixes dropped)."""
    data = Path(data)
    return data.parent / f"{data.name.split('.')[0] or 'data'}-tokens"
