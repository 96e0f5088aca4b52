"""Training quality: validation loss against steps and wall time, AdamW against Muon, in one fixed small setting.

The setting (nanoGPT reached val 5.20 at step 250 and 5.21 at 300 on it): tiny Shakespeare (data/input.txt),
4 layers, 4 heads, 256 wide, block 128, batch 16, no dropout, lr 1e-3 cosine to 1e-4 over 300 steps, warmup 30,
validation every 50 steps. Muon runs with its own --lr default on the blocks' matrices and the same AdamW rate
(1e-3 cosine to 1e-4) on the rest; "default" is `gptkit train`'s recipe from scratch (docs/training.md) with the
bench's warmup. Each run is a `gptkit train` child process; the runs go side by side, at the same
time, so that machine noise hits all of them (each gets cores / runs torch threads).

Targets: AdamW val <= 5.15 at step 300; Muon reaches AdamW's step-300 val in <= 0.75x the steps, with a lower best.
Run: `uv run python -m bench.quality_bench [--muon-lr 0.01 0.05 ...] [--steps 300] [--json FILE]`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "input.txt"
SETTING = [
    "--model", "micro", "--n-layer", "4", "--n-head", "4", "--n-embd", "256", "--block-size", "128",
    "--batch-size", "16", "--dropout", "0", "--eval-every", "50", "--save-every", "0",
]  # fmt: skip
# --quick: a smoke check on a slow or shared machine, not the target setting: 64 wide, batch 8 x 64, 150 steps
QUICK = ["--n-embd", "64", "--block-size", "64", "--batch-size", "8", "--eval-every", "25"]
ADAMW_LR, ADAMW_MIN_LR = 1e-3, 1e-4


def runs(muon_lrs: list[float]) -> dict[str, list[str]]:
    """label -> the options of each run beyond SETTING."""
    # Muon as before the recipe: AdamW's 1e-3 beside it, cosine to a tenth, no momentum warmup
    muon = ["--optimizer", "muon", "--embedding-lr", str(ADAMW_LR), "--scalar-lr", str(ADAMW_LR)]
    muon += ["--muon-momentum-warmup", "0", "--schedule", "cosine", "--min-lr-fraction", "0.1"]
    out = {
        "adamw": ["--optimizer", "adamw", "--lr", str(ADAMW_LR), "--schedule", "cosine", "--min-lr", str(ADAMW_MIN_LR)],
        "muon": muon,
        "default": [],
    }
    for lr in muon_lrs:
        out[f"muon lr {lr:g}"] = [*muon, "--lr", str(lr)]
    return out


def curve(folder: Path) -> list[dict]:
    """(step, val_loss, train seconds so far) at each evaluation of a finished run."""
    from gptkit.training.runlog import METRICS_FILE

    points, seconds = [], 0.0
    for line in (folder / METRICS_FILE).read_text().splitlines():
        record = json.loads(line)
        seconds += record["step_time_s"]
        if "val_loss" in record:
            points.append({"step": record["step"], "val_loss": record["val_loss"], "train_s": seconds})
    return points


def first_step_reaching(points: list[dict], target: float) -> int | None:
    return next((p["step"] for p in points if p["val_loss"] <= target), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--muon-lr", type=float, nargs="*", default=[], help="extra Muon runs at these --lr")
    parser.add_argument("--steps", type=int, default=None, help="default: 300 (150 with --quick)")
    parser.add_argument("--quick", action="store_true", help="the smoke-check setting (see QUICK), not the targets'")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--eval-tokens", type=int, default=None, help="validation tokens (default: gptkit's)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    args.steps = args.steps or (150 if args.quick else 300)

    plan = runs(args.muon_lr)
    threads = max(1, (os.cpu_count() or 1) // len(plan))
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    common = [
        *SETTING,
        *(QUICK if args.quick else []),
        "--steps",
        str(args.steps),
        "--warmup-steps",
        str(args.steps // 10),
        "--dtype",
        args.dtype,
    ]
    if args.eval_tokens:
        common += ["--eval-tokens", str(args.eval_tokens)]
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        children = {}
        for label, options in plan.items():
            out = Path(tmp) / label.replace(" ", "_")
            command = [sys.executable, "-m", "gptkit", "train", str(DATA), *common, *options, "--out", str(out)]
            log = open(Path(tmp) / f"{out.name}.log", "w")
            children[label] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT), out)
        results = {}
        for label, (child, out) in children.items():
            if child.wait() != 0:
                sys.exit(f"{label} failed:\n{(Path(tmp) / f'{out.name}.log').read_text()[-3000:]}")
            results[label] = curve(out)

    target = results["adamw"][-1]["val_loss"]
    print(f"quality bench{' --quick' if args.quick else ''}: {args.steps} steps, {threads} threads per run, {len(plan)} runs side by side, "
          f"torch {torch.__version__}, dtype {args.dtype}; whole run {(time.time() - started) / 60:.1f} min")  # fmt: skip
    print()
    print("| run | " + " | ".join(f"val @ {p['step']}" for p in results["adamw"]) + " | best | steps to AdamW's final "
          "| train time |")  # fmt: skip
    print("|---" * (len(results["adamw"]) + 4) + "|")
    summary = {}
    for label, points in results.items():
        best = min(p["val_loss"] for p in points)
        reach = first_step_reaching(points, target)
        ratio = f"{reach} ({reach / args.steps:.2f}x)" if reach else "not reached"
        vals = " | ".join(f"{p['val_loss']:.3f}" for p in points)
        print(f"| {label} | {vals} | {best:.3f} | {ratio} | {points[-1]['train_s']:.0f} s |")
        summary[label] = {"curve": points, "best_val": best, "steps_to_adamw_final": reach}
    print()
    print(f"AdamW at step {args.steps}: {target:.3f}" + ("" if args.quick else " (target <= 5.15)"))
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "runs": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
