import subprocess
import sys

import pytest

FAULTS_OF_A_REUSED_BLOCK = """
import resource, torch
from gptkit.runtime import keep_freed_memory

# Page faults of 5 blocks of 64 MB, each allocated, touched and freed, after 16 such blocks as warm-up (glibc
# settles on free chunks that fit torch's 64-byte-aligned requests within about 8).
def faults_of_repeated_blocks():
    for _ in range(16):
        torch.ones(64 * 2**20, dtype=torch.uint8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.ones(64 * 2**20, dtype=torch.uint8)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults_of_repeated_blocks()
keep_freed_memory()
print(default, faults_of_repeated_blocks())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc setting")
def test_keep_freed_memory_reuses_large_blocks_instead_of_faulting_them_in_again():
    result = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_A_REUSED_BLOCK], capture_output=True, text=True, check=True
    )
    default, kept = map(int, result.stdout.split())
    assert default > 5 * 16_000  # each block is 16,384 pages of 4 KB, mapped and zeroed again
    assert kept < 1_000
