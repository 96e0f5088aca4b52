"""The GPT-2 model: attention, MLP, block, and the full network, top to bottom (its config is in config.py).

Module and parameter names follow Hugging Face's GPT2LMHeadModel (transformer.wte, transformer.h.0.attn.c_attn,
...), so converting to and from its checkpoints is a matter of transposing four kinds of weights (see checkpoint.py).
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from gptkit.model.config import ACTIVATIONS, GPTConfig
from gptkit.model.kv_cache import KVCache


# Vocabulary columns per slice in LinearCrossEntropy: (tokens x 8192) slices keep the CPU's matmul near its peak,
# which the whole (tokens x 50257) product falls well short of.
LOSS_CHUNK_SIZE = 8192


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of the logits x @ weight.T against targets (-1 = ignored), without the usual copies.

    F.cross_entropy(lm_head(x).float(), ...) holds the logits up to four times over (the matmul's output, its fp32
    copy, the log-probabilities, their gradient) and multiplies by the (50257, C) weight in one go, which runs the
    CPU's matmul well below its peak. Here the logits are kept once, in x's dtype, as slices of the vocabulary;
    backward turns each slice into softmax - onehot in a scratch buffer and multiplies it out.
    """

    @staticmethod
    def forward(ctx, x, weight, targets, chunk_size: int):
        starts = range(0, weight.size(0), chunk_size)
        chunks = [x @ weight[start : start + chunk_size].to(x.dtype).t() for start in starts]
        lse = torch.stack([torch.logsumexp(chunk.float(), dim=1) for chunk in chunks], dim=1).logsumexp(dim=1)
        target_logits = torch.zeros_like(lse)
        for start, chunk in zip(starts, chunks):
            column, here = LinearCrossEntropy.target_column(targets, start, chunk.size(1))
            target_logits += torch.where(here, chunk.gather(1, column).squeeze(1).float(), 0.0)
        valid = targets != -1
        loss = torch.where(valid, lse - target_logits, 0.0).sum() / valid.sum()
        ctx.save_for_backward(x, weight, targets, lse, *chunks)
        ctx.chunk_size = chunk_size
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        x, weight, targets, lse, *chunks = ctx.saved_tensors
        valid = targets != -1
        row_scale = torch.where(valid, grad_loss / valid.sum(), 0.0)[:, None]
        grad_x = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        grad_weight = torch.empty_like(weight)
        scratch = torch.empty(chunks[0].numel(), dtype=torch.float32, device=x.device)
        for start, chunk in zip(range(0, weight.size(0), ctx.chunk_size), chunks):
            grad_logits = torch.sub(chunk, lse[:, None], out=scratch[: chunk.numel()].view(chunk.shape))
            grad_logits.exp_().mul_(row_scale)
            column, here = LinearCrossEntropy.target_column(targets, start, chunk.size(1))
            grad_logits.scatter_add_(1, column, torch.where(here[:, None], -row_scale, 0.0))
            grad_logits = grad_logits.to(x.dtype)
            grad_x += grad_logits @ weight[start : start + chunk.size(1)].to(x.dtype)
            grad_weight[start : start + chunk.size(1)] = grad_logits.t() @ x
        return grad_x.to(x.dtype), grad_weight, None, None

    @staticmethod
    def target_column(targets, start: int, width: int):
        """Each row's target as a column of the slice starting at start (clamped into it), and whether it is there.
        Gather and scatter with a mask rather than indexing by nonzero(), which would wait for a GPU."""
        column = targets - start
        return column.clamp(0, width - 1)[:, None], (column >= 0) & (column < width)


def attention_by_matmul(q, k, v, visible: torch.Tensor | None, dropout: float = 0.0) -> torch.Tensor:
    """Attention as two matmuls around a softmax; visible (bool, broadcast to (T, S); None: all) says which keys each
    query sees.

    Used where the fused kernel of scaled_dot_product_attention is slow on the CPU: its bf16 backward (training) is
    several times slower, and for a single query (a decoding step) its fixed cost exceeds the arithmetic."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    weights = F.dropout(F.softmax(scores, dim=-1), dropout)
    return weights.to(v.dtype) @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer  # its keys and values in a KVCache
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # query, key, value in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.residual_projection = True
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, pos: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        mask, is_causal = None, True
        if cache is not None:  # incremental decoding: attend to everything cached so far, in the cache's dtype
            k, v = cache.insert(self.layer, pos, k, v)
            q = q.to(k.dtype)
            if isinstance(pos, torch.Tensor):  # one token over the whole cache, masked past each row's pos
                mask = torch.arange(k.size(2), device=x.device) <= pos.view(-1, 1, 1, 1)
                is_causal = False
            elif T == 1:
                is_causal = False
            elif pos > 0:  # a chunk after a cached prefix: causal within the chunk, full over the prefix
                mask = torch.ones(T, pos + T, dtype=torch.bool, device=x.device).tril(diagonal=pos)
                is_causal = False
        dropout = self.dropout if self.training else 0.0
        on_cpu = q.device.type == "cpu"
        if on_cpu and T == 1 and cache is not None:
            y = attention_by_matmul(q, k, v, mask)
        elif cache is None and on_cpu and q.dtype == torch.bfloat16 and torch.is_grad_enabled():
            causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
            y = attention_by_matmul(q, k, v, causal, dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
        y = y.to(x.dtype).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.residual_projection = True
        self.dropout = nn.Dropout(config.dropout)
        self.approximate = ACTIVATIONS[config.activation]  # GPT-2's tanh approximation, or nanoGPT's exact GELU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, pos: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, pos)
        return x + self.mlp(self.ln_2(x))


def on_meta_device() -> bool:
    """Whether modules are being made on the meta device: a model of shapes only, whose weights are loaded next, so
    nothing is initialized (normal_ on a meta tensor imports torch._dynamo: a second of every command's start)."""
    return torch.get_default_device().type == "meta"


def embedding(num: int, dim: int) -> nn.Embedding:
    """nn.Embedding, left uninitialized on the meta device (see on_meta_device)."""
    return nn.Embedding(num, dim, _weight=torch.empty(num, dim) if on_meta_device() else None)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=embedding(config.vocab_size, config.n_embd),
                wpe=embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying, as GPT-2
        self.activation_checkpointing = False  # training: recompute each block's activations in the backward
        if not on_meta_device():
            self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module):
        # GPT-2: normal(0, 0.02); projections into the residual stream scaled by 1/sqrt(2 * n_layer),
        # since each block adds two of them to the stream.
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_projection", False):
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, counting the tied wte / lm_head once; non_embedding leaves out wte and wpe."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        pos: int | torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (logits, None), or (None, loss) when targets are given.

        idx: (B, T) token ids. logits: (B, T, vocab_size) float, or (B, 1, vocab_size) with last_only.
        loss: the mean cross-entropy against targets (B, T), where targets of -1 are ignored; the logits are not
        returned with it, since not keeping them all at once is what makes training fast (LinearCrossEntropy).
        cache, pos (together): idx holds the tokens at positions pos..pos+T-1, stored in cache, and attends to its
        keys and values of the earlier positions. A 1-element tensor pos (with T = 1) keeps every step's shapes the
        same, for a compiled decoding step; a (B,) tensor gives each row its own position.
        """
        if (cache is None) != (pos is None):
            raise ValueError("a key/value cache and the position pos of the tokens go together")
        B, T = idx.size()
        if isinstance(pos, torch.Tensor):  # one token at a position held in a tensor: the same shapes at every step
            positions = pos.view(-1, 1)
        else:
            start = 0 if pos is None else pos
            if start + T > self.config.block_size:
                raise ValueError(
                    f"sequence of {start + T} tokens is longer than the context of {self.config.block_size}"
                )
            positions = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(positions))
        recompute = self.activation_checkpointing and cache is None and torch.is_grad_enabled()
        for block in self.transformer.h:
            # the recomputation replays the RNG states of the first pass: dropout masks are the same, and so is the step
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x, cache, pos)
        x = self.transformer.ln_f(x)
        if targets is not None:
            return None, self.loss(x, targets)
        if last_only:
            x = x[:, -1:, :]
        return self.lm_head(x), None

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy of lm_head(x) against targets, computed without materialising fp32 logits."""
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        x, weight = x.reshape(-1, x.size(-1)), self.lm_head.weight
        return LinearCrossEntropy.apply(x, weight, targets.reshape(-1), LOSS_CHUNK_SIZE)

    def crop_block_size(self, block_size: int) -> torch.Tensor:
        """Shorten the context to the first block_size position embeddings; return the rest (detached), which
        training at a shorter window sets aside and saving puts back (checkpoint.save_checkpoint)."""
        if block_size > self.config.block_size:
            raise ValueError(f"cannot grow the context from {self.config.block_size} to {block_size}")
        self.config.block_size = block_size
        wpe = self.transformer.wpe.weight
        self.transformer.wpe.weight = nn.Parameter(wpe.detach()[:block_size].clone(), requires_grad=wpe.requires_grad)
        return wpe.detach()[block_size:].clone()

    def set_dropout(self, p: float):
        """Set the dropout probability of every dropout layer (it acts only in training mode), LoRA adapters' aside."""
        self.config.dropout = p
        for name, module in self.named_modules():
            if isinstance(module, nn.Dropout) and not name.endswith("lora_dropout"):
                module.p = p
            elif isinstance(module, CausalSelfAttention):
                module.dropout = p
