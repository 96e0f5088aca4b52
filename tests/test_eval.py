import json
import math
import os
import re

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error
from torch.nn import functional as F
from typer.testing import CliRunner

from gptkit.checkpoint.folder import read_metadata, save_checkpoint
from gptkit.cli import app
from gptkit.data.loader import TokenSequence, load_tokens, open_data, split_tokens
from gptkit.errors import GptkitError
from gptkit.evaluation.hellaswag import evaluate_hellaswag, hellaswag_rows, read_hellaswag, score_endings
from gptkit.evaluation.loss import evaluate_lm, lm_windows, token_byte_lengths
from gptkit.evaluation.tokens import validation_split
from gptkit.files import write_json
from gptkit.model.gpt import GPT
from gptkit.training.runfolder import lock_run_folder
from gptkit.training.runlock import EVALS_LOCK_FILE, folder_lock
from gptkit.training.runlog import read_records
from gptkit.data.tokenizer import encode, get_tokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak. Ünïcödé ✓ 🙂\n" * 6
HELLASWAG = [
    {"ctx": "The cat sat on the", "endings": ["mat.", "moon.", "idea.", "seven."], "label": 0},
    {"ctx": "She poured the coffee into a", "endings": ["river.", "cup.", "shoe.", "cloud."], "label": 1},
    {"ctx": "He locked the door with a", "endings": ["banana.", "song.", "key.", "whisper."], "label": 2},
]


@pytest.fixture(autouse=True)
def token_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTKIT_CACHE_DIR", str(tmp_path / "cache"))


def run(*args):
    result = CliRunner().invoke(app, ["eval", *map(str, args)])
    return result


def run_json(*args) -> dict:
    result = run(*args, "--json", "--device", "cpu", "--dtype", "float32")  # in-process evaluations run there
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def random_tokens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50257, n).astype(np.uint16)


@pytest.mark.parametrize("stride", [32, 7])
def test_loss_equals_transformers(tiny_model, tiny_checkpoint, stride):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(tiny_checkpoint).eval()
    tokens = random_tokens(150)
    # windows of 32 inputs + 1 target token fit the model's 64 positions, so HF can be given each window as it is
    total, scored = 0.0, 0
    for begin, end, n_scored in lm_windows(len(tokens), 32, stride):
        window = torch.from_numpy(tokens[begin : end + 1].astype(np.int64))[None]
        labels = window.clone()
        labels[:, :-n_scored] = -100
        with torch.no_grad():
            total += hf(window, labels=labels).loss.item() * n_scored
        scored += n_scored
    result = evaluate_lm(tiny_model, tokens, block_size=32, stride=stride, batch_size=3)
    assert scored == result["tokens"] == len(tokens) - 1
    assert result["loss"] == pytest.approx(total / scored, abs=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))


def test_stride_one_gives_each_token_its_full_context(tiny_model):
    tokens = random_tokens(40, seed=1)
    block = 16
    losses = []
    for j in range(1, len(tokens)):  # target j, predicted from (at most) the block tokens before it
        context = torch.from_numpy(tokens[max(0, j - block) : j].astype(np.int64))[None]
        with torch.no_grad():
            logits, _ = tiny_model(context)
        losses.append(F.cross_entropy(logits[0, -1], torch.tensor(int(tokens[j]))).item())
    result = evaluate_lm(tiny_model, tokens, block_size=block, stride=1, batch_size=5)
    assert result["loss"] == pytest.approx(sum(losses) / len(losses), abs=1e-5)


def test_windows_score_every_token_once():
    for n, block, stride in [(2, 8, 8), (100, 8, 8), (101, 8, 3), (9, 8, 1), (50, 64, 64)]:
        windows = list(lm_windows(n, block, stride))
        scored = [t for begin, end, k in windows for t in range(end - k + 1, end + 1)]
        assert scored == list(range(1, n))
        assert all(end - begin <= block and k <= end - begin for begin, end, k in windows)


def test_bits_per_byte_and_max_tokens(tiny_model):
    tokens = np.array(encode(TEXT), dtype=np.uint16)
    result = evaluate_lm(tiny_model, tokens, batch_size=2)
    first_token_bytes = len(get_tokenizer().decode_single_token_bytes(int(tokens[0])))
    assert result["bytes"] == len(TEXT.encode()) - first_token_bytes
    assert result["bits_per_byte"] == pytest.approx(result["loss"] * result["tokens"] / math.log(2) / result["bytes"])
    capped = evaluate_lm(tiny_model, tokens, max_tokens=10)
    assert capped["tokens"] == 10


def test_text_file_json_and_evals_log(tiny_checkpoint, tmp_path):
    text = tmp_path / "a.txt"
    text.write_text(TEXT)
    record = run_json(tiny_checkpoint, text, "--block-size", "32", "--stride", "16")
    lm = record["lm"]
    assert lm["tokens"] == len(encode(TEXT)) - 1
    assert lm["evaluated"]["text"] == str(text.resolve())
    assert record["settings"]["stride"] == 16 and record["settings"]["block_size"] == 32
    logged = [json.loads(line) for line in (tiny_checkpoint / "evals.jsonl").read_text().splitlines()]
    assert len(logged) == 1 and logged[0]["lm"]["loss"] == lm["loss"]
    assert logged[0]["lm"]["evaluated"]["sha256"] == load_tokens(text)[1]

    table = run(tiny_checkpoint, text, "--dtype", "float32")
    assert table.exit_code == 0 and "bits per byte" in table.stdout
    assert len((tiny_checkpoint / "evals.jsonl").read_text().splitlines()) == 2


def test_folder_input(tiny_checkpoint, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("Hello there.")
    (folder / "b.txt").write_text(TEXT)
    lm = run_json(tiny_checkpoint, folder)["lm"]
    # each document is followed by <|endoftext|>; the first token is never a target
    assert lm["tokens"] == len(encode("Hello there.")) + 1 + len(encode(TEXT)) + 1 - 1
    assert lm["bytes"] == len(("Hello there." + TEXT).encode()) - len(b"Hello")


def with_training_data(checkpoint, data_path, sha256, val_fraction=0.25, format="text"):
    meta = read_metadata(checkpoint)
    meta["data"] = {
        "path": str(data_path),
        "format": format,
        "sha256": sha256,
        "tokens": 0,
        "val_fraction": val_fraction,
        "split": "tail",
    }
    write_json(checkpoint / "gptkit.json", meta)


def test_validation_split_from_metadata(tiny_model, tiny_checkpoint, tmp_path):
    data = tmp_path / "train.txt"
    data.write_text(TEXT)
    tokens, sha256 = load_tokens(data)
    with_training_data(tiny_checkpoint, data, sha256)
    lm = run_json(tiny_checkpoint)["lm"]
    _, val = split_tokens(tokens, 0.25)
    assert lm["loss"] == pytest.approx(evaluate_lm(tiny_model, val)["loss"], abs=1e-6)
    assert lm["evaluated"] == {"validation_split_of": str(data), "sha256": sha256, "val_fraction": 0.25}

    data.write_text(TEXT + "more")
    changed = run(tiny_checkpoint)
    assert changed.exit_code == 1 and "has changed since" in changed.output
    data.unlink()
    gone = run(tiny_checkpoint)
    assert gone.exit_code == 1 and "no longer exists" in gone.output


def test_token_sequence_reads_its_arrays_as_one():
    parts = [random_tokens(n, seed=n) for n in (5, 0, 1, 7, 3)]
    whole = np.concatenate(parts)
    tokens = TokenSequence(parts)
    assert len(tokens) == len(whole) == 16
    for begin in range(len(whole) + 1):
        for end in range(len(whole) + 2):
            assert tokens[begin:end].tolist() == whole[begin:end].tolist()
    assert tokens[-3:].tolist() == whole[-3:].tolist() and tokens[:].dtype == np.uint16
    assert [tokens[i] for i in range(-16, 16)] == [whole[i] for i in range(-16, 16)]
    with pytest.raises(IndexError):
        tokens[16]
    assert np.asarray(tokens).tolist() == tokens.tolist() == whole.tolist()
    for n in (0, 1, 5, 6, 9, 16, 20):
        assert tokens.head(n).tolist() == whole[:n].tolist()
    assert len(TokenSequence([])) == 0 and TokenSequence([])[0:5].tolist() == []


@pytest.fixture
def token_folder(text, tmp_path):
    """The Shakespeare excerpt (about 11k tokens) prepared into shards of 500 tokens, the last 25% for validation."""
    from gptkit.data.prepare import prepare

    return prepare(text, tmp_path / "tokens", val_fraction=0.25, shard_tokens=500).out


class CountingReads(TokenSequence):
    """A TokenSequence that records the length of each read."""

    reads: list[int]

    def read(self, begin, end):
        self.reads.append(end - begin)
        return super().read(begin, end)


@pytest.mark.parametrize("block_size, stride, batch_size, max_tokens", [(64, 64, 4, None), (40, 24, 3, None),
                                                                         (33, 33, 2, 700)])  # fmt: skip
def test_shards_evaluate_as_their_concatenation(tiny_model, token_folder, block_size, stride, batch_size, max_tokens):
    _, val_shards = open_data(token_folder).split(0.25)
    assert len(val_shards) >= 5  # windows cross shard boundaries at many offsets
    whole = np.concatenate(val_shards)
    streamed = CountingReads(val_shards)
    streamed.reads = []
    settings = {"block_size": block_size, "stride": stride, "batch_size": batch_size, "max_tokens": max_tokens}
    result, in_memory = evaluate_lm(tiny_model, streamed, **settings), evaluate_lm(tiny_model, whole, **settings)
    for key in ("loss", "perplexity", "bits_per_byte", "tokens", "bytes", "windows"):
        assert result[key] == in_memory[key], key
    n_tokens = len(whole) if max_tokens is None else max_tokens + 1
    assert result["tokens"] == n_tokens - 1
    assert result["bytes"] == int(token_byte_lengths()[whole[1:n_tokens]].sum())
    assert max(streamed.reads) == block_size + 1  # a window at a time, never the split
    assert sum(streamed.reads) == sum(end + 1 - begin for begin, end, _ in lm_windows(n_tokens, block_size, stride))


def test_eval_of_a_token_folder_streams_its_shards(tiny_model, tiny_checkpoint, token_folder):
    source = open_data(token_folder)
    with_training_data(tiny_checkpoint, token_folder, source.digest, format="gptkit")
    val, evaluated = validation_split(tiny_checkpoint, quiet=True)
    assert isinstance(val, TokenSequence) and all(isinstance(part, np.memmap) for part in val.parts)
    assert val.tolist() == np.concatenate(source.split(0.25)[1]).tolist()
    assert evaluated == {"validation_split_of": str(token_folder), "sha256": source.digest, "val_fraction": 0.25}
    assert len(validation_split(tiny_checkpoint, quiet=True, max_tokens=600)[0]) == 601

    options = ["--block-size", "40", "--stride", "24", "--batch-size", "3"]
    lm = run_json(tiny_checkpoint, *options)["lm"]
    expected = evaluate_lm(tiny_model, np.concatenate(source.split(0.25)[1]), 40, 24, 3)
    for key in ("tokens", "bytes", "windows"):
        assert lm[key] == expected[key], key
    assert lm["loss"] == pytest.approx(expected["loss"], abs=1e-6)
    assert lm["bits_per_byte"] == pytest.approx(expected["bits_per_byte"], abs=1e-6)

    # the folder as TEXT: all its shards, train and validation, one after the other
    lm = run_json(tiny_checkpoint, token_folder, *options)["lm"]
    expected = evaluate_lm(tiny_model, np.concatenate(source.shards), 40, 24, 3)
    assert lm["tokens"] == expected["tokens"] == source.tokens - 1 and lm["bytes"] == expected["bytes"]
    assert lm["loss"] == pytest.approx(expected["loss"], abs=1e-6)
    assert lm["evaluated"] == {"text": str(token_folder.resolve()), "sha256": source.digest}


def test_hellaswag_scores_equal_direct_computation(tiny_model):
    example = {**HELLASWAG[0], "endings": ["mat.", "moon over the long hill.", "idea", "seven eleven."], "line": 1}
    tokens, mask, cropped = hellaswag_rows(example, 64)
    total, mean = score_endings(tiny_model, tokens, mask)
    enc = get_tokenizer()
    context = enc.encode_ordinary(example["ctx"])
    for i, ending in enumerate(example["endings"]):
        ending_tokens = enc.encode_ordinary(" " + ending)
        row = torch.tensor(context + ending_tokens)[None]
        with torch.no_grad():
            logits, _ = tiny_model(row)
        losses = F.cross_entropy(logits[0, len(context) - 1 : -1], row[0, len(context) :], reduction="none")
        assert total[i].item() == pytest.approx(losses.sum().item(), abs=1e-4)
        assert mean[i].item() == pytest.approx(losses.mean().item(), abs=1e-5)
    assert not cropped

    # a context longer than the model's: cropped from the left, the ending kept whole
    long = {**example, "ctx": "word " * 100}
    tokens, mask, cropped = hellaswag_rows(long, 64)
    assert cropped and tokens.shape[1] == 64
    assert mask.sum(dim=1).tolist() == [len(enc.encode_ordinary(" " + e)) for e in example["endings"]]


def test_hellaswag_accuracy_of_a_model_trained_on_the_answers(tiny_config, tmp_path):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    enc = get_tokenizer()
    rows = [enc.encode_ordinary(ex["ctx"] + " " + ex["endings"][ex["label"]]) for ex in HELLASWAG]
    length = max(map(len, rows))
    batch = torch.tensor([row + [-1] * (length - len(row)) for row in rows])
    model.transformer.wte.weight.requires_grad_(False)  # the (tied) embedding's gradient is most of a step's time
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(10):
        _, loss = model(batch[:, :-1].clamp(min=0), batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path / "hellaswag.jsonl"
    path.write_text("".join(json.dumps(ex) + "\n" for ex in HELLASWAG))
    result = evaluate_hellaswag(model.eval(), path)
    assert (result["acc"], result["acc_norm"], result["n"]) == (1.0, 1.0, 3)

    save_checkpoint(model, tmp_path / "trained")
    record = run_json(tmp_path / "trained", "--hellaswag", path)
    assert "lm" not in record and record["hellaswag"]["acc_norm"] == 1.0 and record["hellaswag"]["n"] == 3


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 0', "line 2: not valid JSON"),
        ('{"ctx": "a", "endings": ["b", "c", "d"], "label": 0}', "line 2: 'endings' must be a list of 4"),
        ('{"ctx": "a", "endings": ["b", "c", "d", "e"]}', "line 2: missing label"),
        ('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 4}', "line 2: 'label' must be 0, 1, 2 or 3"),
        ("[1, 2]", "line 2: expected a JSON object"),
    ],
)
def test_malformed_hellaswag_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(HELLASWAG[0]) + "\n" + line + "\n")
    with pytest.raises(GptkitError, match=re.escape(message)):
        read_hellaswag(path)


def test_bad_input(tiny_checkpoint, tmp_path):
    text = tmp_path / "a.txt"
    text.write_text(TEXT)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text(json.dumps(HELLASWAG[0]) + "\n\n{oops\n")
    assert_one_line_error(run(tiny_checkpoint, tmp_path / "missing.txt"), "does not exist")
    assert_one_line_error(run(tiny_checkpoint, empty), "is empty")
    assert_one_line_error(run(tmp_path / "nowhere", text), "does not exist")
    assert_one_line_error(run(tiny_checkpoint), "records no training data")
    assert_one_line_error(run(tiny_checkpoint, "--hellaswag", bad_jsonl), "line 3: not valid JSON")
    assert_one_line_error(run(tiny_checkpoint, "--hellaswag", tmp_path / "no.jsonl"), "hellaswag_val.jsonl")
    assert_one_line_error(run(tiny_checkpoint, text, "--block-size", "65"), "--block-size must be between 1 and")
    assert_one_line_error(run(tiny_checkpoint, text, "--stride", "0"), "--stride must be at least 1")
    assert_one_line_error(run(tiny_checkpoint, text, "--batch-size", "0"), "--batch-size must be at least 1")
    assert not (tiny_checkpoint / "evals.jsonl").exists()


def test_evals_log_takes_its_lock_and_survives_a_cut_line(tiny_checkpoint, tmp_path):
    text = tmp_path / "a.txt"
    text.write_text(TEXT)
    with folder_lock(tiny_checkpoint, "gptkit eval", "wait", lock_file=EVALS_LOCK_FILE):  # another eval appending
        holder = f"{tiny_checkpoint} is in use by process {os.getpid()} (gptkit eval)"
        result = run(tiny_checkpoint, text, "--dtype", "float32")
        assert result.exit_code == 0 and "warning: could not append the results to" in result.stderr
        assert holder in result.stderr
    assert not (tiny_checkpoint / "evals.jsonl").exists()
    with lock_run_folder(tiny_checkpoint):  # a training run in the folder: eval reads its checkpoint and appends
        run_json(tiny_checkpoint, text, "--block-size", "32")
    records, _ = read_records(tiny_checkpoint / "evals.jsonl")
    assert len(records) == 1
    (tiny_checkpoint / "evals.jsonl").unlink()

    (tiny_checkpoint / "evals.jsonl").write_text('{"date": "2026-11-25T15:')  # a line cut short by a crash
    record = run_json(tiny_checkpoint, text, "--block-size", "32")
    records, unreadable = read_records(tiny_checkpoint / "evals.jsonl")
    assert unreadable == 1 and len(records) == 1 and records[0]["lm"]["loss"] == record["lm"]["loss"]
    assert not (tiny_checkpoint / ".lock").exists() and not (tiny_checkpoint / ".evals.lock").exists()
