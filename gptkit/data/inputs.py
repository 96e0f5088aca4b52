"""The input of `gptkit prepare`, read as pieces of text from any position in it, in order: a UTF-8 text file; .jsonl
/ .jsonl.gz files with a "text" field per line; .parquet files with a "text" column (FineWeb's format, read in record
batches with pyarrow); or a folder of such files (recursively, sorted). Each document (a record, or a text file among
several) is followed by <|endoftext|>. In text files a written <|endoftext|> is read as the special token (the
separator of concatenated documents); in records it is plain text. A text file is read a block at a time and cut
where encoding the pieces apart gives the tokens of encoding the text whole (split_for_encoding).
"""

import codecs
import gzip
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from gptkit.data.tokenfolder import TEXT_SUFFIXES, TOKEN_SUFFIXES, files_under, not_utf8, refuse_mixed
from gptkit.errors import GptkitError

PIECE_CHARS = 1 << 20  # text a piece of a text file holds (at least, but for the last)
READ_BYTES = 4 << 20
PARQUET_BATCH_ROWS = 1024
# Places where cutting the text and encoding the two sides apart gives exactly the tokens of encoding it whole:
# - after a newline between two non-space characters (that newline is always a pre-token of its own for GPT-2's
#   pre-tokenizer; after other whitespace it is not: "\n\nA" is "\n", "\n", "A" whole, but "\n\n" + "A" in pieces);
# - before a space between two ASCII letters (" word" starts a pre-token, and no pre-token ends in a space before a
#   letter), so that text without line breaks can be cut too.
SAFE_SPLIT = re.compile(r"(?<=\S\n)(?=\S)|(?<=[A-Za-z])(?= [A-Za-z])")


def split_for_encoding(text: str, chunk_chars: int | None = None) -> list[str]:
    """text cut at safe places into pieces of at least chunk_chars (default PIECE_CHARS) characters (the last one may
    be shorter)."""
    chunk_chars = chunk_chars or PIECE_CHARS
    pieces, start = [], 0
    while len(text) - start > chunk_chars:
        m = SAFE_SPLIT.search(text, start + chunk_chars)
        if m is None:
            break
        pieces.append(text[start : m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


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
