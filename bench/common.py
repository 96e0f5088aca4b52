"""Machine figures the benchmarks compare against: a measured matmul peak and copy bandwidth, and timing helpers."""

import platform
import statistics
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
