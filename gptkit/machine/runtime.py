"""Where and in what precision to run: device auto-detection (CUDA > MPS > CPU), the --dtype choice (the CPU's
side of it in cpu.py), free memory, and the allocator setting."""

import contextlib
import ctypes
import sys
from pathlib import Path

import torch

from gptkit.machine.cpu import cpu_prefers_bf16
from gptkit.errors import GptkitError
from gptkit.options import DTYPE_NAMES, check_device, check_dtype

DTYPES = {name: getattr(torch, dtype) for name, dtype in DTYPE_NAMES.items()}


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; otherwise the named device, checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    check_device(name)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GptkitError("--device cuda was asked for, but no CUDA GPU is available: use --device auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise GptkitError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GptkitError("--device mps was asked for, but MPS is not available: use --device auto or cpu")
    return device


def available_memory() -> int | None:
    """Bytes of memory the kernel says can be used without swapping (Linux); None where that is not known."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is bf16 where the device runs it well (CUDA with bf16, CPUs as cpu_prefers_bf16 says), else fp32."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and cpu_prefers_bf16():
            return torch.bfloat16
        return torch.float32
    check_dtype(name)
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise GptkitError("float16 is not supported on the CPU: use bfloat16 or float32")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for dtype (weights stay fp32); a no-op context for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def keep_freed_memory():
    """Make glibc keep freed large blocks for reuse instead of handing them back to the OS.

    By default every freed block over 32 MB (logits, embedding gradients) is unmapped, so each training step faults
    in and zeroes those pages again, a sizeable part of a CPU step (bench/train_bench.py measures it as
    "transformers+malloc"). The price: freed blocks wait in the heap for reuse (torch's aligned requests do not
    always fit them), which raises the peak memory a little, and nothing goes back to the OS before the process
    ends. Resident memory stays flat from step to step.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    for option in (m_mmap_threshold, m_trim_threshold):
        libc.mallopt(option, ctypes.c_int(2**30))
