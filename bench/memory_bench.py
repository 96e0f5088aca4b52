"""Peak memory and speed of one training step of the big GPT-2s on this machine: full fine-tuning against LoRA,
each with and without activation checkpointing (issue 27's table).

Each configuration runs in a fresh process: a model of the preset's real shape with random weights (made in the
process: nothing to download), AdamW as gptkit train makes it (over the adapters alone for LoRA), then steps of
batch 1 x block 1024 under bf16 autocast where the CPU multiplies bf16 natively (fp32 elsewhere); it reports the
process's peak resident size (ru_maxrss) and the seconds of its last step. A full fine-tuning whose weights, gradients
and AdamW moments alone take 90% of the machine's memory is reported as not fitting, not run.

    uv run python -m bench.memory_bench                       # gpt2-large and gpt2-xl
    uv run python -m bench.memory_bench --models gpt2-medium --steps 1
"""

import argparse
import json
import subprocess
import sys

import torch

from bench.common import cpu_name

CHILD = """
import json, resource, sys, time
import torch
from gptkit.config import PRESETS, LoraSettings
from gptkit.lora import add_lora
from gptkit.model import GPT
from gptkit.optim import make_adamw
from gptkit.runtime import autocast, pick_dtype

name, lora_rank, checkpointing, steps, block = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(0)
model = GPT(PRESETS[name]).train()
if lora_rank:
    add_lora(model, LoraSettings(lora_rank, 2.0 * lora_rank, 0.0, ("attn", "proj", "mlp")))
model.activation_checkpointing = checkpointing
params = [p for p in model.parameters() if p.requires_grad]
optimizer = make_adamw(params, 1e-4, 0.1, torch.device("cpu"))
dtype = pick_dtype("auto", torch.device("cpu"))
idx = torch.randint(0, 50257, (1, block + 1))
times = []
for _ in range(steps):
    start = time.perf_counter()
    with autocast(torch.device("cpu"), dtype):
        _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - start)
print(json.dumps({
    "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    "step_s": times[-1], "tokens_per_s": block / times[-1], "dtype": str(dtype).removeprefix("torch."),
    "trained": sum(p.numel() for p in params), "params": model.num_params(),
}))
"""


def machine_memory_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return float("inf")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gpt2-large", "gpt2-xl"])
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="steps a configuration runs (the last one is timed)")
    parser.add_argument("--block-size", type=int, default=1024)
    args = parser.parse_args()
    from gptkit.config import PRESETS
    from gptkit.model import GPT

    print(
        f"{cpu_name()}, torch {torch.__version__}, CPU level {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads, {machine_memory_gb():.1f} GB; batch 1 x {args.block_size}"
    )
    print("| model | training | activation checkpointing | peak RSS GB | trained params | step s | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        with torch.device("meta"):
            n_params = GPT(PRESETS[name]).num_params()
        for lora_rank in (0, args.lora_rank):
            for checkpointing in (False, True):
                training = f"LoRA r={lora_rank} (attn, proj, mlp)" if lora_rank else "full fine-tuning"
                row = f"| {name} | {training} | {'yes' if checkpointing else 'no'} |"
                if not lora_rank and 16 * n_params / 2**30 > 0.9 * machine_memory_gb():  # and the activations
                    print(
                        f"{row} does not fit: weights, gradients and AdamW's moments alone need "
                        f"{16 * n_params / 2**30:.1f} GB | | | |",
                        flush=True,
                    )
                    continue
                command = [
                    sys.executable,
                    "-c",
                    CHILD,
                    name,
                    str(lora_rank),
                    str(int(checkpointing)),
                    str(args.steps),
                    str(args.block_size),
                ]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    print(f"{row} failed: {(done.stderr.strip().splitlines() or ['killed'])[-1]} | | | |", flush=True)
                    continue
                r = json.loads(done.stdout.strip().splitlines()[-1])
                print(
                    f"{row} {r['peak_gb']:.1f} | {r['trained'] / 1e6:,.1f}M of {r['params'] / 1e6:,.0f}M | "
                    f"{r['step_s']:.1f} | {r['tokens_per_s']:.0f} ({r['dtype']}) |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
