import numpy as np
import pytest
from conftest import SHAKESPEARE_PATH

from gptkit.data import prepare
from gptkit.data.loader import BatchLoader, eval_batches, load_tokens, split_tokens
from gptkit.errors import GptkitError
from gptkit.data.inputs import split_for_encoding
from gptkit.data.tokenizer import encode

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40

# The token sources a BatchLoader reads, and the first token of each window of 10 + 1 tokens it cuts them into: one
# array (a text), and shards (a prepared folder) whose windows never span two shards: 50 tokens make 4 windows, not 5
# (the fifth lacks the target of its last position), 11 tokens make one, 9 none.
SOURCES = {
    "one array": (np.arange(1001, dtype=np.uint16), list(range(0, 1000, 10))),
    "shards": (
        [np.arange(start, start + n, dtype=np.uint16) for start, n in ((0, 101), (1000, 50), (2000, 11), (3000, 9))],
        list(range(0, 100, 10)) + list(range(1000, 1040, 10)) + [2000],
    ),
}


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
    text = SHAKESPEARE_PATH.read_text(encoding="utf-8")[:200_000]
    pieces = split_for_encoding(text, chunk_chars=1000)
    assert len(pieces) > 100 and "".join(pieces) == text
    assert [t for piece in pieces for t in encode(piece)] == encode(text)


def test_split_is_the_tail():
    tokens = np.arange(100, dtype=np.uint16)
    train, val = split_tokens(tokens, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))


def test_split_of_shards_cuts_the_shard_the_tail_starts_in_and_keeps_no_empty_shard():
    shards = [np.arange(0, 60, dtype=np.uint16), np.arange(60, 100, dtype=np.uint16)]
    train, val = split_tokens(shards, 0.1)
    assert [s.tolist() for s in train] == [list(range(60)), list(range(60, 90))]
    assert [s.tolist() for s in val] == [list(range(90, 100))]
    train, val = split_tokens(shards, 0.4)  # the tail starts where the second shard does
    assert [len(s) for s in train] == [60] and [len(s) for s in val] == [40]
    assert split_tokens(shards, 0.0)[1] == []


@pytest.mark.parametrize("source", SOURCES)
def test_an_epoch_covers_every_window_once_with_the_targets_shifted(source):
    tokens, window_starts = SOURCES[source]
    loader = BatchLoader(tokens, batch_size=5, block_size=10, seed=0)
    assert loader.n_windows == len(window_starts)
    starts = []
    for _ in range(len(window_starts) // 5):
        x, y = loader.next_batch()
        # targets are the next tokens: consecutive numbers, so also proof that no window spans two shards
        assert x.shape == (5, 10) and (y[:, :-1] == x[:, 1:]).all() and (y[:, -1] == x[:, -1] + 1).all()
        starts += x[:, 0].tolist()
    assert sorted(starts) == window_starts
    assert loader.state() == {"epoch": 1, "index": 0}


@pytest.mark.parametrize("source", SOURCES)
def test_ranks_split_the_global_batch_and_position_resumes(source):
    tokens, _ = SOURCES[source]
    single = BatchLoader(tokens, batch_size=6, block_size=10, seed=3)
    ranks = [BatchLoader(tokens, batch_size=2, block_size=10, seed=3, rank=r, world_size=3) for r in range(3)]
    for _ in range(40):  # across several epochs
        x, _ = single.next_batch()
        assert x.tolist() == [row for loader in ranks for row in loader.next_batch()[0].tolist()]
    state = single.state()
    resumed = BatchLoader(tokens, batch_size=6, block_size=10, seed=3)
    resumed.load_state(state)
    resumed_ranks = [BatchLoader(tokens, batch_size=2, block_size=10, seed=3, rank=r, world_size=3) for r in range(3)]
    for loader in resumed_ranks:
        loader.load_state(state)
    for _ in range(8):
        x = single.next_batch()[0].tolist()
        assert resumed.next_batch()[0].tolist() == x
        assert [row for loader in resumed_ranks for row in loader.next_batch()[0].tolist()] == x


def test_the_window_order_is_each_epochs_seeded_permutation():
    """The order of the loader before shards existed: a run saved then resumes on the same windows."""
    loader = BatchLoader(np.arange(5001, dtype=np.uint16), batch_size=4, block_size=8, seed=3)
    order = np.random.default_rng([3, 0]).permutation(5000 // 8)
    assert loader.next_batch()[0][:, 0].tolist() == [w * 8 for w in order[:4]]


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


def test_eval_batches_of_shards_go_through_them_in_order_never_spanning_two():
    shards, _ = SOURCES["shards"]
    batches = [x for x, _ in eval_batches(shards, 1000, batch_size=4, block_size=30)]
    assert [row[0] for x in batches for row in x.tolist()] == [0, 30, 60, 1000]
