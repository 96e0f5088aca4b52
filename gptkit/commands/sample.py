"""`gptkit sample`: stream continuations of a prompt to standard output, then a line of speed figures."""

import sys
import time

import torch

from gptkit.data.tokenizer import EOT_TOKEN, encode
from gptkit.errors import GptkitError
from gptkit.inference.decode import load_for_decoding
from gptkit.inference.generate import generate
from gptkit.inference.sampling import Sampling
from gptkit.inference.speculate import check_draft
from gptkit.inference.stream import TextStream
from gptkit.options import SampleOptions


class SamplePrinter:
    """The samples of a batch, printed one after another to out: the current one streams, the others are buffered
    until their turn."""

    def __init__(self, prompt: str, num_samples: int, stop: str | tuple[str, ...] | None, out):
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
    from gptkit.commands.chat import chat_template_of
    from gptkit.inference.chat_template import format_prompt
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
    stop = opts.stop
    if opts.chat:  # the prompt is a message: the reply alone is printed, ending where the turn does
        template = chat_template_of(ckpt, Console(stderr=True, highlight=False, soft_wrap=True))
        stop = (*template["stop"], *([opts.stop] if opts.stop else []))
        prompt_tokens, prompt = encode(format_prompt(template, [("user", prompt)])), ""
    else:
        prompt_tokens = encode(prompt) if prompt else [EOT_TOKEN]
    block_size = model.config.block_size
    if len(prompt_tokens) > block_size:
        raise GptkitError(
            f"the prompt is {len(prompt_tokens)} tokens long, more than the model's context of {block_size}: shorten it"
        )
    idx = torch.tensor([prompt_tokens] * opts.num_samples, dtype=torch.long, device=device)
    generator = None if opts.seed is None else torch.Generator(device).manual_seed(opts.seed)

    printer = SamplePrinter(prompt, opts.num_samples, stop, sys.stdout)
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
