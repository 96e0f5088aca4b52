"""Whole-process wall time of the commands that must feel instant: `gptkit --help` and `gptkit inspect`."""

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import summary


def wall_times(argv: list[str], repeats: int) -> list[float]:
    subprocess.run(argv, check=True, capture_output=True)  # warm the file cache
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return times


def bench_cli(quick: bool) -> list[dict]:
    import torch

    from gptkit.checkpoint import save_checkpoint
    from gptkit.model import GPT, PRESETS

    repeats = 3 if quick else 10
    gptkit = [str(Path(sys.executable).with_name("gptkit"))]
    folder = Path(tempfile.mkdtemp(prefix="gptkit-bench-"))
    try:
        torch.manual_seed(0)
        checkpoint = save_checkpoint(GPT(PRESETS["gpt2"]), folder / "gpt2-124m")
        return [
            {"command": "gptkit --help", **summary(wall_times(gptkit + ["--help"], repeats))},
            {"command": "gptkit inspect (124M)", **summary(wall_times(gptkit + ["inspect", str(checkpoint)], repeats))},
        ]
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    for row in bench_cli(quick="--quick" in sys.argv):
        print(f"{row['command']}: median {row['median']:.3f} s (min {row['min']:.3f}, max {row['max']:.3f})")
