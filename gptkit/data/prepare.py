"""`gptkit prepare`: tokenize a corpus once, streaming, into a folder of uint16 token shards and a JSON manifest.

The input (inputs.py) is read a piece at a time and cut into jobs of about a megabyte of text, which a pool of threads
encodes (tiktoken's encoder releases the GIL, so every core encodes); the tokens are written, in input order, into
shards of exactly --shard-tokens tokens (the last one shorter). A shard appears only once complete (written beside its
name, then renamed), and the manifest, rewritten atomically after each shard, records where in the input the next
shard starts: an interrupted prepare resumes there. Memory stays a few jobs of text and tokens, whatever the corpus
size.
"""

import os
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptkit.data.inputs import Item, input_files, read_items
from gptkit.data.tokenfolder import (
    MANIFEST,
    TOKEN_DTYPE,
    check_shards,
    new_manifest,
    read_manifest,
    shard_name,
    val_start,
    write_manifest,
)
from gptkit.data.tokenizer import EOT_TEXT, EOT_TOKEN, get_tokenizer
from gptkit.errors import GptkitError
from gptkit.files import data_hash
from gptkit.options import check_prepare

SHARD_TOKENS = 100_000_000  # 200 MB a shard, as build-nanogpt's
JOB_CHARS = 1 << 20  # text per encoding job


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
    found = earlier_work(out, manifest)
    if found is not None and found["complete"]:
        if found["val_fraction"] != val_fraction:  # only the split changes
            found.update(val_fraction=val_fraction, val_start=val_start(found["tokens"], val_fraction))
            write_manifest(out, found)
        return PrepareResult(out, found, time.perf_counter() - started, 0, 0)
    if found is not None:
        manifest["shards"], manifest["resume"] = found["shards"], found["resume"]
    for stray in out.glob(".tokens_*.partial") if out.is_dir() else ():
        pid = re.fullmatch(r"\.tokens_\d+\.bin\.(\d+)\.partial", stray.name)
        if pid and not process_alive(int(pid[1])):  # left by a prepare that was killed
            stray.unlink(missing_ok=True)
    made, done = encode_into(out, manifest, files, data, progress)
    total = sum(s["tokens"] for s in manifest["shards"])
    manifest.update(complete=True, resume=None, tokens=total, val_start=val_start(total, val_fraction))
    write_manifest(out, manifest)
    return PrepareResult(out, manifest, time.perf_counter() - started, made, done)


def earlier_work(out: Path, manifest: dict) -> dict | None:
    """The manifest of the work of an earlier prepare into out, complete or not (None where out holds none);
    refuses an out that holds anything else."""
    if out.exists() and not out.is_dir():
        raise GptkitError(f"{out} is a file: give --out a folder")
    if (out / MANIFEST).is_file():
        found = read_manifest(out)
        if not same_work(found, manifest):
            raise GptkitError(f"{out} holds the tokens of other data or settings: give another --out, or delete {out}")
        check_shards(out, found)
        return found
    if out.is_dir() and any(out.iterdir()):
        raise GptkitError(f"{out} is not empty and holds no token manifest: give another --out")
    return None


def encode_into(out: Path, manifest: dict, files: list[Path], data: Path, progress) -> tuple[int, int]:
    """Encode files from where manifest says to resume into shards in out (recorded in manifest): (tokens made,
    input bytes read). On any failure, the shard being written is removed (and out, if this call made it empty)."""
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
    return made, done


def default_out(data: Path) -> Path:
    """<data>-tokens beside DATA (the suffixes dropped)."""
    data = Path(data)
    return data.parent / f"{data.name.split('.')[0] or 'data'}-tokens"
