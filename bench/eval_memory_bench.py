"""`gptkit eval`'s memory on the validation split of a 1 GB token folder: the split is read from the memory-mapped
shards a batch of windows at a time (issue 24, item 7), where eval used to concatenate it in memory (and then
build an int64 array of each token's bytes, 8 bytes a token, and a Python list of every window).

    uv run python -m bench.eval_memory_bench                          # 1 GB folder, 10% validation (100 MB)
    uv run python -m bench.eval_memory_bench --old /tmp/gptkit-old    # the same with the code before, side by side
    uv run python -m bench.eval_memory_bench --quick                  # 100 MB folder, 5% validation: a smoke check

--old is a checkout of gptkit from before the change, e.g. `git worktree add /tmp/gptkit-old bdc9c11~1`: its commands
run from there (PYTHONPATH) with this environment's packages. In a temporary folder the bench writes a token folder
of random tokens (the token-folder format `gptkit prepare` writes, shards of 100M tokens) and a checkpoint whose
gptkit.json records that folder as its training data, so that `gptkit eval CKPT` evaluates its validation split.
The model is made as small as a GPT-2 model gets (1 layer, 16 dims, 256 words: the tokens are all below 256), so
that scoring a split of 50M tokens on a 2-core CPU takes minutes, not hours: the memory measured is that of the data
and of the process (Python, torch, the model), which does not depend on the model's speed.

Each command runs in a child process; its memory is read from /proc/PID/status every 20 ms (the peaks of RssAnon:
the process's own memory, and of RssFile: file pages mapped in and touched, the shards' pages among them, which are
the OS's page cache and reclaimable) and from wait4 (ru_maxrss, the exact peak of the whole resident size, anon +
file). "baseline" is the same command with --max-tokens of four full batches (everything but the split: Python,
torch, the model and a batch's work).
Linux only.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cpu_name  # noqa: E402
from bench.run import table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 256  # the bench model's words: its tokens are GPT-2's first 256 (the single bytes)
SHARD_TOKENS = 100_000_000  # as gptkit prepare writes them: 200 MB a shard
BLOCK_SIZE, BATCH_SIZE = 256, 64
BASELINE_TOKENS = 4 * BATCH_SIZE * BLOCK_SIZE  # four full batches: all of eval's memory but the split's


def write_token_folder(folder: Path, n_tokens: int, seed: int = 0) -> Path:
    """A complete token folder of n_tokens random tokens (below VOCAB), written 10M tokens at a time."""
    from gptkit.data.tokenfolder import TOKEN_DTYPE, new_manifest, shard_name, write_manifest

    folder.mkdir(parents=True)
    rng, manifest = np.random.default_rng(seed), new_manifest([], [], SHARD_TOKENS, 0.1)
    for index, begin in enumerate(range(0, n_tokens, SHARD_TOKENS)):
        count = min(SHARD_TOKENS, n_tokens - begin)
        with open(folder / shard_name(index), "wb") as f:
            for chunk in range(0, count, 10_000_000):
                rng.integers(0, VOCAB, min(10_000_000, count - chunk), dtype=TOKEN_DTYPE).tofile(f)
        manifest["shards"].append({"file": shard_name(index), "tokens": count})
    manifest["complete"] = True
    write_manifest(folder, manifest)
    return folder


def write_checkpoint(folder: Path, data: Path, val_fraction: float) -> tuple[Path, int]:
    """(a checkpoint of the bench model whose gptkit.json records data as its training data, its weights' bytes)."""
    import torch

    from gptkit.checkpoint.folder import read_metadata, save_checkpoint
    from gptkit.model.config import GPTConfig
    from gptkit.data.loader import open_data
    from gptkit.files import write_json
    from gptkit.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=16, block_size=BLOCK_SIZE, vocab_size=VOCAB))
    path = save_checkpoint(model, folder)
    source = open_data(data)
    meta = read_metadata(path)
    meta["data"] = {"path": str(data), "format": "gptkit", "sha256": source.digest, "tokens": source.tokens,
                    "val_fraction": val_fraction, "split": "tail"}  # fmt: skip
    write_json(path / "gptkit.json", meta)
    return path, sum(t.numel() * t.element_size() for t in model.state_dict().values())


def status_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "RssFile", "VmRSS"):
            fields[name] = int(value.split()[0])
    return fields


def measure(root: Path, args: list[str], env: dict, time_limit: float | None) -> dict:
    """Peak memory (MB) of `gptkit eval ARGS` run from the checkout at root, its wall time, and its results."""
    env = env | {"PYTHONPATH": str(root)}
    command = [sys.executable, "-m", "gptkit", "eval", *args, "--json", "--device", "cpu", "--dtype", "float32",
               "--batch-size", str(BATCH_SIZE)]  # fmt: skip
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=err)
        peak, stopped = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}, False
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            try:
                for name, kb in status_kb(child.pid).items():  # a process that has exited has none of them
                    peak[name] = max(peak[name], kb)
            except (OSError, ValueError):  # between its exit and wait4
                pass
            if time_limit and not stopped and time.perf_counter() - started > time_limit:
                child.send_signal(signal.SIGTERM)
                stopped = True
            time.sleep(0.02)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if child.returncode != 0 and not stopped:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    lm = None if stopped else json.loads(stdout)["lm"]
    return {"anon_mb": peak["RssAnon"] / 1024, "file_mb": peak["RssFile"] / 1024,
            "sampled_rss_mb": peak["VmRSS"] / 1024, "maxrss_mb": usage.ru_maxrss / 1024, "seconds": seconds, "lm": lm,
            "stopped": stopped}  # fmt: skip


def bench(n_tokens: int, val_fraction: float, old: Path | None, time_limit: float | None) -> tuple[list[list], dict]:
    from gptkit.data.tokenfolder import val_start

    versions = ([("before (concatenated)", old)] if old else []) + [("now (streamed)", ROOT)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        data = write_token_folder(tmp / "tokens", n_tokens)
        ckpt, model_bytes = write_checkpoint(tmp / "ckpt", data, val_fraction)
        split_tokens = n_tokens - val_start(n_tokens, val_fraction)
        facts = {"folder_bytes": 2 * n_tokens, "split_tokens": split_tokens, "split_bytes": 2 * split_tokens,
                 "model_bytes": model_bytes, "write_s": time.perf_counter() - started}  # fmt: skip
        env = os.environ | {"GPTKIT_CACHE_DIR": str(tmp / "cache")}
        for name, root in versions:
            for what, args in [
                (f"baseline: --max-tokens {BASELINE_TOKENS:,}", ["--max-tokens", str(BASELINE_TOKENS)]),
                ("the whole split", []),
            ]:
                r = measure(root, [str(ckpt), *args], env, time_limit if not args else None)
                scored = "stopped" if r["stopped"] else f"{r['lm']['tokens']:,}"
                rows.append([name, what, scored, f"{r['seconds']:.0f} s", f"{r['anon_mb']:,.0f}",
                             f"{r['file_mb']:,.0f}", f"{r['maxrss_mb']:,.0f}"])  # fmt: skip
                print(json.dumps({"version": name, "what": what, **r}), file=sys.stderr, flush=True)
                if r["lm"] and not args:
                    keys = ("loss", "perplexity", "bits_per_byte", "tokens", "bytes", "windows")
                    facts.setdefault("results", []).append({k: r["lm"][k] for k in keys})
    return rows, facts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 100 MB folder, 5%% validation")
    parser.add_argument("--old", type=Path, help="a checkout of gptkit from before the change, run side by side")
    parser.add_argument("--tokens", type=int, help="tokens in the folder (default 500M: 1 GB)")
    parser.add_argument("--val-fraction", type=float, help="the validation fraction the checkpoint records (0.1)")
    parser.add_argument("--time-limit", type=float, help="stop each whole-split eval after this many seconds")
    args = parser.parse_args()
    n_tokens = args.tokens or (50_000_000 if args.quick else 500_000_000)
    val_fraction = args.val_fraction or (0.05 if args.quick else 0.1)

    import torch

    from gptkit.machine.cpu import cpu_level

    rows, facts = bench(n_tokens, val_fraction, args.old, args.time_limit)
    given = {"--tokens": args.tokens, "--val-fraction": args.val_fraction, "--time-limit": args.time_limit}
    command = " ".join(["uv run python -m bench.eval_memory_bench"] + ["--quick"] * args.quick
                       + ["--old OLD"] * bool(args.old) + [f"{k} {v}" for k, v in given.items() if v])  # fmt: skip
    print(f"{date.today()} · {cpu_name()}, {os.cpu_count()} cores, torch `{cpu_level()}`, torch {torch.__version__} · "
          f"`{command}`")  # fmt: skip
    print()
    print(f"token folder {facts['folder_bytes'] / 1e9:.2f} GB ({n_tokens:,} tokens), validation split "
          f"{facts['split_bytes'] / 1e6:,.0f} MB ({facts['split_tokens']:,} tokens, val_fraction {val_fraction}); "
          f"model weights {facts['model_bytes'] / 1e3:,.0f} KB (1 layer, 16 dims, {VOCAB} words); "
          f"windows {BLOCK_SIZE}, --batch-size {BATCH_SIZE}; folder written in {facts['write_s']:.0f} s")  # fmt: skip
    print()
    results = facts.get("results", [])
    if len(results) == 2:
        print(
            f"whole-split results of the two, {'identical' if results[0] == results[1] else 'DIFFERENT'}: "
            f"loss {results[-1]['loss']!r}, {results[-1]['tokens']:,} tokens, {results[-1]['windows']:,} windows"
        )
        print()
    print(table(["code", "gptkit eval CKPT", "tokens scored", "wall", "peak RssAnon MB", "peak RssFile MB",
                 "peak RSS MB (ru_maxrss)"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
