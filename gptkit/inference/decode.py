"""The steps of decoding (gpt-fast style): a model made ready for it, its key/value cache, the prompt's pass
(prefill) and the one-token step, compiled or not. generate.py and batching.py loop over them."""

from pathlib import Path

import torch
from torch import nn

from gptkit.data.tokenizer import VOCAB_SIZE
from gptkit.machine.cpu import cpu_level
from gptkit.model.blocked import BlockedLinear
from gptkit.model.gpt import GPT
from gptkit.model.int8 import Int8Linear, replace_linears
from gptkit.model.kv_cache import KVCache
from gptkit.model.quantization import quantize_weights

# A compiled step's graph is specialised to the length of the cache: with --compile the cache is allocated in
# multiples of this many positions, so that samples of different lengths in one process share a graph (and stay
# under dynamo's limit on recompilations) at the cost of masking up to 255 unused positions.
COMPILED_CACHE_MULTIPLE = 256

# Rows of a bf16 decoding step on the CPU up to which its products run in torch's own matrix-vector kernel: oneDNN's
# products of one or two bf16 rows fall far short of the memory's bandwidth; from a few rows on oneDNN is the faster,
# and at the DEFAULT level torch's kernel is a scalar loop (bench/choices_bench.py measures both at each level).
TORCH_GEMV_MAX_ROWS = 2


def prepare_for_decoding(model: GPT, compile: bool = False, dynamic: bool = False) -> GPT:
    """Make model decode fast (in place; for inference only): on the CPU in fp32, spread each matrix-vector product
    over the threads (BlockedLinear); with compile, torch.compile its one-token step (decode_step), for the shapes of
    generate() or, dynamic, for any number of rows and cache length (continuous batching)."""
    weight = model.transformer.wte.weight
    if weight.dtype == torch.float32 and weight.device.type == "cpu":
        replace_linears(model, lambda _, linear: BlockedLinear(linear, torch.get_num_threads()))
    if compile:
        # generate()'s steps have static shapes (a preallocated cache, the position in a tensor): one graph serves
        # every step of a sample. Continuous batching (dynamic) changes the rows and the cache length between steps.
        model.compiled_step = torch.compile(one_token_logits, dynamic=dynamic, fullgraph=True)
    return model


def drop_padded_vocabulary(model: GPT) -> GPT:
    """model (in place) with an output head for GPT-2's tokens only, where its vocabulary is padded past them (nanoGPT's
    50304 rows): the logits of the padding, which no text has, are never computed, so no sample can draw one. The
    head's rows are views of the first VOCAB_SIZE (no copy); the token embedding keeps every row."""
    head = model.lm_head
    if head.weight.size(0) <= VOCAB_SIZE:
        return model
    if isinstance(head, Int8Linear):  # an int8 checkpoint's own head
        model.lm_head = Int8Linear(head.weight[:VOCAB_SIZE], head.scales[:VOCAB_SIZE], None)
    else:
        model.lm_head = nn.Linear(head.in_features, VOCAB_SIZE, bias=False, device="meta")
        model.lm_head.weight = nn.Parameter(head.weight[:VOCAB_SIZE], requires_grad=False)
    return model


def load_for_decoding(ckpt: Path, device, dtype, quantize: str | None, compile: bool, dynamic: bool = False) -> GPT:
    from gptkit.checkpoint.folder import load_checkpoint

    model = quantize_weights(drop_padded_vocabulary(load_checkpoint(ckpt, device, dtype)), quantize)
    return prepare_for_decoding(model, compile, dynamic)


def decoding_cache(model: GPT, rows: int, tokens: int) -> KVCache:
    """A key/value cache on model for rows samples of tokens each (prompt and new ones), at most its context; with
    a compiled step, of a multiple of COMPILED_CACHE_MULTIPLE positions."""
    if getattr(model, "compiled_step", None) is not None:
        tokens = -(-tokens // COMPILED_CACHE_MULTIPLE) * COMPILED_CACHE_MULTIPLE
    return KVCache.for_model(model, rows, tokens)


def one_token_logits(model: GPT, token: torch.Tensor, pos: int | torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Logits (B, vocab_size) of the next token after token (B, 1) at position pos (an int, or a tensor: (1,) for all
    rows, or (B,) one a row), its keys and values stored in cache. An int attends to the positions up to pos alone;
    a tensor to the whole cache, masked (the same shapes at every step, for a compiled step)."""
    return model(token, cache=cache, pos=pos)[0][:, -1]


def torch_gemv_wins(rows: int, level: str) -> bool:
    """Whether torch's own kernel is the faster for the bf16 products of a decoding step of rows rows on the CPU at
    level (cpu.cpu_level's): see TORCH_GEMV_MAX_ROWS."""
    return rows <= TORCH_GEMV_MAX_ROWS and level != "DEFAULT"


def uses_torch_gemv(model: GPT, rows: int) -> bool:
    """Whether a decoding step of rows rows runs its bf16 products in torch's own kernel rather than oneDNN's."""
    weight = model.transformer.wte.weight
    return weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and torch_gemv_wins(rows, cpu_level())


def decode_step(model: GPT, token: torch.Tensor, pos: int | torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One decoding step: one_token_logits, compiled if prepare_for_decoding(compile=True) compiled it; pos an int
    for all rows (made a tensor for a compiled step), or a (B,) tensor of each row's."""
    step = getattr(model, "compiled_step", None)
    if step is not None and not isinstance(pos, torch.Tensor):  # the same shapes at every step: one graph for all
        pos = torch.tensor([pos], device=token.device)
    step = step or one_token_logits
    if not uses_torch_gemv(model, token.size(0)):
        return step(model, token, pos, cache)
    onednn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        return step(model, token, pos, cache)
    finally:
        torch.backends.mkldnn.enabled = onednn


def prefill(model: GPT, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Run tokens (B, T) from position 0 into cache; the logits (B, vocab_size) of what follows them."""
    return model(tokens, cache=cache, pos=0, last_only=True)[0][:, -1]
