"""All of gptkit's benchmarks in one run, against Hugging Face transformers' GPT2LMHeadModel on the same weights,
data, shapes and dtypes (the two alternating, so machine noise hits both), printed as one markdown report.

    uv run python -m bench.run            # the full run
    uv run python -m bench.run --quick    # a smoke check

The machine's rules (bench.choices_bench) run on every CPU level the host runs; the training and sampling benches
also run under the next level down (ATEN_CPU_CAPABILITY, in a child process), so each run covers at least two
levels where the host has two. Every section names the CPU level it ran at.

Ratios (gptkit / transformers) are the figures that matter; the targets are in the train and sample issues.
"""

import argparse
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import (  # noqa: E402
    choices_bench,
    cli_bench,
    eval_bench,
    load_bench,
    quantize_bench,
    runlog_bench,
    sample_bench,
    train_bench,
)
from bench.common import copy_bandwidth_gbs, cpu_name, matmul_peak_gflops  # noqa: E402
from gptkit.machine.cpu import cpu_level, lower_cpu_levels  # noqa: E402


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_section() -> str:
    rows = [
        ["matmul peak, fp32 (2048 x 2048)", f"{matmul_peak_gflops(torch.float32):.0f} GFLOP/s"],
        ["matmul peak, bf16 (2048 x 2048)", f"{matmul_peak_gflops(torch.bfloat16):.0f} GFLOP/s"],
        ["copy bandwidth (512 MiB, read + write)", f"{copy_bandwidth_gbs():.1f} GB/s"],
    ]
    return "### Machine\n\n" + table(["figure", "measured"], rows)


def train_section(quick: bool) -> str:
    rows = train_bench.bench_train(quick)
    body = []
    for r in rows:
        transformers_row = next(
            p for p in rows if p["impl"] == "transformers" and p["model"] == r["model"] and p["dtype"] == r["dtype"]
        )
        transformers_fp32 = next(
            p for p in rows if p["impl"] == "transformers" and p["model"] == r["model"] and p["dtype"] == "float32"
        )
        body.append(
            [
                r["impl"],
                r["model"],
                r["dtype"],
                r["batch"],
                f"{r['tokens/s median']:,} [{r['tokens/s min']:,}, {r['tokens/s max']:,}]",
                f"{r['MFU %']}%",
                f"{r['peak RSS MB']:,}",
                f"{r['tokens/s median'] / transformers_row['tokens/s median']:.2f}x",
                f"{r['tokens/s median'] / transformers_fp32['tokens/s median']:.2f}x",
            ]
        )
    header = ["impl", "model", "dtype", "batch x seq", "tokens/s median [min, max]", "MFU", "peak RSS MB",
              "vs transformers, same dtype", "vs transformers fp32"]  # fmt: skip
    peaks = {r["dtype"]: r["matmul peak GFLOP/s"] for r in rows}
    note = (
        f"MFU: against the best of the matmul peaks measured before and after these runs ({peaks['float32']} GFLOP/s "
        f"fp32, {peaks['bfloat16']} bf16). transformers+malloc: transformers with the allocator setting that "
        "`gptkit train` makes (`runtime.keep_freed_memory`)."
    )
    return f"### Training step (AdamW, fresh process per run; level {cpu_level()})\n\n" + table(header, body) + "\n\n" + note


def sample_section(quick: bool) -> str:
    rows = sample_bench.bench_sample(quick, compile=not quick)
    new_tokens = 50 if quick else 200
    speculative = sample_bench.speculative_markdown(sample_bench.bench_speculative(quick))
    return (
        f"### Sampling ({new_tokens} new tokens, top-k 50, KV cache; level {cpu_level()})\n\n"
        + sample_bench.markdown(rows)
        + "\n\n#### Speculative decoding (mini target, micro draft, trained here; fp32, batch 1)\n\n"
        + speculative
    )


def eval_section(quick: bool) -> str:
    rows = eval_bench.bench_eval(quick)
    body = []
    for r in rows:
        transformers_row = next(p for p in rows if p["impl"] == "transformers" and p["dtype"] == r["dtype"])
        body.append(
            [
                r["impl"],
                r["dtype"],
                f"{r['tokens_per_s']:,.0f}",
                f"{r['best_tokens_per_s']:,.0f}",
                f"{r['tokens_per_s'] / transformers_row['tokens_per_s']:.2f}x",
            ]
        )
    header = ["impl", "dtype", "tokens/s median", "tokens/s best", "vs transformers"]
    return "### Eval (GPT-2 124M, windows of 1024 tokens)\n\n" + table(header, body)


def quantize_section(quick: bool) -> str:
    return "### int8 checkpoints (gptkit quantize)\n\n" + quantize_bench.report(quantize_bench.bench_quantize(quick))


def choices_section(quick: bool) -> str:
    results = choices_bench.run_levels(quick, [None, *lower_cpu_levels()])
    return "### The machine's rules, on every CPU level\n\n" + choices_bench.markdown(results, quick)


def load_section(quick: bool) -> str:
    return "### Loading a checkpoint\n\n" + load_bench.markdown(load_bench.bench_load(quick), quick)


def at_lower_level(section, quick: bool) -> str:
    """section run again in a child process under the next CPU level down, if the host has one."""
    lower = lower_cpu_levels()
    if not lower:
        return f"(no level below {cpu_level()} on this host)"
    env = os.environ | {"ATEN_CPU_CAPABILITY": lower[0]}
    command = [sys.executable, "-m", "bench.run", "--only", section.__name__] + (["--quick"] if quick else [])
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    return out.stdout.strip()


def train_lower_level_section(quick: bool) -> str:
    return at_lower_level(train_section, quick)


def sample_lower_level_section(quick: bool) -> str:
    return at_lower_level(sample_section, quick)


def cli_section(quick: bool) -> str:
    body = [
        [r["command"], f"{r['median']:.2f} s", f"{r['min']:.2f} s", f"{r['max']:.2f} s", f"{r['vs --help']:.2f}x"]
        for r in cli_bench.bench_cli(quick)
    ]
    header = ["command", "median", "min", "max", "vs gptkit --help"]
    return "### Command latency (whole process)\n\n" + table(header, body)


def runlog_section(quick: bool) -> str:
    rows = runlog_bench.bench_runlog(quick)
    body = [
        [r["sink"], f"{r['median']:,.0f}", f"{r['mean']:,.0f}", f"{r['p99']:,.0f}", f"{r['open_close_s']:.2f} s"]
        for r in rows
    ]
    header = ["sink", "write, median (us)", "mean (us)", "99th percentile (us)", "open + close"]
    return f"### Run logging ({rows[0]['records']:,} records, {rows[0]['pause_s'] * 1e3:.0f} ms apart)\n\n" + table(
        header, body
    )


def main():
    parser = argparse.ArgumentParser(description="gptkit against transformers, in one run.")
    parser.add_argument("--quick", action="store_true", help="fewer steps and tokens: a smoke check")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # one section's function name: at_lower_level's child
    args = parser.parse_args()
    if args.only:
        print(globals()[args.only](args.quick))
        return

    start = time.perf_counter()
    header = (
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {cpu_name()}, {os.cpu_count()} cores, CPU level "
        f"{cpu_level()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, load average "
        f"{os.getloadavg()[0]:.1f} at the start; "
        f"`uv run python -m bench.run{' --quick' if args.quick else ''}`."
    )
    sections = [header]
    sections_in_order = (
        machine_section,
        choices_section,
        train_section,
        train_lower_level_section,
        sample_section,
        sample_lower_level_section,
        eval_section,
        load_section,
        quantize_section,
        cli_section,
        runlog_section,
    )
    for section in sections_in_order:
        print(f"[{time.perf_counter() - start:6.0f} s] {section.__name__.removesuffix('_section')}", file=sys.stderr)
        sections.append(section(args.quick) if section is not machine_section else section())
    sections.append(f"Whole run: {(time.perf_counter() - start) / 60:.1f} minutes.")
    report = "\n\n".join(sections) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
