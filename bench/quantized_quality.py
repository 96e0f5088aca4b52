"""What weight-only quantization costs in quality: a model trained here on data/input.txt (or --ckpt) evaluated on
the held-out tail of that text with `gptkit eval`, in fp32, bf16 and with --quantize int8 and int4, loss and bits per
byte side by side, each with its difference from fp32.

    uv run python -m bench.quantized_quality [--steps 300] [--ckpt CKPT]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VAL_FRACTION = 0.1  # gptkit train's default: the tail it holds out
VARIANTS = {"fp32": ["--dtype", "float32"], "bf16": ["--dtype", "bfloat16"],
            "int8": ["--dtype", "float32", "--quantize", "int8"],
            "int4": ["--dtype", "float32", "--quantize", "int4"]}  # fmt: skip


def gptkit(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "gptkit", *args], check=True, capture_output=True, text=True, cwd=ROOT)
    return done.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, help="a checkpoint to evaluate (default: train one here)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of the model trained here")
    parser.add_argument("--model", default="mini", help="the preset trained here")
    args = parser.parse_args()
    text = (ROOT / "data" / "input.txt").read_text()
    with tempfile.TemporaryDirectory() as folder:
        tail = Path(folder) / "held-out.txt"
        tail.write_text(text[int(len(text) * (1 - VAL_FRACTION)) :])
        ckpt = args.ckpt
        if ckpt is None:
            ckpt = Path(folder) / "run"
            gptkit("train", str(ROOT / "data" / "input.txt"), "--model", args.model, "--steps", str(args.steps),
                   "--out", str(ckpt), "--device", "cpu")  # fmt: skip
        results = {}
        for name, flags in VARIANTS.items():
            record = json.loads(gptkit("eval", str(ckpt), str(tail), "--json", "--device", "cpu", *flags))
            results[name] = record["lm"]
            print(name, json.dumps(record["lm"]), flush=True)
    source = str(args.ckpt) if args.ckpt else f"`{args.model}` trained {args.steps} steps on data/input.txt"
    print(f"\nCPU: {cpu_name()}; {source}; held-out tail ({VAL_FRACTION:.0%}) of data/input.txt\n")
    print("| weights | loss | vs fp32 | bits per byte |\n|---|---|---|---|")
    for name, lm in results.items():
        print(f"| {name} | {lm['loss']:.4f} | {lm['loss'] - results['fp32']['loss']:+.4f} | {lm['bits_per_byte']:.4f} |")


if __name__ == "__main__":
    main()
