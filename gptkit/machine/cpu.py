"""What the CPU can do and what torch runs on it: the level of torch's own kernels, the lower levels it can be told
to run at, the CPU's flags, and whether bf16 is the faster dtype there. Imports only torch (the int8 layer, the
optimizer and the device rules all read it)."""

from functools import cache
from pathlib import Path

import torch


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
