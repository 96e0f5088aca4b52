"""The training recipe's sweep: validation loss of `gptkit train` runs that differ only in optimizer and schedule
options, one run at a time in one thread (the losses do not depend on the machine's load; the times printed do).

Settings (every run of a setting starts from the same initial weights: same shape, same --seed):
  quality  bench/quality_bench.py's: tiny Shakespeare, 4 layers, 4 heads, 256 wide, block 128, batch 16, 300 steps,
           validation every 50 steps.
  proxy    the same at 128 wide, block 64, batch 8 (about a fifth of the compute a step): the coarse grid.
  mini     the mini preset (6 layers, 384 wide), block 64, batch 8, --steps (default 1000), validation every 100.
  finetune a base trained first with the quality setting and the default recipe on tiny Shakespeare, then fine-tuned
           (`--model BASE`) on another domain, this repository's README.md and docs/*.md (English prose about
           gptkit, about 45,000 tokens): block 128, batch 16, 100 steps, validation every 10.

Grids (label -> options beyond the setting's): `compare` (old default, new default, quality_bench.py's AdamW), `coarse`
(one option at a time around the new default), `mini` (old vs new default over --seeds), `finetune` (fine-tuning's
default against other rates and the from-scratch recipe).
Run: `OMP_NUM_THREADS=1 uv run python -m bench.recipe_sweep --setting proxy --grid coarse [--only LABEL ...]`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "input.txt"
COMMON = ["--dropout", "0", "--save-every", "0"]  # --dtype auto: bf16 on this CPU, as gptkit trains on it
SETTINGS = {
    "quality": ["--model", "micro", "--n-layer", "4", "--n-head", "4", "--n-embd", "256", "--block-size", "128",
                "--batch-size", "16", "--steps", "300", "--eval-every", "50"],
    "proxy": ["--model", "micro", "--n-layer", "4", "--n-head", "4", "--n-embd", "128", "--block-size", "64",
              "--batch-size", "8", "--steps", "300", "--eval-every", "50"],
    "mini": ["--model", "mini", "--block-size", "64", "--batch-size", "8", "--eval-every", "100"],
    "finetune": ["--block-size", "128", "--batch-size", "16", "--steps", "100", "--eval-every", "10"],
}  # fmt: skip
# gptkit's defaults before the recipe (AdamW, 6e-4 cosine to a tenth, warmup steps / 20), spelled out
OLD_DEFAULT = ["--optimizer", "adamw", "--lr", "6e-4", "--schedule", "cosine", "--min-lr-fraction", "0.1"]
MUON = ["--optimizer", "muon"]
# fmt: off
GRIDS = {
    "compare": {
        "old default": OLD_DEFAULT,
        "new default": [],
        "adamw (quality bench's)": ["--optimizer", "adamw", "--lr", "1e-3", "--schedule", "cosine",
                                    "--min-lr-fraction", "0.1", "--warmup-steps", "30"],
    },
    "coarse": {
        "old default": OLD_DEFAULT,
        "adamw 1e-3 cosine": ["--optimizer", "adamw", "--lr", "1e-3", "--schedule", "cosine", "--min-lr-fraction", "0.1"],
        "adamw 2e-3 wsd": ["--optimizer", "adamw", "--lr", "2e-3"],
        "muon before (cosine, adamw 1e-3, no mom. warmup)": [*MUON, "--schedule", "cosine", "--min-lr-fraction", "0.1",
            "--embedding-lr", "1e-3", "--scalar-lr", "1e-3", "--muon-momentum-warmup", "0"],
        "new default": [],
        "lr 0.01": ["--lr", "0.01"],
        "lr 0.04": ["--lr", "0.04"],
        "embedding 0.003": ["--embedding-lr", "0.003"],
        "embedding 0.02": ["--embedding-lr", "0.02"],
        "scalar 0.002": ["--scalar-lr", "0.002"],
        "cosine": ["--schedule", "cosine"],
        "wsd, cooldown 0.7 (the speedrun's)": ["--schedule", "wsd"],
        "wsd, cooldown 0.4": ["--schedule", "wsd", "--cooldown-fraction", "0.4"],
        "momentum warmup 0": ["--muon-momentum-warmup", "0"],
        "weight decay 0": ["--weight-decay", "0"],
        "weight decay 0.05": ["--weight-decay", "0.05"],
        "warmup 15": ["--warmup-steps", "15"],
    },
    "finetune": {
        "fine-tuning default (adamw 3e-5 cosine to a tenth)": [],
        "adamw 1e-4": ["--lr", "1e-4"],
        "adamw 3e-4": ["--lr", "3e-4"],
        "adamw 1e-3": ["--lr", "1e-3"],
        "muon fine-tuning default (1e-3, groups 3e-5)": MUON,
        "muon 0.02, groups 3e-4, wsd": [*MUON, "--lr", "0.02", "--embedding-lr", "3e-4", "--scalar-lr", "3e-4",
                                        "--schedule", "wsd"],
    },
}
# fmt: on


def curve(folder: Path) -> list[dict]:
    """(step, val_loss) at each evaluation of a finished run."""
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{"step": r["step"], "val_loss": r["val_loss"]} for r in records if "val_loss" in r]


def train(options: list[str], out: Path, data: Path = DATA) -> tuple[list[dict], float]:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "gptkit", "train", str(data), *options, "--out", str(out)]
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return curve(out), time.time() - started


def steps_to_reach(curves: dict, steps: int):
    """Where each run first reaches each other run's final validation loss (at the evaluations' resolution)."""
    for (reference, seed), points in curves.items():
        target = points[-1]["val_loss"]
        for (label, other_seed), other in curves.items():
            if (label, other_seed) != (reference, seed) and other_seed == seed:
                step = next((p["step"] for p in other if p["val_loss"] <= target), None)
                reached = f"step {step} ({step / steps:.2f}x)" if step else "not reached"
                print(f"- {label} reaches {reference}'s final {target:.3f} (seed {seed}): {reached}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", choices=SETTINGS, default="quality")
    parser.add_argument("--grid", choices=[*GRIDS, "mini"], help="default: finetune for that setting, else compare")
    parser.add_argument("--only", nargs="*", help="these labels of the grid only")
    parser.add_argument("--extra", nargs="*", default=[], help="LABEL=OPTIONS runs to add, e.g. 'lr 0.03=--lr 0.03'")
    parser.add_argument("--steps", type=int, help="override the setting's steps")
    parser.add_argument("--eval-every", type=int, help="override the setting's validation spacing")
    parser.add_argument("--seeds", type=int, nargs="*", default=[1337], help="seeds of every run")
    parser.add_argument("--json", type=Path, help="append each run's result to this file (one JSON line a run)")
    args = parser.parse_args()
    args.grid = args.grid or ("finetune" if args.setting == "finetune" else "compare")
    grid = dict(GRIDS["compare" if args.grid == "mini" else args.grid])
    if args.grid == "mini":
        grid.pop("adamw (quality bench's)")
    if args.only:
        grid = {label: options for label, options in grid.items() if label in args.only}
    grid |= {label: options.split() for label, _, options in (e.partition("=") for e in args.extra)}
    setting = [*SETTINGS[args.setting], *COMMON, *(["--steps", str(args.steps)] if args.steps else []),
               *(["--eval-every", str(args.eval_every)] if args.eval_every else [])]
    if args.setting == "mini" and not args.steps:
        setting += ["--steps", "1000"]
    print(f"recipe sweep: setting {args.setting} ({' '.join(setting)}), one thread, one run at a time")
    print()
    header_done, curves = False, {}
    with tempfile.TemporaryDirectory() as tmp:
        data = DATA
        if args.setting == "finetune":
            data = Path(tmp) / "docs.txt"
            data.write_text("\n\n".join(p.read_text() for p in [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md"))]))
        for seed in args.seeds:
            if args.setting == "finetune":
                base = Path(tmp) / f"base{seed}"
                points, _ = train([*SETTINGS["quality"], *COMMON, "--seed", str(seed)], base)
                print(f"base (seed {seed}): quality setting, default recipe, val {points[-1]['val_loss']:.3f} on tiny "
                      f"Shakespeare at step {points[-1]['step']}", flush=True)  # fmt: skip
            base_options = ["--model", str(base)] if args.setting == "finetune" else []
            for number, (label, options) in enumerate(grid.items()):
                out = Path(tmp) / f"run{seed}-{number}"
                points, seconds = train([*setting, *base_options, *options, "--seed", str(seed)], out, data)
                if not header_done:
                    print("| run | seed | options | " + " | ".join(f"val @ {p['step']}" for p in points) + " | best |")
                    print("|---" * (len(points) + 4) + "|")
                    header_done = True
                curves[label, seed] = points
                vals = " | ".join(f"{p['val_loss']:.3f}" for p in points)
                best = min(p["val_loss"] for p in points)
                print(f"| {label} | {seed} | `{' '.join(options)}` | {vals} | {best:.3f} |", flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps({"setting": args.setting, "label": label, "options": options, "seed": seed,
                                            "curve": points, "seconds": round(seconds, 1)}) + "\n")  # fmt: skip
    print()
    steps_to_reach(curves, curves and max(p["step"] for points in curves.values() for p in points))


if __name__ == "__main__":
    main()
