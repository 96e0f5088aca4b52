"""The key/value cache of incremental decoding (nanochat's KVCache): the keys and values every attention layer has
computed for some rows of sequences decoded side by side, preallocated for some positions, passed to GPT.forward.

The positions a forward pass writes at are its caller's (GPT.forward's pos, gpt-fast's input_pos), not the cache's:
speculative decoding takes back positions the model scored, continuous batching gives each row its own, and a
compiled step is given them as a tensor. A new sequence writes from position 0 over whatever a row held.
"""

import torch


class KVCache:
    """Keys and values of each attention layer, k[layer] and v[layer], each (rows, heads, positions, head size)."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor]):
        self.k, self.v = k, v

    @classmethod
    def allocate(cls, layers: int, rows: int, heads: int, length: int, head_size: int, dtype, device) -> "KVCache":
        """A cache of zeros for rows sequences of length positions each."""
        shape = (rows, heads, length, head_size)
        return cls(*([torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)] for _ in "kv"))

    @classmethod
    def for_model(cls, model, rows: int, length: int | None = None) -> "KVCache":
        """A cache for model (a GPT) of rows sequences of length positions (default and at most its context), on the
        device of its weights, in dtype_for_weights'."""
        config, weight = model.config, model.transformer.wte.weight
        length = min(length or config.block_size, config.block_size)
        head_size = config.n_embd // config.n_head
        dtype = cls.dtype_for_weights(weight)
        return cls.allocate(config.n_layer, rows, config.n_head, length, head_size, dtype, weight.device)

    @staticmethod
    def dtype_for_weights(weight: torch.Tensor) -> torch.dtype:
        """The keys' and values' dtype for a model of weights like weight: theirs, but fp32 for bf16 weights on the
        CPU, where a one-row step's attention over the cache runs several times faster in fp32 than in bf16 (oneDNN's
        small bf16 products have a large fixed cost, and torch's own, which such a step runs, are slow over a long
        cache); a batch over a long cache, with oneDNN, loses a little (bench/choices_bench.py)."""
        return torch.float32 if weight.device.type == "cpu" and weight.dtype == torch.bfloat16 else weight.dtype

    @property
    def rows(self) -> int:
        return self.k[0].size(0)

    @property
    def length(self) -> int:
        """The positions each row holds."""
        return self.k[0].size(2)

    @property
    def device(self) -> torch.device:
        return self.k[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.k[0].dtype

    def insert(self, layer: int, pos: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Store layer's k, v (B, H, T, D) at positions pos..pos+T-1, in the cache's dtype; return its keys and values
        up to there. With
        pos a tensor (one token, T = 1) of one position for all rows (1,) or one a row (B,), return the whole cache:
        the caller masks what lies past each row's position."""
        keys, values = self.k[layer], self.v[layer]
        k, v = k.to(keys.dtype), v.to(values.dtype)
        if isinstance(pos, torch.Tensor):
            if pos.numel() == 1:
                keys.index_copy_(2, pos, k)
                values.index_copy_(2, pos, v)
            else:
                rows = torch.arange(k.size(0), device=k.device)
                keys[rows, :, pos] = k[:, :, 0]
                values[rows, :, pos] = v[:, :, 0]
            return keys, values
        end = pos + k.size(2)
        keys[:, :, pos:end] = k
        values[:, :, pos:end] = v
        return keys[:, :, :end], values[:, :, :end]

    def view(self, rows: slice, length: int | None = None) -> "KVCache":
        """The cache of rows up to position length (default: all), as views: what is stored in it lands in this
        cache. A forward pass over the view treats each of its rows as a sequence of its own (continuous batching)."""
        length = length or self.length
        return KVCache(*([t[rows, :, :length] for t in tensors] for tensors in (self.k, self.v)))

    def grow(self, length: int):
        """Hold length positions a row (more than now), keeping what is stored. All or nothing: where an allocation
        fails (out of memory), the cache is left as it was and the error raised."""
        head_size = self.k[0].size(3)
        bigger = KVCache.allocate(len(self.k), self.rows, self.k[0].size(1), length, head_size, self.dtype, self.device)
        for old, new in zip(self.k + self.v, bigger.k + bigger.v):
            new[:, :, : self.length] = old
        self.k, self.v = bigger.k, bigger.v

    def keep_rows(self, keep: list[int], lengths: list[int]) -> list[int]:
        """Keep the rows keep (ascending indices) as rows 0..len(keep)-1: the last of them move into the rows freed
        below, each with its first lengths[row] positions. Returns the row each new row was (the new order)."""
        kept = set(keep)
        holes = [i for i in range(len(keep)) if i not in kept]
        order = list(range(len(keep)))
        for hole, mover in zip(holes, [i for i in keep if i >= len(keep)]):
            for tensor in self.k + self.v:
                tensor[hole, :, : lengths[mover]] = tensor[mover, :, : lengths[mover]]
            order[hole] = mover
        return order
