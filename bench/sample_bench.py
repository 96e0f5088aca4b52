"""gptkit's sampler against transformers' generate() on the same GPT-2 124M weights (random ones will do).

Both generate exactly the same number of tokens (no stopping at <|endoftext|>), with top-k 50 sampling and a cache;
runs alternate between the two so that the machine's other load falls on both alike.
Run: uv run python -m bench.sample_bench [--quick]
"""

import argparse
import statistics
import sys
import tempfile
import time

import torch

from bench.common import copy_bandwidth_gbs, summary
from gptkit.checkpoint import save_checkpoint
from gptkit.model import GPT, PRESETS
from gptkit.sample import generate, prepare_for_decoding
from gptkit.tokenizer import EOT_TOKEN, encode

PROMPT = "The quick brown fox jumps over the lazy dog. In the beginning"


def gptkit_run(model, idx, new_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, seconds in all) of one generation."""
    start = time.perf_counter()
    first = None
    for step, _ in enumerate(generate(model, idx, new_tokens, temperature=1.0, top_k=50)):
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


def weight_bytes_per_token(model: GPT, dtype: torch.dtype) -> int:
    """Bytes of weights a decoding step reads: every parameter (wte once, as lm_head) but the position embeddings."""
    n = model.num_params() - model.transformer.wpe.weight.numel()
    return n * dtype.itemsize


def bench_sample(
    quick: bool = False, dtypes=(torch.float32, torch.bfloat16), batch_sizes=(1, 4), repeats: int | None = None
) -> list[dict]:
    """Rows of impl, dtype, batch, tokens/s (median, min, max over repeats), ttft_ms; plus a 'bound' row per dtype:
    batch-1 tokens/s if a step only had to read the weights at the measured copy bandwidth (the best of two
    measurements taken around that dtype's runs), and the fraction of it gptkit's best batch-1 run reaches."""
    from transformers import GPT2LMHeadModel

    new_tokens, default_repeats = (50, 2) if quick else (200, 5)
    repeats = repeats or default_repeats
    torch.manual_seed(0)
    base = GPT(PRESETS["gpt2"]).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(base, tmp)
        for dtype in dtypes:
            model = GPT(PRESETS["gpt2"]).eval()
            model.load_state_dict(base.state_dict())
            prepare_for_decoding(model.to(dtype))  # as gptkit sample does
            hf = GPT2LMHeadModel.from_pretrained(tmp, dtype=dtype).eval()
            name = str(dtype).removeprefix("torch.")
            bandwidth = copy_bandwidth_gbs()
            for batch in batch_sizes:
                idx = torch.tensor([encode(PROMPT)] * batch)
                runs = {"gptkit": [], "transformers": []}
                for fn, m in ((gptkit_run, model), (hf_run, hf)):
                    fn(m, idx, 5)  # warm-up
                for _ in range(repeats):
                    runs["gptkit"].append(gptkit_run(model, idx, new_tokens))
                    runs["transformers"].append(hf_run(hf, idx, new_tokens))
                    seconds = f"gptkit {runs['gptkit'][-1][1]:.2f} s, transformers {runs['transformers'][-1][1]:.2f} s"
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
            bandwidth = max(bandwidth, copy_bandwidth_gbs())
            bound = bandwidth * 1e9 / weight_bytes_per_token(base, dtype)
            ours = [r for r in rows if r["impl"] == "gptkit" and r["dtype"] == name and r["batch"] == 1]
            if ours:
                rows.append(
                    {
                        "impl": f"bound ({bandwidth:.1f} GB/s copy)",
                        "dtype": name,
                        "batch": 1,
                        "tokens/s": bound,
                        "fraction": ours[0]["tokens/s max"] / bound,
                    }
                )
            del model, hf
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| impl | dtype | batch | tokens/s (median [min, max]) | time to first token | vs transformers |"]
    lines.append("|---|---|---|---|---|---|")
    for r in rows:
        if "fraction" in r:
            lines.append(
                f"| {r['impl']} | {r['dtype']} | 1 | {r['tokens/s']:.1f} | | gptkit's best: {r['fraction']:.0%} of it |"
            )
            continue
        same = (r["dtype"], r["batch"])
        hf = next(h for h in rows if h["impl"] == "transformers" and (h["dtype"], h["batch"]) == same)
        lines.append(
            f"| {r['impl']} | {r['dtype']} | {r['batch']} | {r['tokens/s']:.1f} [{r['tokens/s min']:.1f}, "
            f"{r['tokens/s max']:.1f}] | {r['ttft_ms']:.0f} ms | {r['tokens/s'] / hf['tokens/s']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 new tokens, 2 repeats")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, help="runs of each (default: 5, or 2 with --quick)")
    args = parser.parse_args()
    print(markdown(bench_sample(args.quick, batch_sizes=args.batch_sizes, repeats=args.repeats)))
