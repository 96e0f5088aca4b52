import numpy as np
import pytest

from gptkit import prepare
from gptkit.data import BatchLoader, eval_batches, load_tokens, split_tokens
from gptkit.errors import GptkitError
from gptkit.prepare import split_for_encoding
from gptkit.tokenizer import encode

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


def test_tokens_are_cached_by_content(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_text(TEXT)
    tokens, digest = load_tokens(path)
    assert tokens.dtype == np.uint16 and tokens.tolist() == encode(TEXT)

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(prepare, "encode_job", no_tokenizing)
    copy = tmp_path / "b.txt"  # same content elsewhere: same cache entry
    copy.write_text(TEXT)
    again, digest_again = load_tokens(copy)
    assert digest_again == digest and np.array_equal(again, tokens)


def test_chunked_encoding_equals_whole_encoding():
    text = open("data/input.txt", encoding="utf-8").read()[:200_000]
    pieces = split_for_encoding(text, chunk_chars=1000)
    assert len(pieces) > 100 and "".join(pieces) == text
    assert [t for piece in pieces for t in encode(piece)] == encode(text)


@pytest.mark.parametrize(
    "content, message",
    [(None, "does not exist"), (b"", "empty"), (b"caf\xe9 ok", "not UTF-8")],
)
def test_bad_data(tmp_path, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(GptkitError, match=message):
        load_tokens(path)


def test_split_is_the_tail():
    tokens = np.arange(100, dtype=np.uint16)
    train, val = split_tokens(tokens, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))


def test_loader_targets_are_inputs_shifted_and_epoch_covers_every_window():
    tokens = np.arange(1001, dtype=np.uint16)
    loader = BatchLoader(tokens, batch_size=5, block_size=10, seed=0)
    starts = []
    for _ in range(20):  # 100 windows = one epoch
        x, y = loader.next_batch()
        assert x.shape == (5, 10) and (y[:, :-1] == x[:, 1:]).all() and (y[:, -1] == x[:, -1] + 1).all()
        starts += x[:, 0].tolist()
    assert sorted(starts) == list(range(0, 1000, 10))
    assert loader.state() == {"epoch": 1, "index": 0}


def test_ranks_split_the_global_batch_and_position_resumes():
    tokens = np.arange(5001, dtype=np.uint16)
    single = BatchLoader(tokens, batch_size=4, block_size=8, seed=3)
    ranks = [BatchLoader(tokens, batch_size=2, block_size=8, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(200):  # across several epochs
        x, _ = single.next_batch()
        parts = [loader.next_batch()[0] for loader in ranks]
        assert x.tolist() == parts[0].tolist() + parts[1].tolist()
    resumed = BatchLoader(tokens, batch_size=4, block_size=8, seed=3)
    resumed.load_state(single.state())
    assert resumed.next_batch()[0].tolist() == single.next_batch()[0].tolist()


def test_loader_refuses_data_shorter_than_a_batch():
    with pytest.raises(GptkitError, match="too short"):
        BatchLoader(np.arange(60, dtype=np.uint16), batch_size=4, block_size=16, seed=0)


def test_eval_batches_share_the_windows_among_ranks():
    tokens = np.arange(101, dtype=np.uint16)
    whole = [x for x, _ in eval_batches(tokens, 80, batch_size=3, block_size=10)]
    assert sum(len(x) for x in whole) == 8
    shared = [x for r in range(2) for x, _ in eval_batches(tokens, 80, 3, 10, rank=r, world_size=2)]
    assert sorted(row[0] for x in shared for row in x.tolist()) == list(range(0, 80, 10))
    short = [x for x, _ in eval_batches(np.arange(5, dtype=np.uint16), 1000, 4, 10)]
    assert [x.shape for x in short] == [(1, 4)]
