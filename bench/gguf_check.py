"""`gptkit export --format gguf` against real llama.cpp: greedy tokens from llama.cpp (through llama-cpp-python) on
the exported file, for each --type, against gptkit's own on the checkpoint (fp32), with the file sizes.

llama-cpp-python builds llama.cpp from source when installed (many minutes on 2 cores), so it lives in a virtual
environment of its own, outside the repo, whose python this script runs as a child:

    uv venv /tmp/llamaenv && uv pip install --python /tmp/llamaenv llama-cpp-python numpy
    uv run python -m bench.gguf_check --llama-python /tmp/llamaenv/bin/python [--ckpt CKPT]

Without --ckpt the model is GPT-2 124M's shape with random weights drawn wider than at initialization, so that its
logits are peaked and depend on the context (a fresh model's near-uniform logits would make greedy decoding a matter
of ties); checkpoints/gpt2 (gptkit download gpt2) is used where it exists. An int8 copy (gptkit quantize) is
exported too, and compared with gptkit's int8 model.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cpu_name, random_gpt2  # noqa: E402

PROMPTS = ("Hello, my name is", "ROMEO:\nBut soft, what light through yonder window breaks?")
TYPES = ("f32", "f16", "bf16", "q8_0")

# Runs under llama-cpp-python's python: loads a GGUF file, tokenizes each prompt with the file's tokenizer, decodes
# greedily from gptkit's tokens of it, and saves the logits of its first step.
LLAMA_CHILD = """
import json, sys
import numpy as np
import llama_cpp
from llama_cpp import Llama

job = json.loads(sys.argv[1])
llm = Llama(model_path=job["path"], n_ctx=job["ctx"], n_threads=job["threads"], logits_all=True, verbose=False)
results = []
for text, tokens, logits_file in zip(job["texts"], job["tokens"], job["logits_files"]):
    llm.reset()
    own = llm.tokenize(text.encode(), add_bos=True, special=True)  # add_bos: the file says whether to
    llm.eval(tokens)
    np.save(logits_file, llm.scores[llm.n_tokens - 1])
    generated = []
    for _ in range(job["n"]):
        generated.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(generated[-1:])
    results.append({"tokens": own, "generated": generated})
system = llama_cpp.llama_print_system_info().decode().strip()
print(json.dumps({"version": llama_cpp.__version__, "system": system, "results": results}))
"""


def greedy(model, tokens: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """gptkit's greedy tokens after tokens, and the logits of the first step."""
    idx = torch.tensor([tokens])
    first = None
    with torch.no_grad():
        for _ in range(n):
            logits = model(idx, last_only=True)[0][0, -1]
            first = logits.numpy().copy() if first is None else first
            idx = torch.cat([idx, logits.argmax().view(1, 1)], dim=1)
    return idx[0, len(tokens) :].tolist(), first


def same_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def margin_at(model, tokens: list[int], ours: list[int], theirs: list[int]) -> float | None:
    """Where the greedy tokens first differ: how far, in gptkit's logits there, its pick led llama.cpp's (a small
    margin next to the logits' differences is a near tie that rounding decided, not a fault)."""
    i = same_prefix(ours, theirs)
    if i == min(len(ours), len(theirs)):
        return None
    with torch.no_grad():
        logits = model(torch.tensor([tokens + ours[:i]]), last_only=True)[0][0, -1]
    return float(logits[ours[i]] - logits[theirs[i]])


def run_llama(python: str, path: Path, texts, tokens, n: int, ctx: int, folder: Path) -> dict:
    files = [str(folder / f"{path.stem}-{i}.npy") for i in range(len(texts))]
    job = {"path": str(path), "texts": texts, "tokens": tokens, "logits_files": files, "n": n, "ctx": ctx}
    job["threads"] = torch.get_num_threads()
    out = subprocess.run([python, "-c", LLAMA_CHILD, json.dumps(job)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.splitlines()[-1])
    for r, f in zip(result["results"], files):
        r["first_logits"] = np.load(f)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-python", required=True, help="python of a venv with llama-cpp-python")
    parser.add_argument("--ckpt", type=Path, help="a float checkpoint (default: checkpoints/gpt2, else random GPT-2)")
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens per prompt")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="gptkit-gguf-"))  # the checkpoints and files: 2 GB for GPT-2 124M
    try:
        check(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check(args, folder: Path):
    from importlib.metadata import version

    from gptkit.checkpoint.folder import load_checkpoint, save_checkpoint
    from gptkit.machine.cpu import cpu_level
    from gptkit.checkpoint.gguf import export
    from gptkit.model.int8 import quantize_int8
    from gptkit.options import ExportOptions
    from gptkit.data.tokenizer import encode

    ckpt = args.ckpt or (Path("checkpoints/gpt2") if Path("checkpoints/gpt2/model.safetensors").is_file() else None)
    if ckpt is None:
        ckpt, what = save_checkpoint(random_gpt2(), folder / "gpt2-random"), "GPT-2 124M shape, random weights"
    else:
        what = str(ckpt)
    model = load_checkpoint(ckpt)
    int8 = save_checkpoint(quantize_int8(load_checkpoint(ckpt)), folder / "int8")
    int8_model = load_checkpoint(int8)
    tokens = [encode(p) for p in PROMPTS]
    ctx = max(256, model.config.block_size)
    runs = [(t, ckpt, model) for t in TYPES] + [("int8 -> q8_0", int8, int8_model)]
    expected = {id(m): [greedy(m, t, args.tokens) for t in tokens] for m in (model, int8_model)}
    weights = (Path(ckpt) / "model.safetensors").stat().st_size
    rows = []
    for label, source, reference in runs:
        type = label.split()[-1]
        out = folder / f"{Path(source).name}-{type}.gguf"
        start = time.perf_counter()
        export(ExportOptions(source, "gguf", type, out))
        seconds = time.perf_counter() - start
        llama = run_llama(args.llama_python, out, list(PROMPTS), tokens, args.tokens, ctx, folder)
        matched, margins, logit_diff = [], [], 0.0
        for r, (generated, first), t in zip(llama["results"], expected[id(reference)], tokens):
            assert r["tokens"] == t, f"llama.cpp tokenizes differently: {r['tokens']} vs {t}"
            matched.append(same_prefix(r["generated"], generated))
            margins.append(margin_at(reference, t, generated, r["generated"]))
            logit_diff = max(logit_diff, float(np.abs(r["first_logits"] - first).max()))
        scale = max(float(np.abs(first).max()) for _, first in expected[id(reference)])
        rows.append((label, out.stat().st_size, seconds, matched, margins, logit_diff, scale))

    print(f"CPU: {cpu_name()}, torch {torch.__version__} at CPU level {cpu_level()}, {torch.get_num_threads()} threads")
    print(f"llama-cpp-python {llama['version']} ({llama['system']}), gguf {version('gguf')}")
    print(
        f"model: {what}; safetensors {weights / 1e6:.1f} MB; {len(PROMPTS)} prompts, {args.tokens} greedy tokens each"
    )
    print("prompt tokens: llama.cpp's tokenizer gives gptkit's for every prompt")
    print()
    print(
        "| --type | GGUF file | vs fp32 safetensors | export | greedy tokens equal to gptkit's (margin where they "
        "differ) | max logit diff, step 1 |"
    )
    print("|---|---|---|---|---|---|")
    for label, size, seconds, matched, margins, diff, scale in rows:
        equal = ", ".join(
            f"{m}/{args.tokens}" + (f" ({margin:.2g})" if margin is not None else "")
            for m, margin in zip(matched, margins)
        )
        print(
            f"| {label} | {size / 1e6:.1f} MB | {size / weights:.0%} | {seconds:.1f} s | {equal} | "
            f"{diff:.3g} (logits up to {scale:.0f}) |"
        )


if __name__ == "__main__":
    main()
