"""Peak memory and speed of one training step of the big GPT-2s on this machine: full fine-tuning against LoRA,
each with and without activation checkpointing, in one process; and full fine-tuning in two processes (torchrun,
gloo), the model copied to each (DDP) or sharded over them (--fsdp) (issue 27's table).

Each configuration runs in a fresh process: a model of the preset's real shape with random weights (made in the
process: nothing to download), AdamW as gptkit train makes it (over the adapters alone for LoRA), then steps of
batch 1 x block 1024 under bf16 autocast where the CPU multiplies bf16 natively (fp32 elsewhere); it reports the
process's peak resident size (ru_maxrss) and the seconds of its last step. A full fine-tuning whose weights, gradients
and AdamW moments alone take 90% of the machine's memory is reported as not fitting, not run. In two processes each
runs batch 1 x block (the global batch is 2 x block), the model built whole in each and then wrapped in DDP or sharded
as `gptkit train` does; the peak is the larger process's, and for --fsdp also that of rank 0 once it has gathered the
whole model to save it. Where two DDP processes do not fit, DDP runs in one (a world of one: every DDP process holds
the same, so this is its memory a process; its speed is not two processes').

    uv run python -m bench.memory_bench                       # gpt2-large and gpt2-xl
    uv run python -m bench.memory_bench --models gpt2-medium --steps 1
    uv run python -m bench.memory_bench --models gpt2-medium gpt2-large --processes 2   # DDP and FSDP rows only
"""

import argparse
import json
import os
import subprocess
import sys

import torch

from bench.common import cpu_name

# Steps of batch 1 x block with step_model, optimizer and dtype (the children define them), each step's seconds in times.
TIMED_STEPS = """
idx = torch.randint(0, 50257, (1, block + 1))
times = []
for _ in range(steps):
    start = time.perf_counter()
    with autocast(torch.device("cpu"), dtype):
        _, loss = step_model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - start)
"""

CHILD = (
    """
import json, resource, sys, time
import torch
from gptkit.model.config import PRESETS, LoraSettings
from gptkit.model.lora import add_lora
from gptkit.model.gpt import GPT
from gptkit.training.optim import make_adamw
from gptkit.machine.runtime import autocast, pick_dtype

name, lora_rank, checkpointing, steps, block = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(0)
model = GPT(PRESETS[name]).train()
if lora_rank:
    add_lora(model, LoraSettings(lora_rank, 2.0 * lora_rank, 0.0, ("attn", "proj", "mlp")))
model.activation_checkpointing = checkpointing
params = [p for p in model.parameters() if p.requires_grad]
optimizer = make_adamw(params, 1e-4, 0.1, torch.device("cpu"))
dtype = pick_dtype("auto", torch.device("cpu"))
step_model = model
"""
    + TIMED_STEPS
    + """print(json.dumps({
    "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    "step_s": times[-1], "tokens_per_s": block / times[-1], "dtype": str(dtype).removeprefix("torch."),
    "trained": sum(p.numel() for p in params), "params": model.num_params(),
}))
"""
)

TORCHRUN_CHILD = (
    """
import json, resource, sys, time
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from gptkit.model.config import PRESETS
from gptkit.model.gpt import GPT
from gptkit.training.optim import make_adamw
from gptkit.machine.runtime import autocast, pick_dtype

name, sharded, checkpointing, steps, block = sys.argv[1], sys.argv[2] == "fsdp", sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])
dist.init_process_group("gloo")
torch.manual_seed(0)
dtype = pick_dtype("auto", torch.device("cpu"))
model = GPT(PRESETS[name]).train()
model.activation_checkpointing = checkpointing
if sharded:
    from gptkit.training.fsdp import full_model_state, shard_model
    shard_model(model, dtype)
    step_model = model
else:
    step_model = DDP(model)
optimizer = make_adamw(list(model.parameters()), 1e-4, 0.1, torch.device("cpu"))
"""
    + TIMED_STEPS
    + """peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
saving = None
if sharded:
    full_model_state(model)
    saving = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print("RESULT " + json.dumps({
    "rank": dist.get_rank(), "peak_gb": peak, "saving_gb": saving, "step_s": times[-1],
    "dtype": str(dtype).removeprefix("torch."), "params": model.num_params(),
}), flush=True)
dist.barrier()
dist.destroy_process_group()
"""
)


def torchrun_row(name: str, mode: str, checkpointing: bool, processes: int, args) -> str:
    """A table row of one configuration run under torchrun in `processes` processes (DDP in one process: the memory
    each DDP process holds, whatever their number, where two do not fit)."""
    label = "--fsdp, 2 processes" if mode == "fsdp" else f"DDP, {processes} process{'es' if processes > 1 else ''}"
    row = f"| {name} | full fine-tuning, {label} | {'yes' if checkpointing else 'no'} |"
    with open(os.path.join(os.path.dirname(__file__), ".torchrun_child.py"), "w") as f:
        f.write(TORCHRUN_CHILD)
        script = f.name
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*launcher, script, name, mode, str(int(checkpointing)), str(args.steps), str(args.block_size)]
    threads = str(max(1, (os.cpu_count() or 2) // processes))
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": threads})
    finally:
        os.unlink(script)
    results = [json.loads(line.split(" ", 1)[1]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or len(results) != processes:
        errors = [line for line in done.stderr.splitlines() if "Error" in line] or ["killed"]  # not torchrun's banner
        return f"{row} failed: {errors[-1][:120]} | | | |"
    peak = max(r["peak_gb"] for r in results)
    saving = next(r["saving_gb"] for r in results if r["rank"] == 0)
    step_s = max(r["step_s"] for r in results)
    peak_text = f"{peak:.1f} per process" + (f" ({saving:.1f} on rank 0 while saving)" if saving else "")
    return (
        f"{row} {peak_text} | {results[0]['params'] / 1e6:,.0f}M of {results[0]['params'] / 1e6:,.0f}M | "
        f"{step_s:.1f} | {processes * args.block_size / step_s:.0f} ({results[0]['dtype']}) |"
    )


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
    parser.add_argument(
        "--processes", type=int, choices=(1, 2), help="the one-process rows only, or the two-process rows only"
    )
    args = parser.parse_args()
    from gptkit.model.config import PRESETS
    from gptkit.model.gpt import GPT

    print(
        f"{cpu_name()}, torch {torch.__version__}, CPU level {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads, {machine_memory_gb():.1f} GB; batch 1 x {args.block_size}"
    )
    print("| model | training | activation checkpointing | peak RSS GB | trained params | step s | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        with torch.device("meta"):
            n_params = GPT(PRESETS[name]).num_params()
        if args.processes != 1:
            for mode in ("ddp", "fsdp"):
                for checkpointing in (False, True):
                    per_process = 16 * n_params / (2 if mode == "fsdp" else 1) / 2**30
                    fits = [
                        n for n in (2, 1) if n * per_process < 0.9 * machine_memory_gb() and (n == 2 or mode == "ddp")
                    ]
                    if not fits:
                        print(
                            f"| {name} | full fine-tuning, {'--fsdp' if mode == 'fsdp' else 'DDP'} | "
                            f"{'yes' if checkpointing else 'no'} | does not fit: weights, gradients and AdamW's "
                            f"moments alone need {per_process:.1f} GB a process | | | |",
                            flush=True,
                        )
                        continue
                    print(torchrun_row(name, mode, checkpointing, fits[0], args), flush=True)
        if args.processes == 2:
            continue
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
