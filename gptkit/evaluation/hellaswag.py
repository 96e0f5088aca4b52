"""HellaSwag accuracy of a model, for `gptkit eval --hellaswag` and training's --hellaswag.

HellaSwag (Zellers et al., 2019) is sentence completion: a context and four endings, one right. Each ending is
scored by the model's loss on the ending's tokens given the context, the four rows in one forward pass (as
build-nanogpt does): `acc` picks the ending of least total loss, `acc_norm` of least mean loss per token. The
validation set (10,042 examples) is hellaswag_val.jsonl from the authors' repository:
    https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl
A context too long for the model is cropped from the left (the ending is always kept whole); `cropped` counts them.
"""

import json
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from gptkit.data.loader import read_utf8
from gptkit.data.tokenizer import get_tokenizer
from gptkit.errors import GptkitError
from gptkit.machine.runtime import autocast
from gptkit.model.gpt import GPT
from gptkit.options import check_hellaswag_file


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
    device = model.transformer.wte.weight.device
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
