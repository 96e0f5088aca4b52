"""`gptkit eval`: held-out loss, perplexity and bits per byte of a text (or of the validation split a checkpoint's
training held out), and HellaSwag accuracy (the library: gptkit/evaluation); the results as a table or JSON, and a
line of the checkpoint folder's evals.jsonl.
"""

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from gptkit import __version__
from gptkit.checkpoint.folder import load_checkpoint, read_config, read_metadata
from gptkit.checkpoint.locate import quantization_of
from gptkit.commands.evals_log import append_record
from gptkit.evaluation.hellaswag import evaluate_hellaswag, read_hellaswag
from gptkit.evaluation.loss import evaluate_lm
from gptkit.evaluation.tokens import read_tokens, validation_split
from gptkit.files import data_hash
from gptkit.machine.runtime import keep_freed_memory, pick_device, pick_dtype
from gptkit.model.quantization import quantize_weights
from gptkit.options import EvalOptions
from gptkit.progress import count_bar, track


def print_table(record: dict):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"eval of {record['checkpoint']}", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    if "lm" in record:
        lm = record["lm"]
        source = lm["evaluated"]
        what = source.get("text") or f"validation split of {source['validation_split_of']}"
        table.add_row("text", what)
        table.add_row("tokens scored", f"{lm['tokens']:,}")
        table.add_row("bytes", f"{lm['bytes']:,}")
        table.add_row("loss (nats/token)", f"{lm['loss']:.4f}")
        table.add_row("perplexity", f"{lm['perplexity']:.3f}")
        bpb = lm["bits_per_byte"]
        table.add_row("bits per byte", "-" if bpb is None else f"{bpb:.4f}")
        table.add_row("throughput", f"{lm['tokens_per_second']:,.0f} tokens/s")
    if "hellaswag" in record:
        hs = record["hellaswag"]
        table.add_row("HellaSwag", hs["file"])
        table.add_row("examples", f"{hs['n']:,}" + (f" ({hs['cropped']} cropped)" if hs["cropped"] else ""))
        table.add_row("acc", f"{hs['acc']:.4f} ({hs['correct']}/{hs['n']})")
        table.add_row("acc_norm", f"{hs['acc_norm']:.4f} ({hs['correct_norm']}/{hs['n']})")
    s = record["settings"]
    quantized = f", {s['quantize']} weights" if s.get("quantize") else ""
    table.add_row(
        "settings", f"block size {s['block_size']}, stride {s['stride']}, {s['dtype']}{quantized} on {s['device']}"
    )
    Console().print(table)


def run_eval(opts: EvalOptions):
    """`gptkit eval`: evaluate, print, record; everything the user gave is checked before the model loads (opts
    checked itself when it was made)."""
    if opts.tasks is not None or opts.core is not None:
        from gptkit.commands.benchmarks import run_benchmarks

        return run_benchmarks(opts)
    ckpt, text, hellaswag, max_tokens = Path(opts.ckpt), opts.text, opts.hellaswag, opts.max_tokens
    folder = ckpt if ckpt.is_dir() else ckpt.parent
    block_size = read_config(ckpt).block_size if opts.block_size is None else opts.block_size
    stride = block_size if opts.stride is None else opts.stride
    device = pick_device(opts.device)
    dtype = pick_dtype(opts.dtype, device)

    tokens = source = examples = None
    if text is not None:
        tokens, sha256 = read_tokens(text, quiet=opts.json_output)
        source = {"text": str(Path(text).resolve()), "sha256": sha256}
    elif hellaswag is None:
        tokens, source = validation_split(ckpt, quiet=opts.json_output, max_tokens=max_tokens)
    if hellaswag is not None:
        examples = read_hellaswag(hellaswag)

    keep_freed_memory()
    stored = {}
    model = load_checkpoint(ckpt, device, metadata=stored)  # float32 weights; bf16/fp16 runs under autocast
    quantize_weights(model, opts.quantize)
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "gptkit_version": __version__,
        "checkpoint": str(ckpt.resolve()),
        "step": int(stored["step"]) if "step" in stored else read_metadata(ckpt).get("step"),  # of the weights read
        "settings": {
            "block_size": block_size,
            "stride": stride,
            "batch_size": opts.batch_size,
            "max_tokens": max_tokens,
            "dtype": str(dtype).removeprefix("torch."),
            "device": str(device),
            "quantize": opts.quantize or quantization_of(ckpt),  # an int8 checkpoint is int8 without --quantize
        },
    }
    with count_bar(enabled=not opts.json_output) as bar:
        if tokens is not None:
            progress = track(bar, "loss", "tokens")
            results = evaluate_lm(model, tokens, block_size, stride, opts.batch_size, max_tokens, dtype, progress)
            record["lm"] = {"evaluated": source, **results}
        if examples is not None:
            progress = track(bar, "HellaSwag", "examples")
            results = evaluate_hellaswag(model, examples, dtype, progress)
            hs_file = {"file": str(Path(hellaswag).resolve()), "sha256": data_hash([Path(hellaswag)])}
            record["hellaswag"] = {**hs_file, **results}

    if opts.json_output:
        sys.stdout.write(json.dumps(record, indent=2) + "\n")
    else:
        print_table(record)
    append_record(folder, record)
    return record
