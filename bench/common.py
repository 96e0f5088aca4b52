"""Machine figures the benchmarks compare against: a measured matmul peak and copy bandwidth, and timing helpers."""

import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn, repeats: int) -> list[float]:
    """Wall times in seconds of repeats calls of fn (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def random_gpt2():
    """GPT-2 124M's shape, random weights drawn wider than at initialization (matrices N(0, 2 / sqrt(fan_in)), the
    token embedding N(0, 1)), seeded: its logits are peaked and its greedy text depends on the prompt (a fresh model's
    near-uniform logits repeat one token)."""
    from gptkit.model.config import PRESETS
    from gptkit.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(PRESETS["gpt2"]).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0, 1.0 if name == "transformer.wte.weight" else 2 / param.size(-1) ** 0.5)
    return model


def matmul_peak_gflops(dtype=torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n matmul: the peak that MFU is measured against."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = min(timed(lambda: a @ b, repeats))
    return 2 * n**3 / best / 1e9


def copy_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """Best GB/s of copying a buffer much larger than the caches (bytes read + bytes written)."""
    src = torch.empty(megabytes * 2**20, dtype=torch.uint8)
    src.fill_(1)
    dst = torch.empty_like(src)
    best = min(timed(lambda: dst.copy_(src), repeats))
    return 2 * src.numel() / best / 1e9


# One checkpoint load in a fresh process (torch imported before the clock starts), as JSON: its time, its memory (the
# peak resident size, Linux's VmHWM reset just before the load, over the resident size before it, through the load and
# a read of every tensor: a decoding step reads them all) and how many tensors are 64-byte aligned. The variant:
# "gptkit" (load_checkpoint), "gptkit + quantize at load" (then quantize_int8), or "memory map" (load_checkpoint
# through safetensors' load_file, whose tensors are views into a memory map of the file, as gptkit loaded before).
LOAD_CHILD = """
import json, sys, time
from pathlib import Path
import torch
from gptkit.checkpoint import folder as checkpoint
from gptkit.model.int8 import quantize_int8

def status_mb(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024

variant, path = sys.argv[1:]
if variant == "memory map":
    from safetensors.torch import load_file
    checkpoint.load_tensors = lambda file, device="cpu": load_file(str(file), device=str(device))
Path("/proc/self/clear_refs").write_text("5")
before = status_mb("VmRSS")
t0 = time.perf_counter()
model = checkpoint.load_checkpoint(path)
if variant == "gptkit + quantize at load":
    quantize_int8(model)
elapsed = time.perf_counter() - t0
tensors = list(model.state_dict().values())
for tensor in tensors:
    tensor.max()  # no copy (a sum would promote int8 to int64)
aligned = sum(t.data_ptr() % 64 == 0 for t in tensors)
print(json.dumps({"load_s": elapsed, "peak_mb": status_mb("VmHWM") - before, "aligned": f"{aligned}/{len(tensors)}"}))
"""


def measure_load(variant: str, path: Path) -> dict:
    """LOAD_CHILD's figures for one load of the checkpoint at path (Linux only)."""
    done = subprocess.run([sys.executable, "-c", LOAD_CHILD, variant, str(path)], check=True, capture_output=True,
                          text=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])
