"""gptkit's sampler against transformers' generate() on the same GPT-2 124M weights (random ones will do), and
gptkit's faster ways to decode: int8 weights (--quantize int8), a compiled step (--compile) and speculative decoding
(--draft, with a draft/target pair trained here on data/input.txt). First, the step's fp32 matrix-vector products
alone, nn.Linear against the blocked layout that fp32 decoding on the CPU uses (model.blocked.BlockedLinear).

All generate exactly the same number of tokens (no stopping at <|endoftext|>), with top-k 50 sampling and a cache;
runs alternate between the variants so that the machine's other load falls on all alike.
Run: uv run python -m bench.sample_bench [--quick]
"""

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from bench.common import copy_bandwidth_gbs, summary
from gptkit.checkpoint.folder import save_checkpoint
from gptkit.model.config import PRESETS
from gptkit.model.int8 import quantize_int8
from gptkit.model.gpt import GPT
from gptkit.inference.decode import prepare_for_decoding
from gptkit.inference.generate import generate
from gptkit.inference.sampling import Sampling
from gptkit.model.blocked import BlockedLinear
from gptkit.data.tokenizer import EOT_TOKEN, encode

PROMPT = "The quick brown fox jumps over the lazy dog. In the beginning"


def gptkit_run(model, idx, new_tokens: int, sampling: Sampling = Sampling(), **kwargs) -> tuple[float, float]:
    """(seconds to the first token, seconds in all) of one generation (default: temperature 1, top-k 50)."""
    start = time.perf_counter()
    first = None
    for step, _ in enumerate(generate(model, idx, new_tokens, sampling, **kwargs)):
        if step == 0:
            first = time.perf_counter() - start
    return first, time.perf_counter() - start


class FirstTokenTimer:
    """A transformers streamer that notes when the first new token arrives (its first put() is the prompt)."""

    def __init__(self):
        self.puts, self.first = 0, None

    def put(self, value):
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self):
        pass


def hf_run(model, idx, new_tokens: int) -> tuple[float, float]:
    timer = FirstTokenTimer()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            idx,
            attention_mask=torch.ones_like(idx),
            do_sample=True,
            top_k=50,
            top_p=1.0,
            temperature=1.0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=EOT_TOKEN,
            use_cache=True,
            streamer=timer,
        )
    total = time.perf_counter() - start
    assert out.shape[1] == idx.shape[1] + new_tokens
    return timer.first - start, total


def weight_bytes_per_token(model: GPT) -> int:
    """Bytes of weights a decoding step reads: every weight but the position embeddings, and the token embedding
    only where it is also the output head (a step looks up one row of it)."""
    tensors = {}
    for module in model.modules():  # parameters, buffers, and the plain tensors of BlockedLinear
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        own += [t for t in vars(module).values() if isinstance(t, torch.Tensor)]
        tensors.update((t.data_ptr(), t) for t in own)
    skip = {model.transformer.wpe.weight.data_ptr()}
    head = {t.data_ptr() for t in vars(model.lm_head).values() if isinstance(t, torch.Tensor)}
    head |= {t.data_ptr() for t in (*model.lm_head.parameters(), *model.lm_head.buffers())}
    if model.transformer.wte.weight.data_ptr() not in head:
        skip.add(model.transformer.wte.weight.data_ptr())
    return sum(t.numel() * t.itemsize for ptr, t in tensors.items() if ptr not in skip)


def decoding_model(state: dict, dtype: torch.dtype, int8: bool = False, compile: bool = False) -> GPT:
    """GPT-2 124M with the given weights, prepared as `gptkit sample` prepares it."""
    model = GPT(PRESETS["gpt2"]).eval()
    model.load_state_dict(state)
    model.to(dtype)
    if int8:
        quantize_int8(model)
    return prepare_for_decoding(model, compile)


def bench_sample(
    quick: bool = False,
    dtypes=(torch.float32, torch.bfloat16),
    batch_sizes=(1, 4),
    repeats: int | None = None,
    compile: bool = True,
) -> list[dict]:
    """Rows of impl, dtype, batch, tokens/s (median, min, max over repeats), ttft_ms, for gptkit (as is, with int8
    weights, and both compiled at batch 1) and transformers; plus 'bound' rows: batch-1 tokens/s if a step only had to
    read the weights at the measured copy bandwidth (the best of measurements taken between the runs), and the
    fraction of it gptkit's batch-1 median reaches; and rows with the compile times."""
    from transformers import GPT2LMHeadModel

    new_tokens, default_repeats = (50, 2) if quick else (200, 5)
    repeats = repeats or default_repeats
    torch.manual_seed(0)
    base = GPT(PRESETS["gpt2"]).eval()
    state = base.state_dict()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(base, tmp)
        for dtype in dtypes:
            name = str(dtype).removeprefix("torch.")
            models = {"gptkit": decoding_model(state, dtype), "gptkit int8": decoding_model(state, dtype, int8=True)}
            compiled = {}
            if compile:
                compiled = {"gptkit compiled": decoding_model(state, dtype, compile=True),
                            "gptkit int8 compiled": decoding_model(state, dtype, int8=True, compile=True)}  # fmt: skip
            compile_s = {}
            hf = GPT2LMHeadModel.from_pretrained(tmp, dtype=dtype).eval()
            bandwidths = [copy_bandwidth_gbs()]
            for batch in batch_sizes:
                idx = torch.tensor([encode(PROMPT)] * batch)
                impls = dict(models)
                for impl, model in compiled.items() if batch == 1 else ():
                    eager = models[impl.removesuffix(" compiled")]
                    start = time.perf_counter()
                    gptkit_run(model, idx, 5)  # compiles the step
                    compile_s[impl] = time.perf_counter() - start - gptkit_run(eager, idx, 5)[1]
                    impls[impl] = model
                runs = {impl: [] for impl in (*impls, "transformers")}
                for m in impls.values():
                    gptkit_run(m, idx, 5)  # warm-up
                hf_run(hf, idx, 5)
                for _ in range(repeats):
                    for impl, m in impls.items():
                        runs[impl].append(gptkit_run(m, idx, new_tokens))
                    runs["transformers"].append(hf_run(hf, idx, new_tokens))
                    if batch == 1:
                        bandwidths.append(copy_bandwidth_gbs())
                    seconds = ", ".join(f"{impl} {results[-1][1]:.2f} s" for impl, results in runs.items())
                    print(f"{name} batch {batch}: {seconds}", file=sys.stderr, flush=True)
                for impl, results in runs.items():
                    rate = summary([batch * new_tokens / total for _, total in results])
                    rows.append(
                        {
                            "impl": impl,
                            "dtype": name,
                            "batch": batch,
                            "tokens/s": rate["median"],
                            "tokens/s min": rate["min"],
                            "tokens/s max": rate["max"],
                            "ttft_ms": 1000 * statistics.median(first for first, _ in results),
                        }
                    )
            bandwidth = max(bandwidths)
            for impl in ("gptkit", "gptkit int8", *compiled):
                ours = [r for r in rows if r["impl"] == impl and r["dtype"] == name and r["batch"] == 1]
                if ours:
                    bound = bandwidth * 1e9 / weight_bytes_per_token(models[impl.removesuffix(" compiled")])
                    rows.append(
                        {
                            "impl": f"bound of {impl} ({bandwidth:.1f} GB/s copy)",
                            "dtype": name,
                            "batch": 1,
                            "tokens/s": bound,
                            "fraction": ours[0]["tokens/s"] / bound,
                        }
                    )
            for impl, seconds in compile_s.items():
                rows.append({"impl": impl, "dtype": name, "batch": 1, "compile_s": seconds})
            del models, compiled, hf
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| impl | dtype | batch | tokens/s (median [min, max]) | time to first token | vs transformers |"]
    lines.append("|---|---|---|---|---|---|")
    for r in rows:
        if "compile_s" in r:
            eager, compiled = (
                next(h for h in rows if h["impl"] == impl and h["dtype"] == r["dtype"] and h["batch"] == 1)
                for impl in (r["impl"].removesuffix(" compiled"), r["impl"])
            )
            per_token_saved = 1 / eager["tokens/s"] - 1 / compiled["tokens/s"]
            pays_off = (
                f"pays off after {r['compile_s'] / per_token_saved:,.0f} tokens"
                if per_token_saved > 0
                else "never pays off"
            )
            lines.append(f"| compiling {r['impl']}'s step | {r['dtype']} | 1 | {r['compile_s']:.0f} s | | {pays_off} |")
            continue
        if "fraction" in r:
            lines.append(
                f"| {r['impl']} | {r['dtype']} | 1 | {r['tokens/s']:.1f} | | median at {r['fraction']:.0%} of it |"
            )
            continue
        same = (r["dtype"], r["batch"])
        hf = next(h for h in rows if h["impl"] == "transformers" and (h["dtype"], h["batch"]) == same)
        lines.append(
            f"| {r['impl']} | {r['dtype']} | {r['batch']} | {r['tokens/s']:.1f} [{r['tokens/s min']:.1f}, "
            f"{r['tokens/s max']:.1f}] | {r['ttft_ms']:.0f} ms | {r['tokens/s'] / hf['tokens/s']:.2f}x |"
        )
    return "\n".join(lines)


# GPT-2 124M's matrices as (in, out), and how many of each a step reads.
GPT2_PRODUCTS = {"attn.c_attn": (768, 2304, 12), "attn.c_proj": (768, 768, 12), "mlp.c_fc": (768, 3072, 12),
                 "mlp.c_proj": (3072, 768, 12), "lm_head": (768, 50257, 1)}  # fmt: skip


def bench_products(repeats: int = 25) -> list[dict]:
    """GB/s of the fp32 one-row products of a decoding step, nn.Linear against BlockedLinear (one block per thread),
    over distinct matrices (too large together for the caches), alternating: whether the blocked layout pays on this
    machine."""
    torch.manual_seed(0)
    rows = []
    with torch.inference_mode():
        for name, (n_in, n_out, count) in GPT2_PRODUCTS.items():
            linears = [nn.Linear(n_in, n_out, bias=name != "lm_head") for _ in range(max(count, 3))]
            blocked = [BlockedLinear(linear, torch.get_num_threads()) for linear in linears]
            x = torch.randn(1, 1, n_in)
            seconds = {"nn.Linear": [], "blocked": []}
            for _ in range(repeats):
                for impl, layers in (("nn.Linear", linears), ("blocked", blocked)):
                    start = time.perf_counter()
                    for layer in layers:
                        layer(x)
                    seconds[impl].append(time.perf_counter() - start)
            gbs = {impl: len(linears) * n_in * n_out * 4 / statistics.median(t) / 1e9 for impl, t in seconds.items()}
            rows.append({"matrix": name, "shape": f"{n_in} x {n_out}", **gbs})
    return rows


def products_markdown(rows: list[dict]) -> str:
    lines = [f"| matrix (in x out) | nn.Linear GB/s | BlockedLinear GB/s ({torch.get_num_threads()} blocks) | speed-up |"]
    lines.append("|---|---|---|---|")
    for r in rows:
        lines.append(f"| {r['matrix']} ({r['shape']}) | {r['nn.Linear']:.1f} | {r['blocked']:.1f} | "
                     f"{r['blocked'] / r['nn.Linear']:.2f}x |")  # fmt: skip
    return "\n".join(lines)


def train_pair(data: Path, out: Path, steps: tuple[int, int]) -> tuple[Path, Path]:
    """A target (the mini preset, 30M) and a draft (micro, 7M; both with a context of 256) trained on data, as
    `gptkit train DATA --model PRESET --block-size 256 --batch-size 4 --lr LR --steps STEPS` does."""
    from rich.console import Console

    from gptkit.training.loop import TrainConfig, train

    quiet = Console(file=io.StringIO())
    paths = []
    for preset, lr, preset_steps in zip(("mini", "micro"), (1e-3, 2e-3), steps):
        path = out / preset
        config = TrainConfig(data=str(data), model=preset, out=str(path), steps=preset_steps, block_size=256, batch_size=4,
                             lr=lr, dtype="float32", eval_every=0, save_every=0)  # fmt: skip
        start = time.perf_counter()
        train(config, console=quiet)
        print(f"trained {preset} for {preset_steps} steps in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        paths.append(path)
    return paths[0], paths[1]


def bench_speculative(
    quick: bool = False,
    draft_tokens: tuple[int, ...] = (2, 4),
    repeats: int | None = None,
    train_steps: tuple[int, int] | None = None,
    pair: tuple[Path, Path] | None = None,
) -> list[dict]:
    """Speculative decoding of a target with a draft (pair, or a mini (30M) and a micro (7M) trained here briefly),
    batch 1, fp32, against the target alone, greedy and sampled (top-k 50), for each number of draft tokens,
    alternating; plus the int8 eval loss of the target against fp32 and bf16 on its validation split."""
    from gptkit.checkpoint.folder import load_checkpoint
    from gptkit.evaluation.loss import evaluate_lm
    from gptkit.evaluation.tokens import validation_split

    new_tokens, default_repeats = (50, 2) if quick else (200, 5)
    repeats = repeats or default_repeats
    data = Path(__file__).resolve().parent.parent / "data" / "input.txt"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if pair is None:
            pair = train_pair(data, Path(tmp), train_steps or ((20, 20) if quick else (80, 120)))
        target_path, draft_path = pair
        target = prepare_for_decoding(load_checkpoint(target_path))
        draft = prepare_for_decoding(load_checkpoint(draft_path))
        idx = torch.tensor([encode("ROMEO:\nWhat say you,")])
        impls = {"target alone": None, **{f"target + draft, k={k}": k for k in draft_tokens}}
        for mode, sampling in (("greedy", Sampling(temperature=0)), ("top-k 50", Sampling())):
            runs = {impl: [] for impl in impls}
            acceptance = {impl: [] for impl in impls}
            texts = {}
            for _ in range(repeats + 1):  # the first round warms up
                for impl, k in impls.items():
                    stats = {}
                    kwargs = {"draft": draft if k else None, "draft_tokens": k or 4, "stats": stats}
                    if mode == "greedy" and impl not in texts:
                        texts[impl] = torch.cat(list(generate(target, idx, new_tokens, sampling, **kwargs))).tolist()
                    start = time.perf_counter()
                    gptkit_run(target, idx, new_tokens, sampling, **kwargs)
                    runs[impl].append(time.perf_counter() - start)
                    if stats.get("proposed"):
                        acceptance[impl].append(stats["accepted"] / stats["proposed"])
            alone = new_tokens / statistics.median(runs["target alone"][1:])
            for impl, seconds in runs.items():
                rate = summary([new_tokens / s for s in seconds[1:]])
                row = {"mode": mode, "impl": impl, "tokens/s": rate["median"], "tokens/s min": rate["min"],
                       "tokens/s max": rate["max"]}  # fmt: skip
                if impls[impl]:
                    row["acceptance"] = statistics.median(acceptance[impl])
                    row["speed-up"] = row["tokens/s"] / alone
                    if mode == "greedy":
                        row["same text"] = texts[impl] == texts["target alone"]
                rows.append(row)
        tokens, _ = validation_split(target_path, quiet=True)
        losses = {}
        for name, dtype, int8 in (("float32", torch.float32, False), ("bfloat16", torch.bfloat16, False),
                                  ("int8", torch.float32, True)):  # fmt: skip
            model = load_checkpoint(target_path)
            if int8:
                quantize_int8(model)
            losses[name] = evaluate_lm(model, tokens, max_tokens=8192 if quick else 32768, dtype=dtype)["loss"]
        rows.append({"mode": "eval", "losses": losses})
    return rows


def speculative_markdown(rows: list[dict]) -> str:
    lines = ["| decoding | impl | tokens/s (median [min, max]) | draft acceptance | speed-up | same text as alone |"]
    lines.append("|---|---|---|---|---|---|")
    for r in rows:
        if r["mode"] == "eval":
            continue
        acceptance = f"{r['acceptance']:.0%}" if "acceptance" in r else ""
        speedup = f"{r['speed-up']:.2f}x" if "speed-up" in r else ""
        same = {True: "yes", False: "NO"}.get(r.get("same text"), "")
        lines.append(f"| {r['mode']} | {r['impl']} | {r['tokens/s']:.1f} [{r['tokens/s min']:.1f}, "
                     f"{r['tokens/s max']:.1f}] | {acceptance} | {speedup} | {same} |")  # fmt: skip
    losses = next(r["losses"] for r in rows if r["mode"] == "eval")
    lines += [
        "",
        "| target's validation loss | float32 | bfloat16 | int8 weights | int8 vs bf16 |",
        "|---|---|---|---|---|",
    ]
    lines.append(f"| the target | {losses['float32']:.4f} | {losses['bfloat16']:.4f} | {losses['int8']:.4f} | "
                 f"{losses['int8'] / losses['bfloat16'] - 1:+.2%} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 new tokens, 2 repeats")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, help="runs of each (default: 5, or 2 with --quick)")
    parser.add_argument("--skip-speculative", action="store_true", help="leave out speculative decoding")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the compiled step (slow to compile)")
    parser.add_argument("--train-steps", type=int, nargs=2, help="steps of the target and the draft (default: 80 120)")
    parser.add_argument("--pair", type=Path, nargs=2, metavar=("TARGET", "DRAFT"), help="checkpoints to use instead")
    parser.add_argument("--draft-tokens", type=int, nargs="+", default=[2, 4], help="values of k to compare")
    args = parser.parse_args()
    dtypes = [getattr(torch, name) for name in args.dtypes]
    print(products_markdown(bench_products(5 if args.quick else 25)) + "\n", flush=True)
    print(markdown(bench_sample(args.quick, dtypes, args.batch_sizes, args.repeats, not args.skip_compile)), flush=True)
    if not args.skip_speculative:
        rows = bench_speculative(args.quick, tuple(args.draft_tokens), args.repeats, args.train_steps, args.pair)
        print("\n" + speculative_markdown(rows))
