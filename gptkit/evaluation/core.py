"""CORE, the score DCLM (Li et al., 2024) defined and nanochat reports for base models: DCLM's 22 in-context tasks,
each accuracy centred against its random baseline, (acc - 0.01 * baseline) / (1 - 0.01 * baseline), so that chance is
0 and perfect 1, and the mean of the centred accuracies. GPT-2 1.5B scores about 0.2565.

The tasks come from DCLM's eval bundle folder, which the user downloads (EVAL_BUNDLE_URL) and unzips:
    core.yaml           icl_tasks: label, dataset_uri, num_fewshot (a list: the first is used), icl_task_type,
                        continuation_delimiter (default " ")
    eval_meta_data.csv  each task's "Random baseline" (in percent) by its "Eval Task" label
    eval_data/...       each task's examples, a JSON object a line, at its dataset_uri
Each example is rendered and scored as nanochat's core_eval does. The examples are shuffled with a fixed seed (so
that a limit takes the same ones every run); each gets num_fewshot others of them, drawn with a seed of its own
position, as solved examples before it, each followed by a blank line. Every prompt starts with <|endoftext|>.
- multiple_choice (query, choices, gold): the query, the delimiter and each choice; the choice whose tokens after
  those the choices share have the least mean loss is the answer.
- schema (context_options, continuation, gold): each context, the delimiter and the continuation; the context under
  which the tokens the prompts share at their end have the least mean loss is the answer.
- language_modeling (context, continuation): right when greedy decoding gives the continuation's tokens exactly.
A prompt longer than the model's context loses tokens from the left.
"""

import csv
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from gptkit.errors import GptkitError
from gptkit.options.shared import QUANTIZATIONS

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
TASK_FIELDS = {
    "multiple_choice": ("query", "choices", "gold"),
    "schema": ("context_options", "continuation", "gold"),
    "language_modeling": ("context", "continuation"),
}
SHUFFLE_SEED = 1337  # the order the examples are taken in (nanochat's)
FEWSHOT_SEED = 1234  # plus an example's position: the seed its few-shot examples are drawn with (nanochat's)


@dataclass
class CoreTask:
    label: str
    kind: str  # a key of TASK_FIELDS
    num_fewshot: int
    delimiter: str
    baseline: float  # the accuracy of chance, in percent
    examples: list[dict]


def read_yaml_tasks(bundle: Path) -> list[dict]:
    import yaml

    path = bundle / "core.yaml"
    if not path.is_file():
        raise GptkitError(
            f"{bundle} is not DCLM's eval bundle (it has no core.yaml): download {EVAL_BUNDLE_URL}, unzip it and give "
            "its eval_bundle folder"
        )
    try:
        tasks = yaml.safe_load(path.read_text(encoding="utf-8")).get("icl_tasks")
    except (yaml.YAMLError, AttributeError, UnicodeDecodeError) as e:
        raise GptkitError(f"{path} is not a YAML mapping with icl_tasks ({e})") from None
    if not isinstance(tasks, list) or not tasks:
        raise GptkitError(f"{path} lists no icl_tasks")
    for task in tasks:
        missing = [k for k in ("label", "dataset_uri", "num_fewshot", "icl_task_type") if k not in task]
        if missing:
            raise GptkitError(f"{path}: the task {task.get('label', '?')} has no {', '.join(missing)}")
        if task["icl_task_type"] not in TASK_FIELDS:
            raise GptkitError(
                f"{path}: task {task['label']} is of type {task['icl_task_type']}, which CORE does not score "
                f"({', '.join(TASK_FIELDS)})"
            )
    return tasks


def read_baselines(bundle: Path) -> dict[str, float]:
    path = bundle / "eval_meta_data.csv"
    if not path.is_file():
        raise GptkitError(f"{bundle} has no eval_meta_data.csv, which holds each task's random baseline")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        return {row["Eval Task"]: float(row["Random baseline"]) for row in rows}
    except (KeyError, TypeError, ValueError):
        raise GptkitError(f"{path} needs the columns 'Eval Task' and 'Random baseline' (a number)") from None


def read_examples(path: Path, kind: str) -> list[dict]:
    if not path.is_file():
        raise GptkitError(f"the eval bundle's data file {path} is missing: unzip the bundle again")
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            example = json.loads(line)
        except json.JSONDecodeError as e:
            raise GptkitError(f"{path} line {number}: not valid JSON ({e.msg})") from None
        if not isinstance(example, dict) or any(field not in example for field in TASK_FIELDS[kind]):
            raise GptkitError(f"{path} line {number}: a {kind} example needs {', '.join(TASK_FIELDS[kind])}")
        options = example.get("choices", example.get("context_options"))
        if kind != "language_modeling" and not (
            isinstance(options, list) and isinstance(example["gold"], int) and 0 <= example["gold"] < len(options)
        ):
            raise GptkitError(f"{path} line {number}: 'gold' must be the index of one of the example's options")
        examples.append(example)
    if not examples:
        raise GptkitError(f"{path} holds no examples")
    return examples


def read_bundle(bundle: str | Path, limit: int | None = None) -> list[CoreTask]:
    """The tasks of DCLM's eval bundle folder, each with its examples in CORE's order (at most limit of them)."""
    bundle = Path(bundle)
    listed = read_yaml_tasks(bundle)
    baselines = read_baselines(bundle)
    tasks = []
    for task in listed:
        label, kind = task["label"], task["icl_task_type"]
        if label not in baselines:
            raise GptkitError(f"{bundle / 'eval_meta_data.csv'} has no random baseline for the task {label}")
        examples = read_examples(bundle / "eval_data" / task["dataset_uri"], kind)
        random.Random(SHUFFLE_SEED).shuffle(examples)
        shots = task["num_fewshot"]
        shots = int(shots[0] if isinstance(shots, list) else shots)
        delimiter = task.get("continuation_delimiter", " ")
        tasks.append(CoreTask(label, kind, shots, delimiter, baselines[label], examples[:limit]))
    return tasks


def fewshot_examples(examples: list[dict], position: int, count: int) -> list[dict]:
    """count examples other than the one at position, drawn with a seed of its position (fewer if there are not)."""
    others = [i for i in range(len(examples)) if i != position]
    drawn = random.Random(FEWSHOT_SEED + position).sample(others, min(count, len(others)))
    return [examples[i] for i in drawn]


def prompts(kind: str, example: dict, shots: list[dict], delimiter: str) -> list[str]:
    """The texts of an example: one a choice (multiple_choice), one a context (schema), or (language_modeling) the
    prompt without its continuation, then with it."""
    if kind == "multiple_choice":
        solved = "".join(f"{s['query']}{delimiter}{s['choices'][s['gold']]}\n\n" for s in shots)
        return [f"{solved}{example['query']}{delimiter}{choice}" for choice in example["choices"]]
    if kind == "schema":
        solved = "".join(f"{s['context_options'][s['gold']]}{delimiter}{s['continuation']}\n\n" for s in shots)
        return [f"{solved}{option}{delimiter}{example['continuation']}" for option in example["context_options"]]
    solved = "".join(f"{str(s['context']).strip()}{delimiter}{s['continuation']}\n\n" for s in shots)
    without = f"{solved}{str(example['context']).strip()}{delimiter}"
    return [without.strip(), without + str(example["continuation"])]


def common_length(sequences: list[list[int]], from_end: bool = False) -> int:
    """How many tokens every sequence shares at its start (or, from_end, at its end)."""
    if from_end:
        sequences = [s[::-1] for s in sequences]
    length = 0
    for tokens in zip(*sequences):
        if any(t != tokens[0] for t in tokens):
            break
        length += 1
    return length


def example_requests(kind: str, texts: list[str], block_size: int) -> list[tuple[list[int], list[int]]]:
    """(context tokens, scored tokens) of an example's texts (see the module's docstring), each cut from the left
    to the model's context."""
    from gptkit.data.tokenizer import EOT_TOKEN, encode

    sequences = [[EOT_TOKEN, *encode(text)] for text in texts]
    if kind == "language_modeling":  # the prompt with its continuation, scored past the prompt without
        sequences, splits = sequences[1:], [common_length(sequences)]
    elif kind == "multiple_choice":
        splits = [common_length(sequences)] * len(sequences)
    else:
        shared_end = min(common_length(sequences, from_end=True), min(len(s) for s in sequences) - 1)
        splits = [len(s) - shared_end for s in sequences]
    requests = []
    for tokens, split in zip(sequences, splits):
        cut = max(0, min(len(tokens) - block_size, split - 1))
        requests.append((tokens[cut:split], tokens[split:]))
    return requests


def example_correct(kind: str, example: dict, requests: list, scores: list[tuple[float, bool]]) -> bool:
    if kind == "language_modeling":
        return scores[0][1]
    # the least mean loss over the scored tokens; a choice with none (all shared with the others) is never picked
    losses = [-logprob / len(scored) if scored else math.inf for (_, scored), (logprob, _) in zip(requests, scores)]
    return losses.index(min(losses)) == example["gold"]


def task_accuracy(model, task: CoreTask, batch_size: int, progress=None) -> float:
    """The share of task's examples model gets right, every request of the task scored in one call."""
    from gptkit.evaluation.scoring import score_requests

    by_example, scored = [], []
    for position, example in enumerate(task.examples):
        shots = fewshot_examples(task.examples, position, task.num_fewshot)
        texts = prompts(task.kind, example, shots, task.delimiter)
        requests = example_requests(task.kind, texts, model.config.block_size)
        by_example.append(requests)
        scored += [request for request in requests if request[1]]
    scores = iter(score_requests(model, scored, batch_size, None, progress))
    correct = 0
    for example, requests in zip(task.examples, by_example):
        example_scores = [next(scores) if request[1] else (-math.inf, False) for request in requests]
        correct += example_correct(task.kind, example, requests, example_scores)
    return correct / len(task.examples)


def centred(accuracy: float, baseline: float) -> float:
    """accuracy on a scale where chance (baseline, in percent) is 0 and perfect is 1."""
    return (accuracy - 0.01 * baseline) / (1 - 0.01 * baseline)


def core_score(
    checkpoint: str | Path,
    bundle_dir: str | Path,
    limit: int | None = None,
    batch_size: int = 16,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str | None = None,
    progress: bool = True,
) -> dict:
    """CORE of checkpoint on DCLM's eval bundle folder (see the module's docstring): {"tasks": {label: {"accuracy",
    "centered", "random_baseline", "num_fewshot", "type", "examples"}}, "core" (the mean of the centred accuracies),
    "bundle", "settings"}. limit: at most this many examples a task (the same ones every run), for a quick look."""
    from gptkit.inference.decode import load_for_decoding
    from gptkit.machine.runtime import pick_device, pick_dtype
    from gptkit.progress import count_bar, track

    if limit is not None and limit < 1:
        raise GptkitError(f"the limit must be at least 1 example a task, not {limit}")
    if batch_size < 1:
        raise GptkitError(f"the batch size must be at least 1, not {batch_size}")
    if quantize not in (None, *QUANTIZATIONS):
        raise GptkitError(f"quantize {quantize} is not supported: use {' or '.join(QUANTIZATIONS)}")
    tasks = read_bundle(bundle_dir, limit)  # checked before the model loads
    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    model = load_for_decoding(Path(checkpoint), device, dtype, quantize, compile=False)
    results = {}
    with count_bar(enabled=progress) as bar:
        for task in tasks:
            accuracy = task_accuracy(model, task, batch_size, track(bar, f"CORE {task.label}", "requests"))
            results[task.label] = {
                "accuracy": accuracy,
                "centered": centred(accuracy, task.baseline),
                "random_baseline": task.baseline,
                "num_fewshot": task.num_fewshot,
                "type": task.kind,
                "examples": len(task.examples),
            }
    settings = {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "quantize": quantize}
    return {
        "tasks": results,
        "core": sum(r["centered"] for r in results.values()) / len(results),
        "bundle": str(Path(bundle_dir).resolve()),
        "settings": {**settings, "batch_size": batch_size, "limit": limit},
    }
