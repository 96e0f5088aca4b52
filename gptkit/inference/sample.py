"""Text generation: prefill the prompt once into a key/value cache, then decode one token per step (gpt-fast style).

generate() is the Python API (tests and eval use it); sample() is `gptkit sample`, which streams the text.
"""

import codecs
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from gptkit.errors import GptkitError
from gptkit.model.int8 import Int8Linear, quantize_int8, replace_linears
from gptkit.model.gpt import GPT
from gptkit.options import SampleOptions
from gptkit.data.tokenizer import EOT_TOKEN, VOCAB_SIZE, encode, get_tokenizer


def candidates(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None):
    """(probabilities, token ids) of each row's candidates under temperature (> 0), top-k, then top-p (the smallest
    set of most likely tokens whose probability reaches top_p), as Hugging Face orders them; ids None: all tokens."""
    # Only the candidates are upcast and sorted: top-k first (it is unchanged by the temperature), else a full sort.
    if top_k:
        logits, ids = torch.topk(logits, min(top_k, logits.size(-1)))
    elif top_p is not None and top_p < 1:
        logits, ids = torch.sort(logits, descending=True)
    else:
        ids = None
    probs = F.softmax(logits.float() / temperature, dim=-1)
    if top_p is not None and top_p < 1:
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= top_p, 0.0)  # always keeps the first
    return probs, ids


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator=None):
    """Draw the next token of each row from logits (B, vocab_size); temperature 0 is greedy (see candidates())."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs, ids = candidates(logits, temperature, top_k, top_p)
    choice = torch.multinomial(probs, 1, generator=generator)
    return (choice if ids is None else ids.gather(-1, choice)).squeeze(-1)


def next_token_distribution(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None):
    """The distribution sample_next draws from, (B, vocab_size) probabilities (speculative decoding needs them)."""
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).float()
    probs, ids = candidates(logits, temperature, top_k, top_p)
    probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs if ids is None else torch.zeros_like(logits, dtype=probs.dtype).scatter_(-1, ids, probs)


@dataclass(frozen=True)
class Sampling:
    """How generate() draws tokens: sample_next's settings (temperature 0 is greedy; top_k and top_p None turn them
    off) and the random numbers (generator None: torch's global ones)."""

    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float | None = None
    generator: torch.Generator | None = None

    def next(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token (B,) of each row of logits (B, vocab_size), as sample_next draws it."""
        return sample_next(logits, self.temperature, self.top_k, self.top_p, self.generator)

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        return next_token_distribution(logits, self.temperature, self.top_k, self.top_p)

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """One token (B,) from each row of probs (B, vocab_size)."""
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0]


class BlockedLinear(nn.Module):
    """nn.Linear for decoding on the CPU in fp32: the output split into one block per thread, multiplied as one
    batched product (baddbmm), so that a matrix-vector product (a decoding step) reads its weight on every core.

    MKL runs a one-row product on a single core, at a fraction of the machine's read bandwidth; one block per
    thread reads the weight on every core (bench/sample_bench.py and bench/choices_bench.py measure both layouts).
    Layers wider than they are deep keep each block input-major, (in, out / blocks), which reads fastest there;
    the others keep nn.Linear's layout, as views of its weight. The output is padded to a multiple of the blocks
    (GPT-2's 50257-wide head) and a missing bias is a zero one: compiled, a one-row bmm becomes a generated loop
    several times slower than MKL's, which inductor leaves baddbmm to.
    """

    def __init__(self, linear: nn.Linear, blocks: int):
        super().__init__()
        weight = linear.weight.detach()
        self.out_features, in_features = weight.shape
        width = -(-self.out_features // blocks)  # outputs per block, the last one padded with zeros
        bias = torch.zeros_like(weight[:, 0]) if linear.bias is None else linear.bias.detach()
        self.bias = F.pad(bias, (0, blocks * width - self.out_features)).view(blocks, 1, width)
        if blocks * width > in_features:  # input-major blocks, (blocks, in, width), filled without a full copy
            self.weight = weight.new_zeros(blocks, in_features, width)
            for block, rows in zip(self.weight, weight.split(width)):
                block[:, : rows.size(0)] = rows.t()
        else:  # views of nn.Linear's (out, in) weight
            weight = (
                F.pad(weight, (0, 0, 0, blocks * width - self.out_features)) if self.out_features % blocks else weight
            )
            self.weight = weight.view(blocks, width, in_features).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(1, -1, x.size(-1)).expand(self.weight.size(0), -1, -1)
        y = torch.baddbmm(self.bias, rows, self.weight)  # (blocks, rows, out / blocks)
        return y.transpose(0, 1).reshape(*x.shape[:-1], -1)[..., : self.out_features]


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


def one_token_logits(model: GPT, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Logits (B, vocab_size) of the next token after token (B, 1) at position pos (a tensor: (1,) for all rows, or
    (B,) one a row)."""
    return model(token, pos=pos)[0][:, -1]


# A compiled step's graph is specialised to the length of the cache: with --compile the cache is allocated in
# multiples of this many positions, so that samples of different lengths in one process share a graph (and stay
# under dynamo's limit on recompilations) at the cost of masking up to 255 unused positions.
COMPILED_CACHE_MULTIPLE = 256


def cache_length(model: GPT, tokens: int) -> int:
    """Positions of the key/value cache for a sample of tokens (prompt and new ones) on model."""
    if getattr(model, "compiled_step", None) is not None:
        tokens = -(-tokens // COMPILED_CACHE_MULTIPLE) * COMPILED_CACHE_MULTIPLE
    return min(tokens, model.config.block_size)


def decode_step(model: GPT, token: torch.Tensor, pos: int | torch.Tensor) -> torch.Tensor:
    """One decoding step: one_token_logits, compiled if prepare_for_decoding(compile=True) compiled it; pos an int
    for all rows, or a (B,) tensor of each row's."""
    step = getattr(model, "compiled_step", None) or one_token_logits
    return step(model, token, pos if isinstance(pos, torch.Tensor) else torch.tensor([pos], device=token.device))


def prefill(model: GPT, tokens: torch.Tensor) -> torch.Tensor:
    """Run tokens (B, T) from position 0 into the cache; the logits (B, vocab_size) of what follows them."""
    return model(tokens, pos=0, last_only=True)[0][:, -1]


@torch.inference_mode()
def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    stop_tokens: tuple[int, ...] = (),
    draft: GPT | None = None,
    draft_tokens: int = 4,
    stats: dict | None = None,
):
    """Yield the next token of every row of idx (B, T), as a (B,) tensor, for max_new_tokens steps, or until every
    row has produced one of stop_tokens (a row's tokens after its stop token are to be ignored).

    The prompt runs through the model once, filling a preallocated key/value cache; each step then runs only the
    newest token. When the context is full, the cache is refilled with its last half (a sliding window).
    With a draft model, decoding is speculative (see speculate()); stats then receives the counts of draft tokens
    proposed and accepted.
    """
    batch_size, prompt_len = idx.shape
    block_size = model.config.block_size
    if prompt_len > block_size:
        raise ValueError(f"the prompt has {prompt_len} tokens, more than the context of {block_size}")
    if draft is not None:
        yield from speculate(model, draft, idx, max_new_tokens, draft_tokens, sampling, stop_tokens, stats)
        return
    model.setup_kv_cache(batch_size, cache_length(model, prompt_len + max_new_tokens))
    stop = torch.tensor(stop_tokens, dtype=idx.dtype, device=idx.device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=idx.device)
    history = [idx]  # the tokens in the cache, for refilling it when the window slides
    try:
        logits = prefill(model, idx)
        pos = prompt_len
        for step in range(max_new_tokens):
            next_token = sampling.next(logits)
            yield next_token
            if stop_tokens:
                done |= torch.isin(next_token, stop)
                if done.all():
                    return
            if step == max_new_tokens - 1:
                return
            history.append(next_token[:, None])
            if pos == block_size:  # the context is full: slide the window, refilling the cache from its last half
                context = torch.cat(history, dim=1)[:, -(block_size // 2) :]
                history = [context]
                logits = prefill(model, context)
                pos = context.size(1)
            else:
                logits = decode_step(model, next_token[:, None], pos)
                pos += 1
    finally:
        model.clear_kv_cache()


def speculate(model, draft, idx, max_new_tokens, k, sampling: Sampling, stop_tokens, stats):
    """Speculative decoding (Leviathan et al., 2023; gpt-fast's speculative_decode), for generate().

    Each round the draft proposes up to k tokens one at a time and the model scores them all in one forward pass;
    the proposal i is accepted with probability min(1, p(x_i) / q(x_i)) (p the model's distribution, q the draft's),
    and the first rejected one is replaced by a draw from max(p - q, 0), normalised; when all are accepted a bonus
    token comes from the model's next distribution. Every token is so distributed exactly as the model's own
    sampling; greedy (temperature 0) yields exactly the model's greedy tokens. In a batch, the rows advance together
    by the fewest tokens any row accepted: a row that accepted more keeps its accepted proposal at that place,
    which is still a draw from p.
    """
    batch_size, prompt_len = idx.shape
    block_size = model.config.block_size
    for m in (model, draft):
        m.setup_kv_cache(batch_size, cache_length(m, prompt_len + max_new_tokens))
    stop = torch.tensor(stop_tokens, dtype=idx.dtype, device=idx.device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=idx.device)
    stats = {} if stats is None else stats
    stats.update(proposed=0, accepted=0, rounds=0)

    def start(context):  # both caches hold context but its last token, which the next round feeds
        if context.size(1) > 1:
            for m in (model, draft):
                prefill(m, context[:, :-1])
        return context[:, -1:], context.size(1) - 1

    history = [idx]  # the tokens so far, for refilling the caches when the window slides
    token, pos = start(idx)
    produced = 0
    try:
        while True:
            if pos == block_size:  # the context is full: slide the window, as generate() does
                history = [torch.cat(history, dim=1)[:, -(block_size // 2) :]]
                token, pos = start(history[0])
            n_draft = min(k, block_size - 1 - pos, max_new_tokens - produced - 1)
            proposed, draft_probs = propose(draft, token, pos, n_draft, sampling)
            logits = model(proposed, pos=pos)[0]  # the model's next-token logits after each of them
            accepted, n, last = verify(logits, proposed, draft_probs, sampling)
            stats["proposed"] += n_draft * batch_size
            stats["accepted"] += int(accepted.sum())
            stats["rounds"] += 1
            if n == n_draft and n_draft:  # the draft never ran its last proposal: cache it for the next round
                decode_step(draft, proposed[:, -1:], pos + n_draft)
            new = [*proposed[:, 1 : n + 1].unbind(dim=1), last]
            for next_token in new:
                yield next_token
                produced += 1
                if stop_tokens:
                    done |= torch.isin(next_token, stop)
                    if done.all():
                        return
                if produced == max_new_tokens:
                    return
            history.append(torch.stack(new, dim=1))
            token, pos = last[:, None], pos + n + 1
    finally:
        for m in (model, draft):
            m.clear_kv_cache()


def propose(draft: GPT, token: torch.Tensor, pos: int, n: int, sampling: Sampling):
    """The draft's n proposals after token (B, 1) at position pos, one decoding step each: (token followed by the
    proposals, (B, 1 + n); the distributions q (B, vocab_size) they were drawn from)."""
    proposals, draft_probs, current = [], [], token
    for i in range(n):
        q = sampling.distribution(decode_step(draft, current, pos + i))
        current = q.argmax(dim=-1, keepdim=True) if sampling.temperature == 0 else sampling.draw(q)[:, None]
        proposals.append(current)
        draft_probs.append(q)
    return torch.cat([token, *proposals], dim=1), draft_probs


def verify(logits: torch.Tensor, proposed: torch.Tensor, draft_probs: list, sampling: Sampling):
    """The model's verdict on the proposals, proposed[:, 1:], given its logits after each token of proposed:
    (the proposals each row accepted (B,), the fewest any row accepted n, the token (B,) after the first n)."""
    batch_size, n_draft = proposed.size(0), proposed.size(1) - 1
    if sampling.temperature == 0:
        target = logits.argmax(dim=-1)  # (B, 1 + n_draft)
        accepted = (target[:, :n_draft] == proposed[:, 1:]).int().cumprod(dim=1).sum(dim=1)
        n = int(accepted.min())
        return accepted, n, target[:, n]  # the model's own token where the first row disagrees (or the bonus token)
    p = torch.stack([sampling.distribution(logits[:, i]) for i in range(n_draft + 1)], dim=1)
    if n_draft:
        q = torch.stack(draft_probs, dim=1)
        drafted = proposed[:, 1:, None]
        p_x, q_x = p[:, :n_draft].gather(-1, drafted)[..., 0], q.gather(-1, drafted)[..., 0]
        u = torch.rand(p_x.shape, generator=sampling.generator, device=p_x.device)
        accepted = (u * q_x < p_x).int().cumprod(dim=1).sum(dim=1)
    else:
        accepted = torch.zeros(batch_size, dtype=torch.long, device=proposed.device)
    n = int(accepted.min())
    if n == n_draft:
        return accepted, n, sampling.draw(p[:, n])
    # the rows rejected at n draw from the residual; the others keep their proposal
    residual = (p[:, n] - q[:, n]).clamp(min=0)
    residual = torch.where(residual.sum(dim=-1, keepdim=True) > 0, residual, p[:, n])
    rows = torch.arange(batch_size, device=proposed.device)
    return accepted, n, torch.where(accepted > n, proposed[rows, n + 1], sampling.draw(residual))


class TextStream:
    """One sample's tokens in, printable text out. Holds back the bytes of a UTF-8 character split across tokens
    until it is complete, and any tail that may be the start of a stop text; ends the sample at the first stop text."""

    def __init__(self, stop: str | tuple[str, ...] | None = None):
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = tuple(s for s in ((stop,) if isinstance(stop, str) else stop or ()) if s)
        self.pending = ""
        self.done = False

    def add(self, token: int) -> str:
        if self.done:
            return ""
        self.pending += self.decoder.decode(get_tokenizer().decode_single_token_bytes(token))
        return self._release()

    def finish(self) -> str:
        if self.done:
            return ""
        self.pending += self.decoder.decode(b"", final=True)
        text = self._release(final=True)
        self.done = True
        return text

    def _release(self, final: bool = False) -> str:
        held = 0
        cuts = [cut for cut in (self.pending.find(stop) for stop in self.stops) if cut >= 0]
        if cuts:
            self.done = True
            text, self.pending = self.pending[: min(cuts)], ""
            return text
        if not final:
            held = max((n for s in self.stops for n in range(1, len(s)) if self.pending.endswith(s[:n])), default=0)
        split = len(self.pending) - held
        text, self.pending = self.pending[:split], self.pending[split:]
        return text


def check_draft(draft_config, config, draft: Path):
    """A draft must share the model's vocabulary and see at least the model's context."""
    if draft_config.vocab_size != config.vocab_size:
        raise GptkitError(
            f"the draft {draft} has a vocabulary of {draft_config.vocab_size} tokens, the model {config.vocab_size}: "
            "a draft must use the same tokenizer"
        )
    if draft_config.block_size < config.block_size:
        raise GptkitError(
            f"the draft {draft} has a context of {draft_config.block_size} tokens, shorter than the model's "
            f"{config.block_size}: use a draft with at least the model's context"
        )


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

    model = drop_padded_vocabulary(load_checkpoint(ckpt, device, dtype))
    if quantize == "int8":
        quantize_int8(model)
    return prepare_for_decoding(model, compile, dynamic)


class SamplePrinter:
    """The samples of a batch, printed one after another to out: the current one streams, the others are buffered
    until their turn."""

    def __init__(self, prompt: str, num_samples: int, stop: str | None, out):
        self.streams = [TextStream(stop) for _ in range(num_samples)]
        self.buffers = [prompt] * num_samples
        self.counts = [0] * num_samples  # the tokens of each sample so far
        self.current = 0
        self.out = out
        out.write(self.header(0))

    def header(self, i: int) -> str:
        if len(self.streams) == 1:
            return ""
        return ("\n\n" if i else "") + f"─── sample {i + 1}/{len(self.streams)} ───\n"

    @property
    def done(self) -> bool:
        return self.current == len(self.streams)

    def add(self, tokens: list[int]):
        """One step's tokens, one a sample."""
        for i, token in enumerate(tokens):
            stream = self.streams[i]
            if not stream.done:
                self.counts[i] += 1
                self.buffers[i] += stream.finish() if token == EOT_TOKEN else stream.add(token)
        self.flush()

    def finish(self):
        for i, stream in enumerate(self.streams):
            self.buffers[i] += stream.finish()
        self.flush()
        self.out.write("\n")
        self.out.flush()

    def flush(self):
        while self.current < len(self.streams):
            self.out.write(self.buffers[self.current])
            self.buffers[self.current] = ""
            if not self.streams[self.current].done:
                break
            self.current += 1
            if self.current < len(self.streams):
                self.out.write(self.header(self.current))
        self.out.flush()


def speed_report(arrivals: list[tuple[float, int]], elapsed: float, stats: dict, settings: list[str], compiled: bool):
    """The line after the samples: tokens per second, time to the first token, the draft's acceptance (stats), the
    time compiling took (compiled, without a draft) and settings. arrivals: (seconds, tokens so far) after each step."""
    total = arrivals[-1][1]
    speculation = ""
    if stats.get("proposed"):
        speculation = (
            f", draft acceptance {stats['accepted'] / stats['proposed']:.0%} "
            f"({stats['accepted']}/{stats['proposed']} proposed, {stats['rounds']} model passes)"
        )
    compiling = ""
    if compiled and len(arrivals) > 2:  # the prompt's pass gives the first token; the next step compiles
        (first_s, _), (second_s, printed) = arrivals[:2]
        compiling = (
            f", {second_s - first_s:.1f} s of it compiling the step, "
            f"{(total - printed) / (elapsed - second_s):.1f} tokens/s after"
        )
    return (
        f"[dim]{total} tokens in {elapsed:.2f} s: {total / elapsed:.1f} tokens/s, "
        f"first token after {arrivals[0][0] * 1000:.0f} ms{compiling}{speculation} ({', '.join(settings)})[/dim]"
    )


def sample(opts: SampleOptions):
    """`gptkit sample`: stream opts.num_samples continuations of opts.prompt to standard output, one after another
    (opts checked itself when it was made)."""
    from rich.console import Console

    from gptkit.checkpoint.folder import read_config
    from gptkit.checkpoint.locate import checkpoint_or_latest, quantization_of
    from gptkit.machine.runtime import pick_device, pick_dtype

    prompt = sys.stdin.read() if opts.prompt == "-" else opts.prompt
    ckpt = checkpoint_or_latest(opts.ckpt, "--ckpt DIR")
    if opts.draft is not None:
        check_draft(read_config(opts.draft), read_config(ckpt), opts.draft)
    device = pick_device(opts.device)
    dtype = pick_dtype(opts.dtype, device)
    model = load_for_decoding(ckpt, device, dtype, opts.quantize, opts.compile)
    draft = None if opts.draft is None else load_for_decoding(opts.draft, device, dtype, opts.quantize, opts.compile)
    prompt_tokens = encode(prompt) if prompt else [EOT_TOKEN]
    block_size = model.config.block_size
    if len(prompt_tokens) > block_size:
        raise GptkitError(
            f"the prompt is {len(prompt_tokens)} tokens long, more than the model's context of {block_size}: shorten it"
        )
    idx = torch.tensor([prompt_tokens] * opts.num_samples, dtype=torch.long, device=device)
    generator = None if opts.seed is None else torch.Generator(device).manual_seed(opts.seed)

    printer = SamplePrinter(prompt, opts.num_samples, opts.stop, sys.stdout)
    start = time.perf_counter()
    arrivals = []  # (seconds since start, tokens printed so far) after each step
    stats = {}
    sampling = Sampling(opts.temperature, opts.top_k or None, opts.top_p, generator)
    tokens_out = generate(
        model, idx, opts.max_new_tokens, sampling, draft=draft, draft_tokens=opts.draft_tokens, stats=stats
    )
    for tokens in tokens_out:
        printer.add(tokens.tolist())
        arrivals.append((time.perf_counter() - start, sum(printer.counts)))
        if printer.done:
            break
    elapsed = time.perf_counter() - start
    printer.finish()
    settings = [str(dtype).removeprefix("torch."), str(device)]
    weights = opts.quantize or quantization_of(ckpt)  # an int8 checkpoint is int8 without --quantize
    settings += [f"{weights} weights"] if weights else []
    settings += ["compiled"] if opts.compile else []
    Console(stderr=True).print(
        speed_report(arrivals, elapsed, stats, settings, compiled=opts.compile and draft is None),
        highlight=False,
        soft_wrap=True,
    )
