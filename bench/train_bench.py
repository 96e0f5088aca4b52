"""Training speed and memory: gptkit against transformers' GPT2LMHeadModel, same weights, batch, data and AdamW.

Every measurement runs in a fresh child process (so that its peak resident memory is its own), gptkit and
transformers alternating. Run: `uv run python bench/train_bench.py [--quick]`.
"""

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import matmul_peak_gflops, summary  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "data" / "input.txt"
MODELS = ("gpt2", "mini")  # GPT-2 124M, and the small preset for quick CPU runs
GPTKIT, TRANSFORMERS = "gptkit", "transformers"
# transformers with gptkit's allocator setting (runtime.keep_freed_memory): shows how much of the lead is that setting
TRANSFORMERS_TUNED = "transformers+malloc"
BATCH, SEQ = 4, 256


def batches(n: int):
    from gptkit.data.loader import BatchLoader, load_tokens

    tokens, _ = load_tokens(DATA)
    loader = BatchLoader(tokens, BATCH, SEQ, seed=0)
    return [loader.next_batch() for _ in range(n)]


def child(impl: str, dtype_name: str, checkpoint: str, steps: int):
    """Train `steps` steps (after two warm-up steps) and print the step times and peak RSS as JSON."""
    from gptkit.training.optim import make_optimizer
    from gptkit.machine.runtime import autocast, keep_freed_memory
    from gptkit.training.loop import TrainConfig

    device, dtype = torch.device("cpu"), getattr(torch, dtype_name)
    if impl in (GPTKIT, TRANSFORMERS_TUNED):  # the allocator setting `gptkit train` makes
        keep_freed_memory()
    if impl == GPTKIT:
        from gptkit.checkpoint.folder import load_checkpoint

        model = load_checkpoint(checkpoint).train()

        def loss_of(x, y):
            return model(x, y)[1]
    else:
        from transformers import GPT2LMHeadModel

        model = GPT2LMHeadModel.from_pretrained(checkpoint, dtype=torch.float32).train()

        def loss_of(x, y):
            return model(input_ids=x, labels=x).loss  # transformers shifts the labels itself

    optimizer = make_optimizer(model, TrainConfig(data="", lr=6e-4, weight_decay=0.1), device)
    data = batches(steps + 2)
    times = []
    for i, (x, y) in enumerate(data):
        t0 = time.perf_counter()
        with autocast(device, dtype):
            loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"times": times, "peak_rss_mb": peak_mb, "loss": loss.item()}))


def run_child(impl: str, dtype: str, checkpoint: Path, steps: int) -> dict:
    command = [sys.executable, __file__, "--child", impl, dtype, str(checkpoint), str(steps)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{impl} {dtype} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_train(quick: bool = False, models=None) -> list[dict]:
    models = models or (MODELS[1:] if quick else MODELS)
    batches(1)  # tokenize (and cache) outside the timed children
    # A shared 2-core machine has slow spells: the peak is the best of measurements before and after the children.
    peaks = {dtype: matmul_peak_gflops(getattr(torch, dtype)) for dtype in ("float32", "bfloat16")}
    rows = [row for model in models for row in bench_model(model, quick)]
    for dtype in peaks:
        peaks[dtype] = max(peaks[dtype], matmul_peak_gflops(getattr(torch, dtype)))
    for row in rows:
        peak = peaks[row["dtype"]]
        row["MFU %"] = round(100 * row.pop("flops/token") * row["tokens/s median"] / (peak * 1e9), 1)
        row["matmul peak GFLOP/s"] = round(peak)
    return rows


def bench_model(name: str, quick: bool) -> list[dict]:
    from gptkit.checkpoint.folder import save_checkpoint
    from gptkit.model.config import PRESETS
    from gptkit.model.gpt import GPT
    from gptkit.training.step import flops_per_token

    steps, rounds = (3, 1) if quick else (8, 2)
    torch.manual_seed(0)
    model = GPT(PRESETS[name])
    flops = flops_per_token(model, SEQ)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_checkpoint(model, Path(tmp) / "init")
        del model
        runs = [
            (impl, dtype) for dtype in ("float32", "bfloat16") for impl in (GPTKIT, TRANSFORMERS, TRANSFORMERS_TUNED)
        ]
        results = {run: {"times": [], "peak_rss_mb": []} for run in runs}
        for _ in range(rounds):
            for impl, dtype in runs:
                r = run_child(impl, dtype, checkpoint, steps)
                results[(impl, dtype)]["times"] += r["times"]
                results[(impl, dtype)]["peak_rss_mb"].append(r["peak_rss_mb"])
    for (impl, dtype), r in results.items():
        tokens_per_s = summary([BATCH * SEQ / t for t in r["times"]])
        rows.append(
            {
                "impl": impl,
                "model": name,
                "dtype": dtype,
                "batch": f"{BATCH} x {SEQ}",
                "tokens/s median": round(tokens_per_s["median"]),
                "tokens/s min": round(tokens_per_s["min"]),
                "tokens/s max": round(tokens_per_s["max"]),
                "flops/token": flops,
                "peak RSS MB": round(statistics.median(r["peak_rss_mb"])),
            }
        )
    baseline = next(r["tokens/s median"] for r in rows if r["impl"] == TRANSFORMERS and r["dtype"] == "float32")
    for row in rows:
        row["vs transformers fp32"] = f"{row['tokens/s median'] / baseline:.2f}x"
    return rows


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        print(markdown(bench_train(quick="--quick" in sys.argv)))
