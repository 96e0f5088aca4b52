"""Eval throughput of GPT-2 124M (random weights): gptkit's evaluate_lm against transformers' GPT2LMHeadModel(labels=...)
on the same windows of 1024 tokens, one window per forward pass, in fp32 and bf16 (autocast for both, as
`gptkit eval` runs), the two timed in alternation on the auto-picked device."""

import time

import numpy as np
import torch

from bench.common import summary
from gptkit.model.config import PRESETS
from gptkit.evaluation.loss import evaluate_lm
from gptkit.model.gpt import GPT
from gptkit.machine.runtime import autocast, pick_device


def bench_eval(quick: bool = True) -> list[dict]:
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptkit.checkpoint.huggingface import hf_config, to_hf_tensors

    block_size, n_windows, repeats = 1024, (2 if quick else 4), (2 if quick else 3)
    device = pick_device("auto")
    torch.manual_seed(0)
    model = GPT(PRESETS["gpt2"]).eval()
    hf = GPT2LMHeadModel(GPT2Config(**hf_config(model.config))).eval()
    missing, unexpected = hf.load_state_dict(to_hf_tensors(model), strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)  # lm_head is tied to wte
    tokens = np.random.default_rng(0).integers(0, 50257, n_windows * block_size + 1)
    windows = torch.from_numpy(tokens[:-1].reshape(n_windows, block_size).astype(np.int64)).to(device)
    model.to(device)
    hf.to(device)

    def run_gptkit(dtype):
        evaluate_lm(model, tokens, block_size, batch_size=1, dtype=dtype)

    @torch.no_grad()
    def run_hf(dtype):
        for window in windows:
            with autocast(device, dtype):
                hf(window[None], labels=window[None]).loss.item()

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        times = {"gptkit": [], "transformers": []}
        run_gptkit(dtype)  # warm-up
        run_hf(dtype)
        for _ in range(repeats):
            for name, fn in (("gptkit", run_gptkit), ("transformers", run_hf)):
                start = time.perf_counter()
                fn(dtype)
                times[name].append(time.perf_counter() - start)
        for name, seconds in times.items():
            s = summary(seconds)
            rows.append(
                {
                    "impl": name,
                    "dtype": str(dtype).removeprefix("torch."),
                    "tokens": n_windows * block_size,
                    "tokens_per_s": n_windows * block_size / s["median"],
                    "best_tokens_per_s": n_windows * block_size / s["min"],
                    "device": str(device),
                    "threads": torch.get_num_threads(),
                }
            )
    return rows


if __name__ == "__main__":
    import sys

    rows = bench_eval(quick="--full" not in sys.argv)
    print("| implementation | device | dtype | tokens/s (median) | tokens/s (best) | windows x 1024 tokens | threads |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['impl']} | {r['device']} | {r['dtype']} | {r['tokens_per_s']:,.0f} | {r['best_tokens_per_s']:,.0f} "
            f"| {r['tokens'] // 1024} | {r['threads']} |"
        )
