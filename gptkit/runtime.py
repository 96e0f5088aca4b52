"""Where and in what precision to run: device auto-detection (CUDA > MPS > CPU), the --dtype choice, and the
machine facts and settings behind them (bf16 instructions, free memory, the allocator)."""

import contextlib
import ctypes
import sys
from functools import cache
from pathlib import Path

import torch

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


def cpu_level() -> str:
    """The instruction set torch's own CPU kernels run at: DEFAULT, AVX2, AVX512 (x86), or an ARM level. A machine
    runs at most what it has; ATEN_CPU_CAPABILITY=default|avx2|avx512 makes torch run lower."""
    return torch.backends.cpu.get_cpu_capability()


# x86's levels from the highest down, as ATEN_CPU_CAPABILITY names them.
X86_LEVELS = ("avx512", "avx2", "default")


def lower_cpu_levels() -> list[str]:
    """The ATEN_CPU_CAPABILITY values below the level this process runs at (what tests and benches also run under)."""
    level = cpu_level().lower()
    if level in X86_LEVELS:
        return list(X86_LEVELS[X86_LEVELS.index(level) + 1 :])
    return [] if level == "default" else ["default"]


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_prefers_bf16() -> bool:
    """--dtype auto's choice on the CPU, and whether Muon's Newton-Schulz iteration runs in bf16: where the CPU
    multiplies bf16 matrices in hardware (AVX512-BF16 or AMX) and torch uses it.

    Matrix products run in oneDNN, which picks its instructions itself (ONEDNN_MAX_CPU_ISA caps it;
    ATEN_CPU_CAPABILITY does not), so torch.ops.mkldnn._is_mkldnn_bf16_supported() says whether bf16 products take
    oneDNN's path at all, and the flags whether that path is native rather than emulated. The products dominate a
    step, so bf16 is the faster at every level torch's own kernels run at, DEFAULT included
    (bench/choices_bench.py measures it on each)."""
    native = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return native and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


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
    in and zeroes those pages again: on a 2-core CPU that cost about 20% of a GPT-2 124M step. The price: freed
    blocks wait in the heap for reuse (torch's aligned requests do not always fit them), which raised the peak of a
    GPT-2 124M run at 4 x 256 by 1-3% and of the mini preset by 9%, and nothing goes back to the OS before
    the process ends. Resident memory stays flat from step to step.
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
