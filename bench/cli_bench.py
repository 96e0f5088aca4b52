"""Whole-process wall time of the commands that must feel instant: `gptkit --help`, `gptkit inspect`, `gptkit plot`,
a bad option of each command (refused before torch is imported), `gptkit download` without a hub to reach (refused
after one failed connection, not after huggingface_hub's retries), and train / eval on a folder that another process
holds (refused before torch is imported, after the lock's half-second wait). The commands run in turns, so machine
noise hits them alike, and each is reported against `gptkit --help`, the target of the option checks.

    uv run python -m bench.cli_bench [--quick]
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import summary
from bench.runlog_bench import fake_records


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(folder: Path, checkpoint: Path) -> dict[str, tuple[list[str], dict]]:
    """name -> (arguments of gptkit, environment changes)."""
    from gptkit.training.runlog import METRICS_FILE

    text = folder / "text.txt"
    text.write_text("To be, or not to be, that is the question.\n")
    hub = {"HF_HOME": str(folder / "hf-home"), "HF_HUB_OFFLINE": ""}
    runs = [folder / "run-a", folder / "run-b"]
    for run in runs:  # two runs of 5,000 steps each
        run.mkdir()
        (run / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in fake_records(5000)))
    plot = ["plot", *map(str, runs)]
    return {
        "gptkit --help": (["--help"], {}),
        "gptkit inspect (124M)": (["inspect", str(checkpoint)], {}),
        "gptkit plot, terminal (2 runs x 5,000 steps)": (plot, {}),
        "gptkit plot --out PNG (2 runs x 5,000 steps)": ([*plot, "--out", str(folder / "curves.png")], {}),
        "gptkit sample Hi --top-p 1.5": (["sample", "Hi", "--top-p", "1.5"], {}),
        "gptkit eval CKPT --stride 0": (["eval", str(checkpoint), str(text), "--stride", "0"], {}),
        "gptkit train TEXT --steps 0": (["train", str(text), "--steps", "0"], {}),
        "gptkit train TEXT --out RUN, RUN in use": (["train", str(text), "--out", str(checkpoint)], {}),
        "gptkit eval CKPT TEXT, CKPT in use": (["eval", str(checkpoint), str(text)], {}),
        "gptkit download gpt2-medium, unresolvable host": (
            ["download", "gpt2-medium", "-o", str(folder / "dl")],
            {**hub, "HF_ENDPOINT": "http://hub.invalid"},
        ),
        "gptkit download gpt2-medium, closed port": (
            ["download", "gpt2-medium", "-o", str(folder / "dl")],
            {**hub, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"},
        ),
    }


def bench_cli(quick: bool) -> list[dict]:
    import torch

    from gptkit.checkpoint.folder import save_checkpoint
    from gptkit.model.config import PRESETS
    from gptkit.model.gpt import GPT
    from gptkit.training.runfolder import lock_run_folder

    repeats = 3 if quick else 10
    gptkit = str(Path(sys.executable).with_name("gptkit"))
    folder = Path(tempfile.mkdtemp(prefix="gptkit-bench-"))
    try:
        torch.manual_seed(0)
        checkpoint = save_checkpoint(GPT(PRESETS["gpt2"]), folder / "gpt2-124m")
        runs = {
            name: ([gptkit, *args], {**os.environ, **env}) for name, (args, env) in commands(folder, checkpoint).items()
        }
        times = {name: [] for name in runs}
        with lock_run_folder(checkpoint):  # as a training run there would hold it ("in use"; inspect needs no lock)
            for turn in range(repeats + 1):  # the first turn warms the file cache and is not counted
                for name, (argv, env) in runs.items():
                    t0 = time.perf_counter()
                    subprocess.run(argv, env=env, capture_output=True)
                    if turn:
                        times[name].append(time.perf_counter() - t0)
        help_median = summary(times["gptkit --help"])["median"]
        rows = []
        for name, values in times.items():
            row = {"command": name, **summary(values)}
            rows.append({**row, "vs --help": row["median"] / help_median})
        return rows
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    for row in bench_cli(quick="--quick" in sys.argv):
        print(
            f"{row['command']}: median {row['median']:.3f} s (min {row['min']:.3f}, max {row['max']:.3f}), "
            f"{row['vs --help']:.2f}x gptkit --help"
        )
