"""gptkit prepare and the token sources of gptkit train: input formats, exact tokens, shards, resume, pre-tokenized
folders, and one-line errors for bad input. Every corpus is tiny and generated here."""

import errno
import gzip
import json
import os
import re

import numpy as np
import pytest
from conftest import SHAKESPEARE_PATH, assert_one_line_error
from typer.testing import CliRunner

from gptkit.data import inputs
from gptkit.data import prepare as prep
from gptkit.cli import app
from gptkit.data.loader import load_tokens, open_data
from gptkit.errors import GptkitError
from gptkit.files import data_hash
from gptkit.data.prepare import prepare
from gptkit.data.tokenfolder import MANIFEST, shard_name
from gptkit.data.tokenizer import EOT_TOKEN, encode, get_tokenizer

SHAKESPEARE = SHAKESPEARE_PATH.read_text(encoding="utf-8")[:30_000]
DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé text, emoji 🙂 and a literal <|endoftext|> inside a web page.",
    "Line one\nLine two\n\n  indented",
] * 20


def ordinary(text: str) -> list[int]:
    return get_tokenizer().encode_ordinary(text)


def docs_tokens(docs) -> list[int]:
    """build-nanogpt's tokens of documents (encode_ordinary), each followed by <|endoftext|>."""
    return [t for doc in docs for t in ordinary(doc) + [EOT_TOKEN]]


def all_tokens(folder) -> list[int]:
    manifest = json.loads((folder / MANIFEST).read_text())
    return np.concatenate([np.fromfile(folder / s["file"], dtype=np.uint16) for s in manifest["shards"]]).tolist()


def write_jsonl(path, docs, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc, "id": 1}) + "\n")
    return path


def write_parquet(path, docs, column="text"):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: docs, "score": [1.0] * len(docs)}), path, row_group_size=7)
    return path


@pytest.fixture
def small_jobs(monkeypatch):
    """Jobs, pieces and reads of a few hundred characters, so that tiny corpora make many jobs, shards and resume
    points."""
    monkeypatch.setattr(prep, "JOB_CHARS", 300)
    monkeypatch.setattr(inputs, "PIECE_CHARS", 300)
    monkeypatch.setattr(inputs, "READ_BYTES", 1000)


# --- formats and exact tokens ----------------------------------------------------------------------------------------


def test_text_file_gives_tiktokens_whole_text_encoding(tmp_path, small_jobs):
    text = tmp_path / "a.txt"
    text.write_text(SHAKESPEARE + "<|endoftext|>" + SHAKESPEARE[:500])
    result = prepare(text, tmp_path / "out", shard_tokens=1000)
    assert all_tokens(tmp_path / "out") == encode(text.read_text())
    manifest = result.manifest
    assert [s["tokens"] for s in manifest["shards"][:-1]] == [1000] * (len(manifest["shards"]) - 1)
    assert manifest["complete"] and manifest["tokens"] == len(encode(text.read_text()))
    assert manifest["val_start"] == manifest["tokens"] - int(manifest["tokens"] * 0.1)
    assert manifest["sources"][0]["sha256"] == data_hash([text]) and manifest["tokenizer"] == "gpt2"


def test_text_without_line_breaks_is_cut_exactly(tmp_path, small_jobs):
    text = " ".join(SHAKESPEARE.split())  # no newline at all: cut before spaces between letters
    pieces = inputs.split_for_encoding(text, 300)
    assert len(pieces) > 50 and "".join(pieces) == text
    path = tmp_path / "one-line.txt"
    path.write_text(text)
    prepare(path, tmp_path / "out", shard_tokens=777)
    assert all_tokens(tmp_path / "out") == encode(text)


def test_folder_of_texts_separates_documents(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("second document\n")
    (folder / "sub" / "c.txt").write_text("third")
    (folder / "a.txt").write_text("first document")
    prepare(folder, tmp_path / "out")
    expected = encode("first document") + [EOT_TOKEN] + encode("second document\n") + [EOT_TOKEN]
    assert all_tokens(tmp_path / "out") == expected + encode("third") + [EOT_TOKEN]


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "parquet", "folder"])
def test_document_formats(tmp_path, small_jobs, kind):
    if kind == "jsonl":
        data = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    elif kind == "jsonl.gz":
        data = write_jsonl(tmp_path / "docs.jsonl.gz", DOCS, gzip.open)
    elif kind == "parquet":
        data = write_parquet(tmp_path / "docs.parquet", DOCS)
    else:  # FineWeb-style: several parquet files (and a jsonl) in one folder, read in name order
        data = tmp_path / "corpus"
        data.mkdir()
        write_parquet(data / "000_00000.parquet", DOCS[:25])
        write_parquet(data / "001_00000.parquet", DOCS[25:50])
        write_jsonl(data / "002.jsonl", DOCS[50:])
    prepare(data, tmp_path / "out", shard_tokens=500)
    assert all_tokens(tmp_path / "out") == docs_tokens(DOCS)


def test_prepare_command_and_training_on_its_folder(tmp_path):
    data = write_jsonl(tmp_path / "docs.jsonl", [SHAKESPEARE[i : i + 2000] for i in range(0, 30_000, 2000)])
    result = CliRunner().invoke(app, ["prepare", str(data), "--shard-tokens", "2000", "--val-fraction", "0.2"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "docs-tokens"
    assert "9,129 tokens in 5 shard(s)" in result.output and f"gptkit train {out}" in result.output
    again = CliRunner().invoke(app, ["prepare", str(data), "--shard-tokens", "2000", "--val-fraction", "0.2"])
    assert again.exit_code == 0 and "already prepared" in again.output
    source = open_data(out)
    assert source.format == "gptkit" and source.val_fraction == 0.2 and len(source.shards) == 5
    assert all(isinstance(s, np.memmap) for s in source.shards)
    train, val = source.split(0.2)
    assert sum(map(len, val)) == source.tokens - json.loads((out / MANIFEST).read_text())["val_start"]
    assert np.concatenate(train + val).tolist() == all_tokens(out)


# --- resume ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["txt", "jsonl.gz", "parquet"])
def test_interrupted_prepare_resumes_where_it_stopped(tmp_path, small_jobs, monkeypatch, kind):
    if kind == "txt":
        data = tmp_path / "a.txt"
        data.write_text(SHAKESPEARE)
    elif kind == "jsonl.gz":
        data = write_jsonl(tmp_path / "a.jsonl.gz", DOCS * 4, gzip.open)
    else:
        data = write_parquet(tmp_path / "a.parquet", DOCS * 4)
    prepare(data, tmp_path / "straight", shard_tokens=613)

    close_shard, encoded = prep.ShardWriter.close_shard, []

    def crash_after_three_shards(self, resume):
        if len(self.manifest["shards"]) == 3:
            raise KeyboardInterrupt
        close_shard(self, resume)

    monkeypatch.setattr(prep.ShardWriter, "close_shard", crash_after_three_shards)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        prepare(data, out, shard_tokens=613)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST] + [shard_name(i) for i in range(3)]
    manifest = json.loads((out / MANIFEST).read_text())
    assert not manifest["complete"] and len(manifest["shards"]) == 3
    with pytest.raises(GptkitError, match="interrupted: run gptkit prepare again"):
        open_data(out)

    monkeypatch.setattr(prep.ShardWriter, "close_shard", close_shard)
    killed = out / f".{shard_name(3)}.999999999.partial"  # as left by a prepare killed with SIGKILL
    killed.write_bytes(b"\0" * 100)
    encode_job = prep.encode_job
    monkeypatch.setattr(prep, "encode_job", lambda items: encoded.append(1) or encode_job(items))
    prepare(data, out, shard_tokens=613)
    straight = json.loads((tmp_path / "straight" / MANIFEST).read_text())
    assert json.loads((out / MANIFEST).read_text())["shards"] == straight["shards"] and not killed.exists()
    assert all_tokens(out) == all_tokens(tmp_path / "straight")
    assert len(encoded) < len(list(prep.make_jobs(inputs.read_items([data], (0, 0)), (0, 0))))  # not from the start


def test_prepare_refuses_a_folder_of_other_data(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one text")
    b.write_text("another text")
    prepare(a, tmp_path / "out")
    with pytest.raises(GptkitError, match="other data or settings"):
        prepare(b, tmp_path / "out")


# --- pre-tokenized folders ------------------------------------------------------------------------------------------


def test_nanogpt_and_build_nanogpt_folders(tmp_path):
    tokens = np.arange(50_000, dtype=np.uint16) % 50257
    nano = tmp_path / "nanogpt"
    nano.mkdir()
    tokens[:40_000].tofile(nano / "train.bin")
    tokens[40_000:].tofile(nano / "val.bin")
    source = open_data(nano)
    train, val = source.split(0.1)
    assert source.format == "nanogpt" and source.split_kind == "files"
    assert isinstance(train[0], np.memmap) and train[0].tolist() == tokens[:40_000].tolist()
    assert val[0].tolist() == tokens[40_000:].tolist()

    build = tmp_path / "edu_fineweb10B"
    build.mkdir()
    np.save(build / "edufineweb_val_000000.npy", tokens[:5000])
    np.save(build / "edufineweb_train_000001.npy", tokens[5000:30_000])
    np.save(build / "edufineweb_train_000002.npy", tokens[30_000:])
    source = open_data(build)
    train, val = source.split(0.1)
    assert source.format == "build-nanogpt" and [len(s) for s in train] == [25_000, 20_000]
    assert all(isinstance(s, np.memmap) for s in train + val) and val[0].tolist() == tokens[:5000].tolist()


# --- bad input -------------------------------------------------------------------------------------------------------


def run_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"ok " * 1000 + "caf\xe9".encode("latin-1"), "not UTF-8 text (invalid byte at offset 3003)"),
    ],
    ids=["missing", "empty", "not UTF-8"],
)
def test_missing_empty_and_non_utf8_text(tmp_path, small_jobs, content, message):
    """Refused alike where train and eval read a text (through the token cache) and by gptkit prepare; the offset
    of a bad byte counts from the start of the file, not of the read it is in."""
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(GptkitError, match=re.escape(message)):
        load_tokens(path)
    assert_one_line_error(run_cli("prepare", path, "--out", tmp_path / "out"), message)
    assert not (tmp_path / "out").exists() and not list((tmp_path / "cache").rglob("*.bin"))


def test_bad_documents_and_folders(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("prepare", tmp_path / "empty", "--out", out), "holds no .txt, .jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n\n{"text": "fine", oops}\n')
    assert_one_line_error(run_cli("prepare", bad, "--out", out), f"{bad} line 3: not valid JSON")
    bad.write_text('{"text": "fine"}\n{"content": "no text"}\n')
    assert_one_line_error(run_cli("prepare", bad, "--out", out), f'{bad} line 2: no "text" field')
    no_text = write_parquet(tmp_path / "bad.parquet", ["a", "b"], column="content")
    assert_one_line_error(run_cli("prepare", no_text, "--out", out), 'has no "text" column (it has content, score)')
    assert not out.exists()  # nothing half-written by any of them

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.txt").write_text("text")
    np.arange(10, dtype=np.uint16).tofile(mixed / "train.bin")
    assert_one_line_error(
        run_cli("prepare", mixed, "--out", out), "mixes pre-tokenized files (train.bin) with text (a.txt)"
    )
    assert_one_line_error(run_cli("train", mixed, "--model", "nano"), "mixes pre-tokenized files (train.bin) with text")


def test_bad_token_folders(tmp_path):
    folder = tmp_path / "nanogpt"
    folder.mkdir()
    (folder / "train.bin").write_bytes(b"\x01\x00" * 100 + b"\x01")
    assert_one_line_error(run_cli("train", folder, "--model", "nano"), "train.bin has an odd number of bytes (201)")
    tokens = np.full(1000, 7, dtype=np.uint16)
    tokens[345] = 60_000
    tokens.tofile(folder / "train.bin")
    assert_one_line_error(run_cli("train", folder, "--model", "nano"), "token 345 is 60000, outside GPT-2's vocabulary")

    build = tmp_path / "build"
    build.mkdir()
    np.save(build / "x_train_000001.npy", tokens)
    assert_one_line_error(run_cli("train", build, "--model", "nano"), "token 345 is 60000")
    np.save(build / "x_train_000001.npy", tokens.astype(np.int32))
    assert_one_line_error(
        run_cli("train", build, "--model", "nano"), "holds int32 of shape (1000,), not a 1-D array of uint16"
    )
    (build / "x_train_000001.npy").write_bytes(b"\x93NUMPY garbage")
    assert_one_line_error(run_cli("train", build, "--model", "nano"), "is not a readable .npy file")


def test_manifest_that_does_not_match_its_shards(tmp_path):
    data = tmp_path / "a.txt"
    data.write_text(SHAKESPEARE)
    out = tmp_path / "out"
    prepare(data, out, shard_tokens=2000)
    with open(out / shard_name(1), "r+b") as f:
        f.truncate(100)
    assert_one_line_error(
        run_cli("train", out, "--model", "nano"), "does not match its shards (tokens_000001.bin has 100 bytes"
    )
    (out / shard_name(1)).unlink()
    assert_one_line_error(
        run_cli("prepare", data, "--out", out, "--shard-tokens", 2000), "tokens_000001.bin is missing"
    )


def test_disk_full_leaves_nothing_half_written_and_the_next_prepare_resumes(tmp_path, small_jobs, monkeypatch):
    data = tmp_path / "a.txt"
    data.write_text(SHAKESPEARE)
    out = tmp_path / "out"
    write, writes = prep.ShardWriter.write, []

    def disk_full_at_the_20th_write(self, *args):
        writes.append(1)
        if len(writes) == 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.partial))
        write(self, *args)

    monkeypatch.setattr(prep.ShardWriter, "write", disk_full_at_the_20th_write)
    assert_one_line_error(run_cli("prepare", data, "--out", out, "--shard-tokens", 1000), "no space left on the device")
    left = sorted(p.name for p in out.iterdir())
    assert left == [MANIFEST] + [shard_name(i) for i in range(len(left) - 1)] and len(left) > 1
    monkeypatch.setattr(prep.ShardWriter, "write", write)
    result = run_cli("prepare", data, "--out", out, "--shard-tokens", 1000)
    assert result.exit_code == 0, result.output
    assert all_tokens(out) == encode(SHAKESPEARE)
