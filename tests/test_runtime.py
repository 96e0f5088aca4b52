import os
import platform
import subprocess
import sys

import pytest

# Resident bytes a 64 MB block, allocated, touched and freed, leaves behind: before keep_freed_memory (glibc unmaps a
# freed block over its 32 MB mmap threshold at once) and after (the block stays in the heap for reuse). Resident
# memory, not page faults: whether the kernel backs the block with huge pages changes how many faults fill it, but
# not how many bytes stay resident.
RESIDENT_AFTER_FREE = """
import os, torch
from gptkit.machine.runtime import keep_freed_memory

BLOCK = 64 * 2**20

def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def left_resident_by_a_freed_block() -> int:
    before = resident()
    block = torch.ones(BLOCK, dtype=torch.uint8)
    del block
    return resident() - before

torch.ones(1)  # torch's first tensor sets up its own state: not part of the block's memory
default = left_resident_by_a_freed_block()
keep_freed_memory()
print(BLOCK, default, left_resident_by_a_freed_block())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_keep_freed_memory_keeps_a_freed_large_block_instead_of_handing_it_back():
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", RESIDENT_AFTER_FREE], capture_output=True, text=True, check=True, env=env
    )
    block, default, kept = map(int, result.stdout.split())
    assert default < block // 4  # unmapped: back to the OS
    assert kept > block * 3 // 4  # kept, neither unmapped (mmap threshold) nor trimmed off the heap (trim threshold)


def test_the_test_session_compiles_into_a_cache_of_its_own(tmp_path_factory):
    """conftest's Inductor cache, seen by the commands tests run as subprocesses (which inherit the environment)."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['TORCHINDUCTOR_CACHE_DIR'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    cache = child.stdout.strip()
    assert os.path.commonpath([cache, tmp_path_factory.getbasetemp()]) == str(tmp_path_factory.getbasetemp())
