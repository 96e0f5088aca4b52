"""Loading a checkpoint: gptkit's load_checkpoint (each tensor read into memory from torch's allocator, 64-byte
aligned) against the same load through safetensors' load_file (tensors viewed in place in a memory map of the file,
as gptkit loaded them before: aligned only as the file's offsets happen to be, which crashed torch's AVX-512 int8
kernel). GPT-2 124M with random weights (`mini` with --quick), stored in fp32, bf16 and int8; each load in a fresh
process (torch imported before the clock starts), the two loaders alternating. Linux only (memory from /proc).

    uv run python -m bench.load_bench [--quick]
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cpu_name, measure_load, summary  # noqa: E402

LOADERS = {"gptkit (read, aligned)": "gptkit", "memory map (safetensors load_file)": "memory map"}


def checkpoints(folder: Path, preset: str) -> dict[str, Path]:
    import torch

    from gptkit.checkpoint.folder import load_checkpoint, save_checkpoint
    from gptkit.model.config import PRESETS
    from gptkit.model.int8 import quantize_int8
    from gptkit.model.gpt import GPT

    torch.manual_seed(0)
    fp32 = save_checkpoint(GPT(PRESETS[preset]), folder / "fp32")
    bf16 = save_checkpoint(load_checkpoint(fp32, dtype=torch.bfloat16), folder / "bf16")
    int8 = save_checkpoint(quantize_int8(load_checkpoint(fp32)), folder / "int8")
    return {"fp32": fp32, "bf16": bf16, "int8": int8}


def bench_load(quick: bool) -> list[dict]:
    preset, repeats = ("mini", 2) if quick else ("gpt2", 5)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stored, path in checkpoints(Path(tmp), preset).items():
            runs = {loader: [] for loader in LOADERS}
            for _ in range(repeats):
                for loader, variant in LOADERS.items():
                    runs[loader].append(measure_load(variant, path))
            for loader, results in runs.items():
                rows.append({"stored": stored, "loader": loader, "model": preset,
                             "load_s": summary([r["load_s"] for r in results]),
                             "peak_mb": summary([r["peak_mb"] for r in results]),
                             "aligned": results[0]["aligned"]})  # fmt: skip
    return rows


def markdown(rows: list[dict], quick: bool) -> str:
    import torch

    from gptkit.machine.cpu import cpu_level

    lines = [f"{cpu_name()}, level {cpu_level()}, torch {torch.__version__}; "
             f"`uv run python -m bench.load_bench{' --quick' if quick else ''}` (load to float32)", "",
             "| model, stored | loader | load s, median [min, max] | peak MB, median | 64-byte aligned tensors |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        t, m = r["load_s"], r["peak_mb"]
        lines.append(f"| {r['model']}, {r['stored']} | {r['loader']} | {t['median']:.2f} [{t['min']:.2f}, "
                     f"{t['max']:.2f}] | {m['median']:,.0f} | {r['aligned']} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print(markdown(bench_load(quick), quick))
