"""gptkit's batch-1 decoding against llama.cpp's on the same CPU and the same weights, with each precision's bound.

The weights are GPT-2 124M's shape, random (bench.common.random_gpt2), saved as a gptkit checkpoint and exported to
GGUF with `gptkit export` (f32, f16, bf16, q8_0; q4_0 by llama.cpp's llama-quantize). llama.cpp decodes with
llama-bench (tg: tokens generated after an empty prompt); gptkit decodes greedily after a short prompt through
generate(), the model loaded as `gptkit sample` loads it (fp32, bf16, --quantize int8 and int4), eager and compiled.
The compiled step's cost is measured in fresh processes (`gptkit sample --compile`): once with an empty compile
cache, once with the cache that first run left.

The bound of each precision: the bytes a step reads (every weight matrix, the output head included, once) over the
machine's memory bandwidth (a copy much larger than the caches).

llama.cpp comes from llama-cpp-python's source distribution, which carries all of it:

    pip download --no-binary :all: --no-deps llama-cpp-python && tar xzf llama_cpp_python-*.tar.gz
    cmake -S llama_cpp_python-*/vendor/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF
    cmake --build build -j --target llama-bench llama-server llama-quantize
    uv run python -m bench.llama_bench --llama-bin build/bin [--tokens 128] [--repeats 3]

Without llama-bench (no --llama-bin, or none there) the bench says so in one line and measures gptkit alone.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import copy_bandwidth_gbs, cpu_name, random_gpt2  # noqa: E402
from bench.sample_bench import weight_bytes_per_token  # noqa: E402
from gptkit.checkpoint.folder import save_checkpoint  # noqa: E402
from gptkit.inference.decode import load_for_decoding  # noqa: E402
from gptkit.inference.generate import generate  # noqa: E402
from gptkit.inference.sampling import Sampling  # noqa: E402
from gptkit.machine.cpu import cpu_level  # noqa: E402

PROMPT_TOKENS = 16
# gptkit's precision, its `gptkit sample` flags, and the GGUF types of llama.cpp's nearest precision class.
PRECISIONS = (
    ("fp32", ["--dtype", "float32"], ("f32",)),
    ("bf16", ["--dtype", "bfloat16"], ("f16", "bf16")),
    ("int8", ["--dtype", "bfloat16", "--quantize", "int8"], ("q8_0",)),
    ("int4", ["--dtype", "bfloat16", "--quantize", "int4"], ("q4_0",)),
)
GOAL = {"fp32": 0.9, "bf16": 0.8, "int8": 0.8, "int4": 0.8}  # issue 34's: gptkit / llama.cpp tokens/s at batch 1
QUANTIZED_BY_LLAMA = ("q4_0",)  # GGUF types gptkit does not write: llama-quantize makes them from the f32 file


def gptkit_command() -> list[str]:
    return [sys.executable, "-m", "gptkit"]


def export_gguf(ckpt: Path, gguf_type: str, folder: Path, llama_bin: Path) -> Path:
    out = folder / f"gpt2-{gguf_type}.gguf"
    if out.exists():
        return out
    if gguf_type in QUANTIZED_BY_LLAMA:
        f32 = export_gguf(ckpt, "f32", folder, llama_bin)
        subprocess.run([str(llama_bin / "llama-quantize"), str(f32), str(out), gguf_type], check=True,
                       capture_output=True)  # fmt: skip
        return out
    command = [*gptkit_command(), "export", str(ckpt), "--format", "gguf", "--type", gguf_type, "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True)
    return out


def llama_tokens_per_s(llama_bench: Path, gguf: Path, tokens: int, threads: int, repeats: int) -> float:
    """llama-bench's mean tokens/s generating tokens after an empty prompt."""
    command = [str(llama_bench), "-m", str(gguf), "-p", "0", "-n", str(tokens), "-t", str(threads),
               "-r", str(repeats), "-o", "json"]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def decode_rate(model, tokens: int) -> float:
    """Tokens/s of greedy batch-1 decoding after a PROMPT_TOKENS prompt, leaving out the first token (the prompt)."""
    idx = torch.randint(0, 50257, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    for step, _ in enumerate(generate(model, idx, tokens + 1, Sampling(temperature=0))):
        if step == 0:
            start = time.perf_counter()
    return tokens / (time.perf_counter() - start)


def compiled_run(ckpt: Path, flags: list[str], tokens: int, cache_dir: Path) -> tuple[float, float]:
    """(seconds compiling, tokens/s after) of `gptkit sample --compile` in a fresh process on an inductor cache."""
    env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(cache_dir)}
    command = [*gptkit_command(), "sample", "Hello", "--ckpt", str(ckpt), "--compile", "--temperature", "0",
               "--max-new-tokens", str(tokens), *flags]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    found = re.search(r"([\d.]+) s of it compiling the step, ([\d.]+) tokens/s after", out.stdout + out.stderr)
    if found is None:
        raise RuntimeError(f"no compile figures in `gptkit sample`'s output:\n{out.stdout}{out.stderr}")
    return float(found[1]), float(found[2])


def measure(args, folder: Path) -> tuple[list[dict], float]:
    ckpt = save_checkpoint(random_gpt2(), folder / "gpt2")
    llama_bench = args.llama_bin / "llama-bench" if args.llama_bin else None
    if llama_bench is None or not llama_bench.exists():
        print(f"llama.cpp: no llama-bench {'in ' + str(args.llama_bin) if args.llama_bin else '(--llama-bin)'}; "
              "measuring gptkit alone")  # fmt: skip
        llama_bench = None
    bandwidth = copy_bandwidth_gbs()
    rows = []
    for name, flags, gguf_types in (p for p in PRECISIONS if p[0] in args.precisions):
        dtype = torch.float32 if name == "fp32" else torch.bfloat16
        quantize = name if name.startswith("int") else None
        model = load_for_decoding(ckpt, torch.device("cpu"), dtype, quantize, False)
        eager = [decode_rate(model, args.tokens) for _ in range(args.repeats)]
        llama = {}
        for gguf_type in gguf_types if llama_bench else ():
            gguf = export_gguf(ckpt, gguf_type, folder, args.llama_bin)
            llama[gguf_type] = llama_tokens_per_s(llama_bench, gguf, args.tokens, torch.get_num_threads(), args.repeats)
        cache = Path(tempfile.mkdtemp(dir=folder, prefix="inductor-"))
        first = compiled_run(ckpt, flags, args.tokens, cache) if args.compiled else None
        cached = compiled_run(ckpt, flags, args.tokens, cache) if args.compiled else None
        step_bytes = weight_bytes_per_token(model)
        rows.append({"precision": name, "eager": statistics.median(eager), "llama": llama, "first": first,
                     "cached": cached, "bytes": step_bytes, "bound": bandwidth * 1e9 / step_bytes})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows, bandwidth


def markdown(rows: list[dict], args, bandwidth_note: str) -> str:
    lines = [
        f"CPU: {cpu_name()}, {os.cpu_count()} cores, level {cpu_level()}, {torch.get_num_threads()} threads; torch "
        f"{torch.__version__}; `uv run python -m bench.llama_bench --tokens {args.tokens}`; {bandwidth_note}",
        "",
        "| precision | weights read a token | bound tok/s | llama.cpp tok/s | gptkit eager | gptkit compiled "
        "(compile s: first / cached) | best / llama.cpp (goal) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        llama = ", ".join(f"{t} {v:.1f}" for t, v in r["llama"].items()) or "–"
        compiled = "–"
        best = r["eager"]
        if r["cached"]:
            compiled = f"{r['cached'][1]:.1f} ({r['first'][0]:.1f} / {r['cached'][0]:.1f})"
            best = max(best, r["cached"][1])
        ratio = f"{best / max(r['llama'].values()):.2f} ({GOAL[r['precision']]})" if r["llama"] else "–"
        lines.append(f"| {r['precision']} | {r['bytes'] / 1e6:.0f} MB | {r['bound']:.0f} | {llama} | "
                     f"{r['eager']:.1f} | {compiled} | {ratio} |")  # fmt: skip
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-bin", type=Path, help="llama.cpp's build/bin folder (with llama-bench)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated a run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, gptkit's median, llama.cpp's mean")
    parser.add_argument("--no-compiled", dest="compiled", action="store_false", help="skip the compiled step")
    parser.add_argument("--precisions", nargs="+", default=[p[0] for p in PRECISIONS], help="gptkit's, to measure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows, bandwidth = measure(args, Path(folder))
    print(markdown(rows, args, f"memory bandwidth {bandwidth:.1f} GB/s (copy)"))


if __name__ == "__main__":
    main()
