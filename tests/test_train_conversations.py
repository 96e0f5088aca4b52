"""Training on conversations: PackedBatchLoader's order and each process's slice, validation on the first packed rows,
the loss and count over the replies alone, and a run's tokens_trained and template (the fine-tuned checkpoint's)."""

import io
import itertools
import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from gptkit.checkpoint.folder import load_checkpoint, read_metadata, save_checkpoint
from gptkit.data.conversations import load_conversations, pack
from gptkit.data.packed import PackedBatchLoader, packed_eval_batches
from gptkit.evaluation.loss import summed_loss
from gptkit.inference.chat_template import DEFAULT_TEMPLATE, check_template, tokenize_conversation
from gptkit.training.loop import TrainConfig, train

BLOCK_SIZE = 64


def conversations(n: int, seed: int = 0) -> list[list[tuple[str, str]]]:
    """n conversations of one or two turns, of varied lengths, each text its own."""
    rng = random.Random(seed)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "owls", "sing"]
    made = []
    for i in range(n):
        messages = []
        for turn in range(rng.randint(1, 2)):
            messages.append(("user", f"Q{i}.{turn}: " + " ".join(rng.choices(words, k=rng.randint(1, 6)))))
            messages.append(("assistant", f"A{i}.{turn}: " + " ".join(rng.choices(words, k=rng.randint(1, 8)))))
        made.append(messages)
    return made


@pytest.fixture(scope="module")
def rows():
    examples = [tokenize_conversation(DEFAULT_TEMPLATE, messages) for messages in conversations(40)]
    packed, truncated, _ = pack(examples, BLOCK_SIZE)
    assert truncated == 0 and len({row.tobytes() for row in packed.tokens[:, :-1]}) == len(packed) > 8
    return packed


def row_indices(rows, inputs: torch.Tensor) -> list[int]:
    """Which packed row each row of a batch's inputs is."""
    index = {row.tobytes(): i for i, row in enumerate(rows.tokens[:, :-1])}
    return [index[row.astype(np.uint16).tobytes()] for row in inputs.numpy()]


def test_each_epoch_visits_every_row_once_in_an_order_of_its_own(rows):
    """A step's batch is the next rows of the epoch's seeded order, a batch that crosses into the next epoch going on
    in the next epoch's order; the targets the loss does not count are -1; the position is all the state."""
    batch_size = next(b for b in (3, 4, 5) if len(rows) % b)  # batches that cross the epochs' ends
    loader = PackedBatchLoader(rows, batch_size, seed=5)
    seen, states = [], []
    for _ in range(len(rows)):  # batch_size epochs' worth
        states.append(loader.state())
        x, y = loader.next_batch()
        mine = row_indices(rows, x)
        assert torch.equal(y, torch.from_numpy(rows.batch(mine)[1])) and loader.last_trained == int((y != -1).sum())
        seen += mine
    orders = [loader.order(epoch).tolist() for epoch in range(batch_size)]
    assert seen == sum(orders, [])
    assert all(sorted(order) == list(range(len(rows))) for order in orders) and orders[0] != orders[1]
    assert PackedBatchLoader(rows, batch_size, seed=6).order(0).tolist() != orders[0]
    again = PackedBatchLoader(rows, batch_size, seed=5)
    again.load_state(states[len(rows) // 2])
    assert row_indices(rows, again.next_batch()[0]) == seen[len(rows) // 2 * batch_size :][:batch_size]


def test_processes_take_their_slices_of_the_global_batch_and_count_it_whole(rows):
    whole = PackedBatchLoader(rows, 4, seed=2)
    ranks = [PackedBatchLoader(rows, 2, seed=2, rank=rank, world_size=2) for rank in range(2)]
    for _ in range(len(rows)):
        x, y = whole.next_batch()
        parts = [loader.next_batch() for loader in ranks]
        assert torch.equal(torch.cat([part[0] for part in parts]), x)
        assert torch.equal(torch.cat([part[1] for part in parts]), y)
        assert ranks[0].last_trained == ranks[1].last_trained == whole.last_trained == int((y != -1).sum())


def test_validation_takes_the_first_rows_holding_the_tokens_asked_for(rows):
    def taken(n_tokens: int, rank: int = 0, world_size: int = 1) -> list[int]:
        batches = packed_eval_batches(rows, n_tokens, 2, rank, world_size)
        return [i for x, _ in batches for i in row_indices(rows, x)]

    assert taken(10) == [0]  # fewer tokens than a row: still one
    assert taken(5 * BLOCK_SIZE) == [0, 1, 2, 3, 4]
    assert taken(5 * BLOCK_SIZE, 0, 2) == [0, 2, 4] and taken(5 * BLOCK_SIZE, 1, 2) == [1, 3]
    assert taken(10**9) == list(range(len(rows)))


def test_the_validation_loss_counts_the_replies_alone(rows, tiny_model):
    batches = [(x, y, [y.size(1)] * len(y)) for x, y in packed_eval_batches(rows, 10**9, 4)]
    nats, count = summed_loss(tiny_model, batches, torch.float32)
    assert count == rows.trained_tokens
    x, y = (torch.from_numpy(a) for a in rows.batch(list(range(len(rows)))))
    with torch.no_grad():
        logits, _ = tiny_model(x)
    assert nats == pytest.approx(F.cross_entropy(logits[y != -1], y[y != -1], reduction="sum").item(), rel=1e-5)


def test_a_run_trains_on_the_replies_with_the_fine_tuned_checkpoints_template(tmp_path, tiny_model):
    """Fine-tuning a checkpoint that records a template writes the conversations with it and records it; each record's
    tokens_trained adds up the reply targets of the batches so far; the validation loss is over the replies."""
    template = check_template({"user": "Q: {content}\n", "assistant": "A: {content}\n<|endoftext|>"}, "test")
    ckpt = save_checkpoint(tiny_model, tmp_path / "ckpt", {"chat_template": template})
    data = tmp_path / "chat.jsonl"
    lines = [{"messages": [{"role": r, "content": c} for r, c in messages]} for messages in conversations(30, seed=1)]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    settings = dict(steps=3, batch_size=2, block_size=BLOCK_SIZE, lr=1e-3, seed=7, val_fraction=0.2)
    cfg = TrainConfig(data=str(data), model=str(ckpt), out=str(tmp_path / "run"), dtype="float32", device="cpu",
                      eval_every=0, eval_tokens=4 * BLOCK_SIZE, save_every=0, **settings)  # fmt: skip
    train(cfg, console=Console(file=io.StringIO()))

    metadata = read_metadata(tmp_path / "run")
    assert metadata["chat_template"] == template
    packed = load_conversations(data, BLOCK_SIZE, 0.2, template)
    loader = PackedBatchLoader(packed.train, 2, seed=7)
    counted = []
    for _ in range(3):
        loader.next_batch()
        counted.append(loader.last_trained)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens_trained"] for r in records] == list(itertools.accumulate(counted))
    assert metadata["tokens_trained"] == sum(counted)

    model = load_checkpoint(tmp_path / "run", dtype=torch.float32).eval()
    x, y = (torch.cat(parts) for parts in zip(*packed_eval_batches(packed.val, 4 * BLOCK_SIZE, 2)))
    with torch.no_grad():
        logits, _ = model(x)
    expected = F.cross_entropy(logits[y != -1], y[y != -1]).item()
    assert metadata["val_loss"] == pytest.approx(expected, rel=1e-4)
