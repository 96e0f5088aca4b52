"""int8 checkpoints (`gptkit quantize`) against quantizing at load (`--quantize int8`): GPT-2 124M with random weights
(`mini` with --quick) saved as an fp32 checkpoint and quantized once; then the file sizes, and the time and memory of
loading the int8 checkpoint against loading the fp32 one and quantizing it (and against the fp32 load alone), each
load in a fresh process (torch imported before the clock starts), the three alternating so that machine noise hits
all of them. Linux only (the memory is read from /proc).

    uv run python -m bench.quantize_bench [--quick]
"""

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import measure_load, summary  # noqa: E402

KINDS = ("int8 checkpoint", "fp32 + quantize at load", "fp32 (no quantization)")
VARIANTS = {KINDS[0]: "gptkit", KINDS[1]: "gptkit + quantize at load", KINDS[2]: "gptkit"}  # bench.common.LOAD_CHILD's


def checkpoint_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def bench_quantize(quick: bool) -> dict:
    import torch

    from gptkit.checkpoint.folder import save_checkpoint
    from gptkit.model.config import PRESETS
    from gptkit.model.gpt import GPT

    preset, repeats = ("mini", 2) if quick else ("gpt2", 5)
    folder = Path(tempfile.mkdtemp(prefix="gptkit-bench-"))
    try:
        torch.manual_seed(0)
        fp32 = save_checkpoint(GPT(PRESETS[preset]), folder / preset)
        t0 = time.perf_counter()
        subprocess.run([str(Path(sys.executable).with_name("gptkit")), "quantize", str(fp32)], check=True)
        quantize_s = time.perf_counter() - t0
        int8 = folder / f"{preset}-int8"
        paths = {KINDS[0]: int8, KINDS[1]: fp32, KINDS[2]: fp32}
        runs = {kind: [] for kind in KINDS}
        for turn in range(repeats + 1):  # the first turn warms the file cache and is not counted
            for kind in KINDS:
                result = measure_load(VARIANTS[kind], paths[kind])
                if turn:
                    runs[kind].append(result)
        baseline = summary([r["load_s"] for r in runs[KINDS[1]]])["median"]
        rows = []
        for kind, records in runs.items():
            load = summary([r["load_s"] for r in records])
            peak = summary([r["peak_mb"] for r in records])["median"]
            rows.append({"kind": kind, **load, "load_peak_mb": peak, "vs quantize at load": baseline / load["median"]})
        return {
            "model": preset,
            "fp32_weights_bytes": (fp32 / "model.safetensors").stat().st_size,
            "int8_weights_bytes": (int8 / "model.safetensors").stat().st_size,
            "fp32_checkpoint_bytes": checkpoint_bytes(fp32),
            "int8_checkpoint_bytes": checkpoint_bytes(int8),
            "quantize_command_s": quantize_s,
            "loads": rows,
            "repeats": repeats,
        }
    finally:
        shutil.rmtree(folder)


def report(result: dict) -> str:
    fp32, int8 = result["fp32_weights_bytes"], result["int8_weights_bytes"]
    lines = [
        f"{result['model']}, random weights: model.safetensors fp32 {fp32 / 1e6:.1f} MB, int8 {int8 / 1e6:.1f} MB "
        f"({fp32 / int8:.2f}x smaller); whole checkpoint {result['fp32_checkpoint_bytes'] / 1e6:.1f} MB -> "
        f"{result['int8_checkpoint_bytes'] / 1e6:.1f} MB; `gptkit quantize` took {result['quantize_command_s']:.1f} s "
        "(whole process)",
        "",
        f"Loading, fresh process each, {result['repeats']} turns alternating (torch imported before the clock):",
        "",
        "| load | median | min | max | peak memory (load + a read of every weight) | speed vs fp32 + quantize at load |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["loads"]:
        lines.append(
            f"| {r['kind']} | {r['median']:.2f} s | {r['min']:.2f} s | {r['max']:.2f} s | "
            f"{r['load_peak_mb']:,.0f} MB | {r['vs quantize at load']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(bench_quantize(quick="--quick" in sys.argv)))
