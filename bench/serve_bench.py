"""`gptkit serve` under load: N concurrent clients (1, 4, 16, 64) each ask for 64 tokens through the openai client
(streamed), on GPT-2 124M: aggregate tokens/s, time to first token and total latency (p50, p99), errors, and outputs
mixed up between requests (each client's greedy text against the model's own for its prompt, decoded here).

Without --ckpt the model is GPT-2 124M's shape with random weights drawn wider than at initialization, so that its
greedy text depends on the prompt (a fresh model's near-uniform logits repeat one token). The server is the command
itself, `gptkit serve CKPT --port 0`, in a process of its own; the clients are coroutines of one asyncio loop in this
process, which shares the machine's cores with the server.

With --llama-server PATH (llama.cpp's server, built apart), the same weights are exported to GGUF f16 by `gptkit
export`, served by llama-server (16 slots, --threads 2) and given the same load through its OpenAI-compatible
/v1/completions, ignoring <|endoftext|> so that every request gets all its tokens; both tables are printed, then the
ratio at each level.

Run: uv run python -m bench.serve_bench [--clients 1 4 16 64] [--max-batch 64] [--ckpt CKPT] [--llama-server PATH]
"""

import argparse
import asyncio
import datetime
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cpu_name, random_gpt2  # noqa: E402
from gptkit.checkpoint.folder import save_checkpoint  # noqa: E402
from gptkit.machine.cpu import cpu_level  # noqa: E402
from gptkit.machine.runtime import pick_dtype  # noqa: E402
from gptkit.inference.decode import load_for_decoding  # noqa: E402
from gptkit.inference.generate import generate  # noqa: E402
from gptkit.inference.sampling import Sampling  # noqa: E402
from gptkit.data.tokenizer import EOT_TOKEN, get_tokenizer  # noqa: E402

PROMPT_TOKENS = 8
LLAMA_SLOTS = 16
LLAMA_THREADS = 2


def prompts(count: int) -> list[list[int]]:
    """count prompts of PROMPT_TOKENS random tokens each (a different one for each client)."""
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, EOT_TOKEN, (count, PROMPT_TOKENS), generator=generator).tolist()


def expected_texts(ckpt: Path, dtype: str, idx: list[list[int]], new_tokens: int) -> list[str]:
    """The greedy text of each prompt, decoded here in one batch (up to <|endoftext|>, as the server stops)."""
    model = load_for_decoding(ckpt, torch.device("cpu"), pick_dtype(dtype, torch.device("cpu")), None, False)
    steps = torch.stack(list(generate(model, torch.tensor(idx), new_tokens, Sampling(temperature=0))), dim=1)
    texts = []
    for row in steps.tolist():
        row = row[: row.index(EOT_TOKEN)] if EOT_TOKEN in row else row
        texts.append(b"".join(get_tokenizer().decode_single_token_bytes(t) for t in row).decode(errors="replace"))
    return texts


def start_server(ckpt: Path, max_batch: int, dtype: str) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "gptkit", "serve", str(ckpt), "--port", "0", "--max-batch", str(max_batch),
               "--dtype", dtype, "--device", "cpu"]  # fmt: skip
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    line = server.stderr.readline()
    match = re.search(r" at (http://\S+/v1) ", line)
    if not match:
        server.kill()
        raise SystemExit(f"the server did not start: {line}{server.stderr.read()}")
    return server, match[1]


async def one_request(client, prompt: list[int], new_tokens: int, extra: dict | None) -> dict:
    """One streamed greedy request; its tokens are the usage chunk's count, else llama-server's timings'."""
    start = time.perf_counter()
    first, text, tokens = None, "", 0
    stream = await client.completions.create(model="bench", prompt=prompt, max_tokens=new_tokens, temperature=0,
                                             stream=True, stream_options={"include_usage": True},
                                             extra_body=extra)  # fmt: skip
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            first = first or time.perf_counter() - start
            text += chunk.choices[0].text
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
        elif (timings := (chunk.model_extra or {}).get("timings")) and not tokens:
            tokens = timings.get("predicted_n", 0)
    return {"ttft": first, "latency": time.perf_counter() - start, "text": text, "tokens": tokens}


async def level(url: str, clients: int, idx: list[list[int]], expected: list[str] | None, new_tokens: int,
                rounds: int, extra: dict | None = None):  # fmt: skip
    """clients concurrent clients, each sending rounds requests one after another: the level's figures (expected
    None: the texts are not checked; extra: more fields for each request's body)."""
    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    results, errors = [], 0

    async def run(i: int):
        nonlocal errors
        for _ in range(rounds):
            try:
                result = await one_request(client, idx[i], new_tokens, extra)
                results.append({**result, "mixed": expected is not None and result["text"] != expected[i]})
            except Exception as e:
                errors += 1
                print(f"  client {i}: {type(e).__name__}: {e}", file=sys.stderr)

    start = time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(clients)))
    elapsed = time.perf_counter() - start
    await client.close()

    def percentiles(values):
        values = sorted(values)
        return statistics.median(values), values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]

    ttft = percentiles([r["ttft"] for r in results if r["ttft"] is not None] or [float("nan")])
    latency = percentiles([r["latency"] for r in results] or [float("nan")])
    tokens = sum(r["tokens"] for r in results)
    return {"clients": clients, "requests": len(results) + errors, "tokens": tokens, "seconds": elapsed,
            "tokens/s": tokens / elapsed, "ttft_p50": ttft[0], "ttft_p99": ttft[1], "latency_p50": latency[0],
            "latency_p99": latency[1], "errors": errors,
            "mixed": None if expected is None else sum(r["mixed"] for r in results)}  # fmt: skip


def markdown(rows: list[dict]) -> str:
    single = rows[0]["tokens/s"] if rows[0]["clients"] == 1 else None
    lines = ["| clients | tokens/s (all clients) | vs 1 client | time to first token p50 / p99 | "
             "latency p50 / p99 | errors | mixed-up outputs |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        ratio = f"{r['tokens/s'] / single:.1f}x" if single else ""
        mixed = "not checked" if r["mixed"] is None else f"{r['mixed']} / {r['requests']}"
        lines.append(
            f"| {r['clients']} | {r['tokens/s']:.1f} | {ratio} | {r['ttft_p50'] * 1000:.0f} / "
            f"{r['ttft_p99'] * 1000:.0f} ms | {r['latency_p50']:.2f} / {r['latency_p99']:.2f} s | {r['errors']} | "
            f"{mixed} |"
        )
    return "\n".join(lines)


def run_levels(url: str, args, idx: list[list[int]], expected: list[str] | None, extra: dict | None = None):
    """A warm-up request, then each level of args.clients against the server at url: the levels' figures."""
    asyncio.run(level(url, 1, idx, expected, args.new_tokens, 1, extra))
    rows = []
    for clients in args.clients:
        rows.append(asyncio.run(level(url, clients, idx, expected, args.new_tokens, args.rounds, extra)))
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def gptkit_rows(ckpt: Path, args, idx: list[list[int]]) -> tuple[list[dict], int]:
    """gptkit serve's figures at each level (each text checked against the model's own), and its exit code."""
    t0 = time.perf_counter()
    expected = expected_texts(ckpt, args.dtype, idx, args.new_tokens)
    print(f"expected texts in {time.perf_counter() - t0:.1f} s (one batch, in this process)", file=sys.stderr)
    server, url = start_server(ckpt, args.max_batch, args.dtype)
    try:
        rows = run_levels(url, args, idx, expected)
    finally:
        server.terminate()
        code = server.wait(60)
    return rows, code


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(binary: Path, gguf: Path, new_tokens: int) -> tuple[subprocess.Popen, str]:
    """llama-server on gguf at a free loopback port, LLAMA_SLOTS slots of PROMPT_TOKENS + new_tokens (rounded up to
    64) each, once its /health answers."""
    port = free_port()
    context = LLAMA_SLOTS * -(-(PROMPT_TOKENS + new_tokens) // 64) * 64
    command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", str(LLAMA_SLOTS),
               "-c", str(context), "-t", str(LLAMA_THREADS)]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return server, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit(f"llama-server did not start: {server.stderr.read()[-2000:]}")


def llama_rows(binary: Path, ckpt: Path, tmp: Path, args, idx: list[list[int]]) -> list[dict]:
    """llama-server's figures at each level on ckpt's weights (GGUF f16 written by gptkit export)."""
    gguf = tmp / "model-f16.gguf"
    export = [sys.executable, "-m", "gptkit", "export", str(ckpt), "--format", "gguf", "--type", "f16", "-o", str(gguf)]
    subprocess.run(export, check=True, stdout=subprocess.DEVNULL)
    server, url = start_llama_server(binary, gguf, args.new_tokens)
    try:
        return run_levels(url, args, idx, None, {"ignore_eos": True})
    finally:
        server.terminate()
        server.wait(60)


def comparison(ours: list[dict], theirs: list[dict]) -> str:
    lines = ["| clients | gptkit serve tokens/s | llama-server tokens/s | ratio |", "|---|---|---|---|"]
    for a, b in zip(ours, theirs):
        ratio = a["tokens/s"] / b["tokens/s"]
        lines.append(f"| {a['clients']} | {a['tokens/s']:.1f} | {b['tokens/s']:.1f} | {ratio:.2f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="requests each client sends, one after another")
    parser.add_argument("--max-batch", type=int, default=64, help="gptkit serve --max-batch")
    parser.add_argument("--dtype", default="auto", help="gptkit serve --dtype")
    parser.add_argument("--ckpt", type=Path, help="a checkpoint instead of GPT-2 124M with random weights")
    parser.add_argument("--llama-server", type=Path, help="llama.cpp's llama-server, to run the same load against")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or save_checkpoint(random_gpt2(), Path(tmp) / "gpt2-random")
        idx = prompts(max(args.clients))
        rows, code = gptkit_rows(ckpt, args, idx)
        theirs = None
        if args.llama_server is not None and args.llama_server.is_file():
            theirs = llama_rows(args.llama_server, ckpt, Path(tmp), args, idx)
    print(f"{datetime.date.today()}, {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} at CPU level "
          f"{cpu_level()}; gptkit serve --max-batch {args.max_batch} --dtype {args.dtype}, "
          f"{args.new_tokens} tokens a request, {args.rounds} requests a client; load average before: {load:.1f}, "
          f"after: {os.getloadavg()[0]:.1f}; the server exited {code} on SIGTERM")  # fmt: skip
    print(markdown(rows))
    if theirs is None:
        why = "no --llama-server" if args.llama_server is None else f"no file {args.llama_server}"
        print(f"llama-server: skipped ({why})")
        return
    print(f"\nllama-server ({args.llama_server}, GGUF f16 written by gptkit export, {LLAMA_SLOTS} slots, "
          f"{LLAMA_THREADS} threads):")  # fmt: skip
    print(markdown(theirs))
    print()
    print(comparison(rows, theirs))


if __name__ == "__main__":
    main()
