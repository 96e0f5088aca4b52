"""The speed choices gptkit makes from the machine, measured against their alternatives on every CPU level this host
runs (each level in a child process under ATEN_CPU_CAPABILITY, the two sides of each choice alternating):

- `--dtype auto` on the CPU (cpu.cpu_prefers_bf16): a training step in bf16 autocast against fp32;
- Muon's Newton-Schulz iteration (optim.Muon): torch's bf16 iteration against gptkit's fp32 one;
- int8 decoding (int8.Int8Linear.kernel_dtype): torch's int8 kernel with bf16 activations, with fp32 ones, and
  the dequantized fp32 product;
- fp32 decoding (model.blocked.BlockedLinear): one block per thread against nn.Linear;
- bf16 decoding (inference.decode.torch_gemv_wins): torch's own product against oneDNN's, for 1, 2 and 4 rows;
  its cache (model.kv_cache.KVCache.dtype_for_weights): a one-row step's attention over 128 and 1,024 positions
  (12 layers, oneDNN as the step has it), fp32 against bf16;
- the thread count: each of the above runs on torch's default (one thread per core); a training step and a decoding
  step on one thread show what the other cores bring.

    uv run python -m bench.choices_bench            # every level this host runs
    uv run python -m bench.choices_bench --quick    # fewer repeats
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cpu_name  # noqa: E402
from gptkit.machine.cpu import lower_cpu_levels  # noqa: E402

TRAIN_CONFIG = dict(n_layer=6, n_head=6, n_embd=384, block_size=256)  # the mini preset
TRAIN_BATCH = (4, 256)
# GPT-2 124M's matrices as (out, in), and how many of each a decoding step reads.
DECODE_MATRICES = ((2304, 768, 12), (768, 768, 12), (3072, 768, 12), (768, 3072, 12), (50257, 768, 1))
CACHE_POSITIONS = (128, 1024)  # a short sample's cache, and GPT-2's context
BF16_ROWS = (1, 2, 4)  # rows of a bf16 decoding step: one sample, two, a batch
MUON_MATRICES = ((768, 3072), (3072, 768), (2304, 768), (768, 768))


def alternate(candidates: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each candidate (a no-argument function), the candidates run in turn after a warm-up."""
    for fn in candidates.values():
        fn()
    seconds = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in seconds.items()}


def train_step_fn(dtype: torch.dtype):
    from gptkit.model.gpt import GPT, GPTConfig
    from gptkit.machine.runtime import autocast

    torch.manual_seed(0)
    model = GPT(GPTConfig(**TRAIN_CONFIG)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 50257, TRAIN_BATCH)
    device = torch.device("cpu")

    def step():
        with autocast(device, dtype):
            _, loss = model(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def decode_fns() -> dict:
    """One decoding step's products of GPT-2 124M, each way gptkit could run them."""
    from gptkit.model.int8 import Int8Linear
    from gptkit.model.blocked import BlockedLinear
    from gptkit.inference.decode import torch_gemv_wins
    from gptkit.machine.cpu import cpu_level
    from gptkit.model.gpt import attention_by_matmul

    torch.manual_seed(0)
    linears = [nn.Linear(n_in, n_out, bias=False) for n_out, n_in, count in DECODE_MATRICES for _ in range(count)]
    int8 = [Int8Linear.quantize(linear.weight) for linear in linears]
    blocked = [BlockedLinear(linear, torch.get_num_threads()) for linear in linears]
    x = {n_in: torch.randn(1, 1, n_in) for _, n_in, _ in DECODE_MATRICES}
    x16 = {n: t.bfloat16() for n, t in x.items()}
    kernel = torch.ops.aten._weight_int8pack_mm
    scales = {id(q): (q.scales.bfloat16(), q.scales.float()) for q in int8}

    def int8_kernel(activations, which):
        return lambda: [kernel(activations[q.in_features][0], q.weight, scales[id(q)][which]) for q in int8]

    bf16 = [nn.Linear(linear.in_features, linear.out_features, bias=False).bfloat16() for linear in linears]

    def bf16_product(rows: int, onednn: bool):
        inputs = {n: torch.randn(rows, n).bfloat16() for n in x}

        def run():
            with torch.backends.mkldnn.flags(enabled=onednn):
                return [linear(inputs[linear.in_features]) for linear in bf16]

        return run

    def attention(dtype, positions: int):
        """A one-row step's attention over positions in 12 layers, oneDNN on or off as decode_step has it."""
        q, k, v = (torch.randn(1, 12, length, 64, dtype=dtype) for length in (1, positions, positions))
        onednn = not torch_gemv_wins(1, cpu_level())

        def run():
            with torch.backends.mkldnn.flags(enabled=onednn):
                return [attention_by_matmul(q, k, v, None) for _ in range(12)]

        return run

    bf16_fns = {
        f"attention over {positions}, {name} cache": attention(dtype, positions)
        for positions in CACHE_POSITIONS
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    } | {
        f"bf16 {rows} rows, {'oneDNN' if onednn else 'torch'}": bf16_product(rows, onednn)
        for rows in BF16_ROWS
        for onednn in (True, False)
    }
    return bf16_fns | {
        "int8 kernel, bf16 activations": int8_kernel(x16, 0),
        "int8 kernel, fp32 activations": int8_kernel(x, 1),
        "int8 dequantized, fp32": lambda: [q.weight.float() @ x[q.in_features][0, 0] * q.scales for q in int8],
        "fp32 BlockedLinear": lambda: [b(x[b.weight.size(1)]) for b in blocked],
        "fp32 nn.Linear": lambda: [linear(x[linear.in_features]) for linear in linears],
    }


def muon_fns() -> dict:
    from torch.optim._muon import _zeropower_via_newtonschulz

    from gptkit.training.optim import orthogonalize

    torch.manual_seed(0)
    grads = [torch.randn(shape) for shape in MUON_MATRICES]
    coefficients, steps, eps = (3.4445, -4.775, 2.0315), 5, 1e-7
    return {
        "Newton-Schulz bf16 (torch)": lambda: [_zeropower_via_newtonschulz(g, coefficients, steps, eps) for g in grads],
        "Newton-Schulz fp32 (gptkit)": lambda: [orthogonalize(g, coefficients, steps, eps) for g in grads],
    }


def measure(quick: bool) -> dict:
    """This process's figures (its level is ATEN_CPU_CAPABILITY's, or the host's)."""
    from gptkit.machine.cpu import cpu_level, cpu_prefers_bf16
    from gptkit.model.int8 import has_int8_kernel

    repeats = 3 if quick else 10
    threads = torch.get_num_threads()
    with torch.inference_mode():
        decode = alternate(decode_fns(), repeats * 5)
        torch.set_num_threads(1)
        decode_one_thread = alternate({"fp32 nn.Linear, 1 thread": decode_fns()["fp32 nn.Linear"]}, repeats * 5)
        torch.set_num_threads(threads)
    train = alternate({"fp32": train_step_fn(torch.float32), "bf16 autocast": train_step_fn(torch.bfloat16)}, repeats)
    torch.set_num_threads(1)
    train_one_thread = alternate({"fp32, 1 thread": train_step_fn(torch.float32)}, max(2, repeats // 3))
    torch.set_num_threads(threads)
    muon = alternate(muon_fns(), repeats)
    return {
        "level": cpu_level(),
        "threads": threads,
        "auto picks bf16": cpu_prefers_bf16(),
        "int8 kernel": has_int8_kernel(torch.device("cpu")),
        "decode": decode | decode_one_thread,
        "train": train | train_one_thread,
        "muon": muon,
    }


def verdicts(r: dict) -> list[list[str]]:
    """[choice, what gptkit does here, figures, right?] for one level's measurements."""
    from gptkit.inference.decode import torch_gemv_wins
    from gptkit.model.kv_cache import KVCache
    from gptkit.model.int8 import kernel_dtype_for_level

    d, t, m = r["decode"], r["train"], r["muon"]
    ms = lambda s: f"{s * 1e3:.1f} ms"  # noqa: E731
    bf16_train = t["bf16 autocast"] < t["fp32"]
    int8_choice = kernel_dtype_for_level(r["level"]) if r["int8 kernel"] else None
    int8_best = min(("int8 kernel, bf16 activations", "int8 kernel, fp32 activations", "int8 dequantized, fp32"),
                    key=d.get)  # fmt: skip
    int8_name = {torch.bfloat16: "int8 kernel, bf16 activations", torch.float32: "int8 kernel, fp32 activations",
                 None: "int8 dequantized, fp32"}[int8_choice]  # fmt: skip
    muon_bf16 = m["Newton-Schulz bf16 (torch)"] < m["Newton-Schulz fp32 (gptkit)"]
    blocked = d["fp32 BlockedLinear"] < d["fp32 nn.Linear"]

    def right(chosen: bool, faster: bool) -> str:
        return "yes" if chosen == faster else "**no**"

    torch_gemv = {rows: torch_gemv_wins(rows, r["level"]) for rows in BF16_ROWS}
    bf16_rows = [
        [f"bf16 decoding step, {rows} row(s)", "torch" if torch_gemv[rows] else "oneDNN",
         f"oneDNN {ms(d[f'bf16 {rows} rows, oneDNN'])}, torch {ms(d[f'bf16 {rows} rows, torch'])}",
         right(torch_gemv[rows], d[f"bf16 {rows} rows, torch"] < d[f"bf16 {rows} rows, oneDNN"])]
        for rows in BF16_ROWS
    ]  # fmt: skip
    fp32_cache = KVCache.dtype_for_weights(torch.empty(0, dtype=torch.bfloat16)) == torch.float32
    for n in CACHE_POSITIONS:
        fp32, bf16 = d[f"attention over {n}, fp32 cache"], d[f"attention over {n}, bf16 cache"]
        bf16_rows.append([f"bf16 model's cache (attention over {n})", "fp32" if fp32_cache else "bf16",
                          f"fp32 {ms(fp32)}, bf16 {ms(bf16)}", right(fp32_cache, fp32 < bf16)])  # fmt: skip
    return bf16_rows + [
        ["--dtype auto (training step, mini 4 x 256)", "bf16" if r["auto picks bf16"] else "fp32",
         f"fp32 {ms(t['fp32'])}, bf16 {ms(t['bf16 autocast'])} ({t['fp32'] / t['bf16 autocast']:.2f}x)",
         right(r["auto picks bf16"], bf16_train)],
        ["Muon Newton-Schulz", "bf16" if r["auto picks bf16"] else "fp32",
         f"fp32 {ms(m['Newton-Schulz fp32 (gptkit)'])}, bf16 {ms(m['Newton-Schulz bf16 (torch)'])}",
         right(r["auto picks bf16"], muon_bf16)],
        ["int8 decoding step (GPT-2 124M)", int8_name,
         ", ".join(f"{k.removeprefix('int8 ')} {ms(d[k])}" for k in d if k.startswith("int8")),
         "yes" if int8_name == int8_best else "**no**"],
        ["fp32 decoding step (GPT-2 124M)", "BlockedLinear",
         f"nn.Linear {ms(d['fp32 nn.Linear'])}, BlockedLinear {ms(d['fp32 BlockedLinear'])}", right(True, blocked)],
        [f"threads ({r['threads']}, torch's default)", f"{r['threads']}",
         f"train step 1 thread {ms(t['fp32, 1 thread'])} vs {ms(t['fp32'])}; decode 1 thread "
         f"{ms(d['fp32 nn.Linear, 1 thread'])} vs {ms(d['fp32 nn.Linear'])}",
         right(True, t["fp32"] < t["fp32, 1 thread"])],
    ]  # fmt: skip


def markdown(results: list[dict], quick: bool) -> str:
    lines = [f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}; "
             f"`uv run python -m bench.choices_bench{' --quick' if quick else ''}`", ""]  # fmt: skip
    lines += ["| level | choice | gptkit picks | measured (median) | right? |", "|---|---|---|---|---|"]
    for r in results:
        lines += [f"| {r['level']} | " + " | ".join(row) + " |" for row in verdicts(r)]
    return "\n".join(lines)


def run_levels(quick: bool, levels: list[str | None]) -> list[dict]:
    """measure() in a child process per level (None: the host's own)."""
    results = []
    for level in levels:
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
        if level is not None:
            env["ATEN_CPU_CAPABILITY"] = level
        command = [sys.executable, "-m", "bench.choices_bench", "--child"] + (["--quick"] if quick else [])
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.quick)))
        return
    print(markdown(run_levels(args.quick, [None, *lower_cpu_levels()]), args.quick))


if __name__ == "__main__":
    main()
