"""Data at scale: memory of training on a big text and of preparing a bigger one, tokenizing speed against tiktoken's
own batch encoder, and the training step from memory-mapped shards against an in-memory array.

    uv run python -m bench.data_bench            # 64 MB x 3 speed rounds, 1 GB train text, 4 GB prepare
    uv run python -m bench.data_bench --quick    # 16 MB x 2, 64 MB, 128 MB: a smoke check

The corpora are generated in a temporary folder (Shakespeare, each copy numbered, so that no two are the same) and
deleted afterwards; the token cache goes there too. Peak memory is each child process's own (wait4's ru_maxrss).
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import table  # noqa: E402

SHAKESPEARE = Path(__file__).resolve().parent.parent / "data" / "input.txt"
GIB = 2**30


def generate_text(path: Path, size: int) -> Path:
    """A UTF-8 text of about `size` bytes: numbered copies of tiny Shakespeare."""
    base = SHAKESPEARE.read_text(encoding="utf-8")
    with open(path, "w", encoding="utf-8") as f:
        written, copy = 0, 0
        while written < size:
            part = f"\n\nCopy {copy}.\n\n" + base
            f.write(part)
            written += len(part.encode())
            copy += 1
    return path


# Runs a command and prints its peak resident memory: the command is forked from this small process, so its
# ru_maxrss (which starts at the forking process's own) is its own, not the benchmark's.
PEAK_WRAPPER = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
)


def child_peak(command: list[str], env: dict) -> tuple[float, float]:
    """(seconds, peak resident MB) of a command run to completion in a child process; it must succeed."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *command], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return time.perf_counter() - started, int(result.stdout.split()[-1]) / 1024


def bench_memory(folder: Path, train_bytes: int, prepare_bytes: int) -> list[list]:
    env = os.environ | {"GPTKIT_CACHE_DIR": str(folder / "cache")}
    rows = []
    text = generate_text(folder / "train.txt", train_bytes)
    command = [sys.executable, "-m", "gptkit", "train", str(text), "--model", "nano", "--steps", "2",
               "--out", str(folder / "run"), "--device", "cpu"]  # fmt: skip
    seconds, peak = child_peak(command, env)
    rows.append(["gptkit train TEXT --model nano --steps 2 (tokenizes into the cache, trains)",
                 f"{text.stat().st_size / 1e9:.2f} GB", f"{seconds:.0f} s", f"{peak:,.0f} MB"])  # fmt: skip
    seconds, peak = child_peak(command + ["--overwrite"], env)
    rows.append(["the same again (tokens from the cache)", f"{text.stat().st_size / 1e9:.2f} GB", f"{seconds:.0f} s",
                 f"{peak:,.0f} MB"])  # fmt: skip
    text.unlink()
    big = generate_text(folder / "big.txt", prepare_bytes)
    command = [sys.executable, "-m", "gptkit", "prepare", str(big), "--out", str(folder / "big-tokens")]
    seconds, peak = child_peak(command, env)
    rows.append(["gptkit prepare TEXT", f"{big.stat().st_size / 1e9:.2f} GB", f"{seconds:.0f} s", f"{peak:,.0f} MB"])
    big.unlink()
    return rows


def cpu_seconds() -> float:
    """CPU time of this process so far, all threads (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench_tokenizing(folder: Path, size: int, rounds: int) -> list[list]:
    """gptkit prepare (reading the file, encoding, writing the shards) against tiktoken's encode_ordinary_batch on
    the same text already in memory, in the same pieces, on every core; alternating. MB per wall second is the
    speed; MB per CPU second (all threads) is the work done per megabyte, which other load on the machine does not
    change."""
    from gptkit.data.inputs import split_for_encoding
    from gptkit.data.prepare import prepare, workers
    from gptkit.data.tokenizer import get_tokenizer

    text_path = generate_text(folder / "speed.txt", size)
    megabytes = text_path.stat().st_size / 1e6
    enc = get_tokenizer()
    names = ("gptkit prepare", "tiktoken encode_ordinary_batch")
    wall, cpu = {name: [] for name in names}, {name: [] for name in names}
    for r in range(rounds):
        t0, c0 = time.perf_counter(), cpu_seconds()
        prepare(text_path, folder / f"speed-{r}")
        wall[names[0]].append(time.perf_counter() - t0)
        cpu[names[0]].append(cpu_seconds() - c0)
        pieces = split_for_encoding(text_path.read_text(encoding="utf-8"))
        t0, c0 = time.perf_counter(), cpu_seconds()
        enc.encode_ordinary_batch(pieces, num_threads=workers())
        wall[names[1]].append(time.perf_counter() - t0)
        cpu[names[1]].append(cpu_seconds() - c0)
        del pieces
    median = statistics.median
    baseline_wall, baseline_cpu = median(wall[names[1]]), median(cpu[names[1]])
    return [
        [
            name,
            f"{megabytes / median(wall[name]):.2f} [{megabytes / max(wall[name]):.2f}, "
            f"{megabytes / min(wall[name]):.2f}]",
            f"{baseline_wall / median(wall[name]):.2f}x",
            f"{megabytes / median(cpu[name]):.2f}",
            f"{baseline_cpu / median(cpu[name]):.2f}x",
        ]  # fmt: skip
        for name in names
    ]


def bench_step(folder: Path, steps: int) -> list[list]:
    """Training steps of the nano preset (4 x 128 tokens: a small step, so that the data's share shows) with batches
    from memory-mapped shards and from the same tokens in memory, alternating step by step in one process."""
    import torch

    from gptkit.model.config import PRESETS
    from gptkit.data.loader import BatchLoader, open_data
    from gptkit.model.gpt import GPT
    from gptkit.training.optim import make_optimizer
    from gptkit.training.config import TrainConfig

    source = open_data(folder / "speed-0")
    mapped = source.shards
    in_memory = [np.array(s) for s in mapped]
    loaders = {
        "memory-mapped shards": BatchLoader(mapped, 4, 128, seed=0),
        "in-memory array": BatchLoader(in_memory, 4, 128, seed=0),
    }
    torch.manual_seed(0)
    model = GPT(PRESETS["nano"]).train()
    optimizer = make_optimizer(model, TrainConfig(data="", lr=6e-4, weight_decay=0.1), torch.device("cpu"))
    step_times = {name: [] for name in loaders}
    batch_times = {name: [] for name in loaders}
    for i in range(2 * steps + 4):
        name = list(loaders)[i % 2]
        t0 = time.perf_counter()
        x, y = loaders[name].next_batch()
        t1 = time.perf_counter()
        loss = model(x, y)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        if i >= 4:
            step_times[name].append(time.perf_counter() - t0)
            batch_times[name].append(t1 - t0)
    median, best = statistics.median, min
    base = step_times["in-memory array"]
    return [
        [
            name,
            f"{median(times) * 1e3:.1f} ms",
            f"{best(times) * 1e3:.1f} ms",
            f"{median(batch_times[name]) * 1e6:.0f} us ({median(batch_times[name]) / median(times):.1%})",
            f"{median(times) / median(base):.3f}",
            f"{best(times) / best(base):.3f}",
        ]  # fmt: skip
        for name, times in step_times.items()
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--train-gb", type=float, help="size of the text trained on (default 1, quick 0.0625)")
    parser.add_argument("--prepare-gb", type=float, help="size of the text prepared (default 4, quick 0.125)")
    parser.add_argument("--only", choices=["speed", "memory"], help="run only the speed or the memory part")
    parser.add_argument("--tmp", type=Path, help="where to generate the corpora (default: the system's temp dir)")
    args = parser.parse_args()
    train_gb = args.train_gb or (1 / 16 if args.quick else 1.0)
    prepare_gb = args.prepare_gb or (1 / 8 if args.quick else 4.0)
    speed_bytes, rounds, steps = (16 << 20, 2, 20) if args.quick else (64 << 20, 3, 30)

    from gptkit.data.prepare import workers

    started = time.perf_counter()
    say(f"Data benchmark, {os.cpu_count()} cores ({workers()} used); `uv run python -m bench.data_bench"
        f"{' --quick' if args.quick else ''}`.")  # fmt: skip
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        folder = Path(tmp)
        if args.only != "memory":
            speed(folder, speed_bytes, rounds, steps)
        if args.only != "speed":
            rows = bench_memory(folder, int(train_gb * 1e9), int(prepare_gb * 1e9))
            header = ["command", "text", "wall time", "peak RSS"]
            say("### Peak resident memory (whole process)\n\n" + table(header, rows))
    say(f"Whole run: {(time.perf_counter() - started) / 60:.1f} minutes.")


def speed(folder: Path, speed_bytes: int, rounds: int, steps: int):
    rows = bench_tokenizing(folder, speed_bytes, rounds)
    header = ["impl", "MB/s median [min, max]", "vs tiktoken", "MB per CPU second", "vs tiktoken"]
    say(f"### Tokenizing {speed_bytes >> 20} MB of text ({rounds} rounds, alternating)\n\n" + table(header, rows))
    rows = bench_step(folder, steps)
    header = ["batches from", "step median", "step best", "next_batch median (share of the step)",
              "vs in-memory, median", "vs in-memory, best"]  # fmt: skip
    say(f"### Training step, nano preset, 4 x 128, AdamW ({steps} steps each, alternating)\n\n" + table(header, rows))


def say(section: str):
    """Print a section of the report as soon as it is measured."""
    print(section + "\n", flush=True)


if __name__ == "__main__":
    main()
