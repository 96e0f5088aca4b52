"""`gptkit eval`: held-out loss, perplexity and bits per byte of a text, and HellaSwag accuracy.

Language modelling. The tokens are cut into windows of block_size inputs, each input predicting the token after
it. With the default stride (= block_size) the windows follow one another and every token but the first is scored
once, with the context since its window's start. With a smaller stride the windows overlap and only the targets new
to each window are scored, so each target sees at least block_size - stride tokens of context: the sliding window
of Hugging Face's perplexity guide, applied to the (input, target) pairs. Either way each token after the first is
scored exactly once (the first is never a target). Bits per byte = total nats / ln 2 / UTF-8 bytes of the scored
tokens, where <|endoftext|> (a separator the data loader adds between documents, not text) counts 0 bytes: for a
whole file that is the file's bytes less those of its first token. It compares models with different tokenizers.
The tokens are read a batch of windows at a time from the memory-mapped shards (a TokenSequence: the windows cross
shard boundaries as over one array), so the memory does not grow with the text or the validation split.

HellaSwag (Zellers et al., 2019) is sentence completion: a context and four endings, one right. Each ending is
scored by the model's loss on the ending's tokens given the context, the four rows in one forward pass (as
build-nanogpt does): `acc` picks the ending of least total loss, `acc_norm` of least mean loss per token. The
validation set (10,042 examples) is hellaswag_val.jsonl from the authors' repository:
    https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl
A context too long for the model is cropped from the left (the ending is always kept whole); `cropped` counts them.
"""

import json
import math
import os
import sys
import time
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from gptkit import __version__
from gptkit.checkpoint.folder import load_checkpoint, read_config, read_metadata
from gptkit.checkpoint.locate import quantization_of
from gptkit.data.loader import TokenSequence, open_data, read_utf8
from gptkit.errors import GptkitError
from gptkit.files import data_hash
from gptkit.model.int8 import quantize_int8
from gptkit.model.gpt import GPT
from gptkit.options import EvalOptions, check_hellaswag_file, check_window
from gptkit.data.prepare import input_files
from gptkit.progress import PrepareProgress, count_bar, track
from gptkit.training.runlock import EVAL_FOLDER_IN_USE, EVAL_LOCK_WAIT_S, EVALS_LOCK_FILE, folder_lock
from gptkit.training.runlog import EVALS_FILE
from gptkit.machine.runtime import autocast, keep_freed_memory, pick_device, pick_dtype
from gptkit.data.tokenizer import EOT_TOKEN, get_tokenizer

# --- language modelling ----------------------------------------------------------------------------------------------


@cache
def token_byte_lengths() -> np.ndarray:
    """UTF-8 bytes of each GPT-2 token; 0 for <|endoftext|>."""
    enc = get_tokenizer()
    lengths = np.array([len(enc.decode_single_token_bytes(t)) for t in range(enc.n_vocab)], dtype=np.int64)
    lengths[EOT_TOKEN] = 0
    return lengths


def lm_windows(n_tokens: int, block_size: int, stride: int):
    """Yields (begin, end, n_scored) of each window in order: inputs tokens[begin:end], targets tokens[begin + 1:end
    + 1], of which the last n_scored are scored (those no earlier window scored). Every window is block_size long but
    the last, which may be shorter."""
    scored_until = 0
    for begin in range(0, n_tokens - 1, stride):
        end = min(begin + block_size, n_tokens - 1)
        yield begin, end, end - scored_until
        scored_until = end
        if end == n_tokens - 1:
            break


@torch.no_grad()
def summed_loss(model: GPT, batches, dtype: torch.dtype, distributed: bool = False, progress=None) -> tuple[float, int]:
    """(the summed next-token loss in nats, the number of targets scored) over batches, the one loss loop of training's
    validation and `gptkit eval`. Each batch is (inputs, targets, scored): the last scored[row] targets of each row
    count (a strided window scores only what earlier windows did not). With distributed, the sums of every process
    are added up (each process scores its share of the batches). progress(scored so far) runs after each batch and
    may raise to stop."""
    device = model.lm_head.weight.device
    total = torch.zeros(2, dtype=torch.float64, device=device)  # nats, targets
    for inputs, targets, scored in batches:
        inputs, targets = inputs.to(device), targets.to(device)
        with autocast(device, dtype):
            logits, _ = model(inputs)
        for row, n in enumerate(scored):
            total[0] += F.cross_entropy(logits[row, -n:].float(), targets[row, -n:], reduction="sum").double()
            total[1] += n
        if progress:
            progress(int(total[1].item()))
    if distributed:
        torch.distributed.all_reduce(total)
    return total[0].item(), int(total[1].item())


def evaluate_lm(
    model: GPT,
    tokens,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
    max_tokens: int | None = None,
    dtype: torch.dtype = torch.float32,
    progress=None,
) -> dict:
    """Mean next-token loss (nats), perplexity and bits per byte of tokens (an array, or a TokenSequence of
    memory-mapped shards, read a batch of windows at a time) under model.

    block_size defaults to the model's context, stride to block_size; max_tokens caps the scored tokens.
    progress(scored, total) is called after each batch.
    """
    block_size = model.config.block_size if block_size is None else block_size
    stride = block_size if stride is None else stride
    check_window(block_size, stride, model.config.block_size)
    if not isinstance(tokens, TokenSequence):
        tokens = np.asarray(tokens)
    n_tokens = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    if n_tokens < 2:
        raise GptkitError(f"the text is {n_tokens} token(s) long: it needs at least 2 to score one")
    byte_lengths = token_byte_lengths()
    counts = {"windows": 0, "bytes": 0}

    def batch(group):
        rows = np.stack([tokens[begin : end + 1] for begin, end, _ in group]).astype(np.int64)
        inputs, targets = rows[:, :-1], rows[:, 1:]
        counts["windows"] += len(group)
        counts["bytes"] += sum(int(byte_lengths[targets[row, -n:]].sum()) for row, (_, _, n) in enumerate(group))
        return torch.from_numpy(inputs), torch.from_numpy(targets), [n for _, _, n in group]

    def batches():
        # Full windows go in batches of batch_size; only the last window can be shorter, and it goes alone.
        group = []
        for window in lm_windows(n_tokens, block_size, stride):
            if window[1] - window[0] < block_size:
                if group:
                    yield batch(group)
                group = []
                yield batch([window])
                continue
            group.append(window)
            if len(group) == batch_size:
                yield batch(group)
                group = []
        if group:
            yield batch(group)

    n_targets = n_tokens - 1
    start = time.perf_counter()
    total_nats, scored = summed_loss(model, batches(), dtype, progress=progress and (lambda n: progress(n, n_targets)))
    seconds = time.perf_counter() - start

    n_bytes = counts["bytes"]  # of the scored targets, tokens[1:n_tokens], each scored once
    loss = total_nats / scored
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": total_nats / math.log(2) / n_bytes if n_bytes else None,
        "tokens": scored,
        "bytes": n_bytes,
        "windows": counts["windows"],
        "seconds": seconds,
        "tokens_per_second": scored / seconds,
    }


def read_tokens(path: Path, quiet: bool = False) -> tuple[TokenSequence, str]:
    """(all the tokens of TEXT, its digest): its token files (a prepared or foreign token folder, or the token cache
    of a text, tokenized the first time with a progress bar), memory-mapped and read as one sequence."""
    progress = PrepareProgress(enabled=not quiet)
    try:
        source = open_data(path, progress)
    finally:
        progress.close()
    return TokenSequence(source.all_shards), source.digest


def validation_split(ckpt: Path, quiet: bool = False, max_tokens: int | None = None) -> tuple[TokenSequence, dict]:
    """The validation tokens `gptkit train` held out (at most max_tokens + 1 of them), rebuilt from the data recorded
    in the checkpoint's metadata: the tail of text or prepared data, or the val files of nanoGPT / build-nanogpt. They
    stay in their memory-mapped shards (a TokenSequence): nothing is read here."""
    data = read_metadata(ckpt).get("data")
    if not isinstance(data, dict) or "path" not in data:
        raise GptkitError(
            f"{ckpt} records no training data (it was not made by gptkit train), so there is no validation split: "
            "give a TEXT file or folder to evaluate on"
        )
    path, val_fraction, split = Path(data["path"]), data.get("val_fraction"), data.get("split", "tail")
    if split not in ("tail", "files") or split == "tail" and val_fraction is None:
        raise GptkitError(
            f"{ckpt}: the validation split it records is not one gptkit knows: give a TEXT to evaluate on"
        )
    if not path.exists():
        raise GptkitError(
            f"the training data {path} recorded in {ckpt} no longer exists: give a TEXT file or folder to evaluate on"
        )

    def check(sha256: str):
        if data.get("sha256") and sha256 != data["sha256"]:
            raise GptkitError(
                f"the training data {path} has changed since {ckpt} was trained (sha256 {sha256[:12]}..., recorded "
                f"{data['sha256'][:12]}...), so its validation split cannot be rebuilt: give a TEXT file or folder"
            )

    if data.get("format", "text") == "text":  # before tokenizing changed text into the cache
        check(data_hash(input_files(path)))
    progress = PrepareProgress(enabled=not quiet)
    try:
        source = open_data(path, progress)
    finally:
        progress.close()
    check(source.digest)
    _, val_shards = source.split(float(val_fraction or 0.0))
    val = TokenSequence(val_shards)
    if max_tokens is not None:
        val = val.head(max_tokens + 1)
    if len(val) < 2:
        raise GptkitError(
            f"{ckpt} was trained with no validation split (val_fraction {val_fraction}): give a TEXT to evaluate on"
        )
    return val, {"validation_split_of": str(path), "sha256": source.digest, "val_fraction": val_fraction}


# --- HellaSwag -------------------------------------------------------------------------------------------------------


def read_hellaswag(path: Path) -> list[dict]:
    """The examples of a HellaSwag jsonl file, each checked: ctx (text), endings (4 texts), label (0-3)."""
    path = Path(path)
    check_hellaswag_file(path)
    examples = []
    # split on "\n" only: JSON strings may hold other line separators (U+2028) that str.splitlines() would cut at
    for line_number, line in enumerate(read_utf8(path).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path} line {line_number}"
        try:
            example = json.loads(line)
        except json.JSONDecodeError as e:
            raise GptkitError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(example, dict):
            raise GptkitError(f"{where}: expected a JSON object with ctx, endings and label")
        missing = [key for key in ("ctx", "endings", "label") if key not in example]
        if missing:
            hint = " (HellaSwag's test set has no labels: use hellaswag_val.jsonl)" if missing == ["label"] else ""
            raise GptkitError(f"{where}: missing {', '.join(missing)}{hint}")
        ctx, endings, label = example["ctx"], example["endings"], example["label"]
        if not isinstance(ctx, str) or not ctx:
            raise GptkitError(f"{where}: 'ctx' must be a non-empty string")
        if not isinstance(endings, list) or len(endings) != 4 or not all(isinstance(e, str) for e in endings):
            got = f"{len(endings)} items" if isinstance(endings, list) else type(endings).__name__
            raise GptkitError(f"{where}: 'endings' must be a list of 4 strings, got {got}")
        if isinstance(label, str) and label.isdigit():  # the Hugging Face copy stores labels as strings
            label = int(label)
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < 4:
            raise GptkitError(f"{where}: 'label' must be 0, 1, 2 or 3, got {example['label']!r}")
        examples.append({"ctx": ctx, "endings": endings, "label": label, "line": line_number})
    if not examples:
        raise GptkitError(f"{path} holds no examples")
    return examples


def hellaswag_rows(example: dict, block_size: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(tokens, mask, cropped): the context followed by each ending, 4 rows right-padded to the longest, and a mask
    of the ending tokens (build-nanogpt's render_example); rows too long lose context tokens from the left."""
    enc = get_tokenizer()
    context = enc.encode_ordinary(example["ctx"])
    rows, masks, cropped = [], [], False
    for ending in example["endings"]:
        ending_tokens = enc.encode_ordinary(" " + ending)
        if len(ending_tokens) >= block_size:
            raise GptkitError(
                f"HellaSwag line {example.get('line', '?')}: an ending of {len(ending_tokens)} tokens does not fit the "
                f"model's context of {block_size} after at least one context token"
            )
        row, mask = context + ending_tokens, [0] * len(context) + [1] * len(ending_tokens)
        if len(row) > block_size:
            row, mask, cropped = row[-block_size:], mask[-block_size:], True
        rows.append(row)
        masks.append(mask)
    length = max(len(row) for row in rows)
    tokens = torch.tensor([row + [0] * (length - len(row)) for row in rows])
    mask = torch.tensor([m + [0] * (length - len(m)) for m in masks])
    return tokens, mask, cropped


@torch.no_grad()
def score_endings(model: GPT, tokens: torch.Tensor, mask: torch.Tensor, dtype=torch.float32):
    """(total loss, mean loss) over the masked tokens of each row, in one forward pass."""
    device = model.lm_head.weight.device
    tokens, mask = tokens.to(device), mask.to(device)
    with autocast(device, dtype):
        logits, _ = model(tokens)
    losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), tokens[:, 1:], reduction="none")
    target_mask = mask[:, 1:]  # a token is scored as the target of the position before it
    total = (losses * target_mask).sum(dim=1)
    return total, total / target_mask.sum(dim=1)


def evaluate_hellaswag(model: GPT, examples: list[dict] | Path, dtype=torch.float32, progress=None) -> dict:
    """acc (least total loss), acc_norm (least mean loss) and the count n of HellaSwag examples (or a jsonl file)."""
    if not isinstance(examples, list):
        examples = read_hellaswag(examples)
    correct = correct_norm = cropped = 0
    start = time.perf_counter()
    for i, example in enumerate(examples, 1):
        tokens, mask, was_cropped = hellaswag_rows(example, model.config.block_size)
        total, mean = score_endings(model, tokens, mask, dtype)
        correct += int(total.argmin().item() == example["label"])
        correct_norm += int(mean.argmin().item() == example["label"])
        cropped += was_cropped
        if progress:
            progress(i, len(examples))
    seconds = time.perf_counter() - start
    n = len(examples)
    return {
        "acc": correct / n,
        "acc_norm": correct_norm / n,
        "n": n,
        "correct": correct,
        "correct_norm": correct_norm,
        "cropped": cropped,
        "seconds": seconds,
        "examples_per_second": n / seconds,
    }


# --- the command -----------------------------------------------------------------------------------------------------


def append_record(folder: Path, record: dict):
    """Add one line to the checkpoint folder's evals.jsonl, under the lock of that file (runlock.EVALS_LOCK_FILE,
    which other evals and a run's --overwrite take; a training run holds the folder's own lock, and goes on), on a
    line of its own even after a line that a crash cut short; a read-only folder only earns a warning."""
    path = folder / EVALS_FILE
    lock = folder_lock(folder, "gptkit eval", EVAL_FOLDER_IN_USE, EVAL_LOCK_WAIT_S, EVALS_LOCK_FILE)
    try:
        with lock, open(path, "a+b") as f:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":  # the last line was cut short by a crash: start a new one
                    f.write(b"\n")
            f.write((json.dumps(record) + "\n").encode())
    except OSError as e:
        print(f"warning: could not append the results to {path}: {e.strerror or e}", file=sys.stderr)
    except GptkitError as e:
        print(f"warning: could not append the results to {path}: {e}", file=sys.stderr)


def render(record: dict):
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
    if opts.quantize == "int8":
        quantize_int8(model)
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
        render(record)
    append_record(folder, record)
    return record
