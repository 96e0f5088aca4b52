"""Batches of packed conversation rows (data.conversations.PackedRows) for training and its validation, with the
contract of data.loader.BatchLoader: deterministic given the seed and the position, each process its slice of the
global batch, the position all the state there is."""

import numpy as np

from gptkit.data.conversations import PackedRows
from gptkit.errors import GptkitError


class ConversationSource:
    """DATA when it holds conversations: what train records of it before the rows are packed (which needs the block
    size, known once the model is)."""

    format = "conversations"
    split_kind = "conversations"  # the last val_fraction of the conversations
    val_fraction = None

    def __init__(self, path, digest: str):
        self.path, self.digest = path, digest
        self.tokens = None  # known once packed


class PackedBatchLoader:
    """Batches of (B, T) inputs and targets (-1 where the loss does not count) from packed rows: each epoch visits
    every row in its own seeded random order; a step's global batch is the next batch_size * world_size rows of that
    order, process `rank` taking its own batch_size of them."""

    def __init__(self, rows: PackedRows, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.n_rows = len(rows)
        self.n_tokens = int(rows.tokens.shape[0] * (rows.tokens.shape[1] - 1)) if self.n_rows else 0
        global_batch = batch_size * world_size
        if self.n_rows < global_batch:
            raise GptkitError(
                f"the training conversations fill {self.n_rows} row(s) of the block size, but one batch takes "
                f"{global_batch}: give more conversations or a smaller --batch-size / --block-size"
            )
        self.epoch = 0
        self.index = 0
        self.last_trained = 0  # the targets the loss counted in the last global batch (every process's rows)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)

    def next_batch(self):
        """(x, y): int64 tensors of shape (batch_size, block_size), this process's slice of the next global batch."""
        import torch

        chosen = []
        order = self.order(self.epoch)
        for _ in range(self.batch_size * self.world_size):
            chosen.append(int(order[self.index]))
            self.index += 1
            if self.index == self.n_rows:
                self.epoch, self.index = self.epoch + 1, 0
                order = self.order(self.epoch)
        self.last_trained = int(self.rows.trained[chosen].sum())
        mine = chosen[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        inputs, targets = self.rows.batch(mine)
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict):
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def packed_eval_batches(rows: PackedRows, n_tokens: int, batch_size: int, rank: int = 0, world_size: int = 1):
    """(x, y) batches of this process's share of the first rows that hold n_tokens targets (at least one row):
    process r takes rows r, r + world_size, ..."""
    import torch

    if not len(rows):
        return
    block_size = rows.tokens.shape[1] - 1
    mine = list(range(min(len(rows), max(1, n_tokens // block_size))))[rank::world_size]
    for i in range(0, len(mine), batch_size):
        inputs, targets = rows.batch(mine[i : i + batch_size])
        yield torch.from_numpy(inputs), torch.from_numpy(targets)
