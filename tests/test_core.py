"""CORE (gptkit/evaluation/core.py) on synthetic eval bundles written here: three tasks, one of each kind."""

import csv
import json

import pytest
import torch
from conftest import lively

from gptkit.checkpoint.folder import save_checkpoint
from gptkit.data.tokenizer import EOT_TOKEN, encode
from gptkit.errors import GptkitError
from gptkit.evaluation.core import EVAL_BUNDLE_URL, core_score, fewshot_examples, prompts, read_bundle
from gptkit.model.gpt import GPT


def write_bundle(folder, tasks: list[dict]):
    """DCLM's eval bundle layout: core.yaml, eval_meta_data.csv and eval_data/<uri>.jsonl. tasks: label, kind,
    shots, delimiter, baseline, examples."""
    (folder / "eval_data" / "sub").mkdir(parents=True)
    lines = ["icl_tasks:"]
    for task in tasks:
        uri = f"sub/{task['label']}.jsonl"
        lines += [
            f"- label: {task['label']}",
            f"  dataset_uri: {uri}",
            f"  num_fewshot: [{task['shots']}, 5]",
            f"  icl_task_type: {task['kind']}",
            f"  continuation_delimiter: {json.dumps(task['delimiter'])}",
        ]
        (folder / "eval_data" / uri).write_text("".join(json.dumps(e) + "\n" for e in task["examples"]))
    (folder / "core.yaml").write_text("\n".join(lines) + "\n")
    with open(folder / "eval_meta_data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Eval Task", "Task Category", "Random baseline"])
        writer.writerows([t["label"], "synthetic", t["baseline"]] for t in tasks)
    return folder


def by_hand_tasks() -> list[dict]:
    colours = ["red", "blue", "green"]
    mc = [{"query": f"Pick {i}:", "choices": colours, "gold": gold} for i, gold in enumerate([0, 1, 0, 2])]
    schema = [
        {"context_options": ["The cat", "The dog"], "continuation": "sat down.", "gold": gold} for gold in [0, 0, 1]
    ]
    lm = [{"context": f"{word} it ", "continuation": end} for word, end in [("Say", "!"), ("Ask", "?"), ("Shout", "!")]]
    return [
        {"label": "mc", "kind": "multiple_choice", "shots": 1, "delimiter": " ", "baseline": 25, "examples": mc},
        {"label": "schema", "kind": "schema", "shots": 0, "delimiter": " ", "baseline": 50, "examples": schema},
        {"label": "lm", "kind": "language_modeling", "shots": 2, "delimiter": "", "baseline": 0, "examples": lm},
    ]


def test_core_of_a_model_without_preferences_by_hand(tmp_path, tiny_config):
    """A model whose every next-token distribution is uniform (zero embeddings, tied to the output head) gets every
    multiple-choice and schema question's options tied, so it picks the first option; greedy decoding gives token
    0, '!', so it completes exactly the texts that end in '!'. mc: 2 of 4 right (golds 0, 1, 0, 2), centred against
    25 %: (0.5 - 0.25) / 0.75 = 1/3; schema: 2 of 3 (golds 0, 0, 1), against 50 %: (2/3 - 1/2) / (1/2) = 1/3;
    lm: 2 of 3, against 0: 2/3. CORE: (1/3 + 1/3 + 2/3) / 3 = 4/9."""
    model = GPT(tiny_config).eval()
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
    ckpt = save_checkpoint(model, tmp_path / "uniform")
    bundle = write_bundle(tmp_path / "eval_bundle", by_hand_tasks())
    result = core_score(ckpt, bundle, device="cpu", dtype="float32", progress=False)
    tasks = result["tasks"]
    assert [tasks[t]["accuracy"] for t in ("mc", "schema", "lm")] == pytest.approx([1 / 2, 2 / 3, 2 / 3])
    assert [tasks[t]["centered"] for t in ("mc", "schema", "lm")] == pytest.approx([1 / 3, 1 / 3, 2 / 3])
    assert result["core"] == pytest.approx(4 / 9)
    assert [tasks[t]["num_fewshot"] for t in ("mc", "schema", "lm")] == [1, 0, 2]
    assert tasks["mc"] == {**tasks["mc"], "random_baseline": 25, "type": "multiple_choice", "examples": 4}
    limited = core_score(ckpt, bundle, limit=1, device="cpu", dtype="float32", progress=False)
    assert all(task["examples"] == 1 for task in limited["tasks"].values())


def scored(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """(mean loss of continuation after context, whether greedy decoding gives it): one plain forward pass."""
    tokens = torch.tensor([context + continuation])
    with torch.no_grad():
        logits = model(tokens[:, :-1])[0][0, len(context) - 1 :]
    losses = torch.nn.functional.cross_entropy(logits, tokens[0, len(context) :], reduction="none")
    return losses.mean().item(), logits.argmax(-1).tolist() == continuation


@pytest.mark.slow  # every task scored twice, by hand and by core_score
def test_core_scores_as_a_plain_forward_pass_does(tmp_path, tiny_config):
    """0-shot questions whose prompts split where the eye sees it (choices of different first words, contexts of
    different last words), scored here one plain forward pass a prompt: the same accuracies, and the same CORE."""
    model = lively(tiny_config)
    ckpt = save_checkpoint(model, tmp_path / "lively")
    words = ["apple pie", "river", "quiet old stone", "music", "seven", "green hills far away"]
    mc = [{"query": f"Item {i}. Pick:", "choices": words[i % 3 :][:3], "gold": i % 3} for i in range(6)]
    schema = [{"context_options": ["Tom ran", "Ann slept", "He sang"], "continuation": f"at {t}.", "gold": g}
              for t, g in [("noon", 0), ("dawn", 1), ("home today", 2), ("night", 1)]]  # fmt: skip
    lm = [{"context": c, "continuation": w} for c in ["Stop the", "I am", "We are"] for w in ["car", "the one"]]
    tasks = [
        {"label": "mc", "kind": "multiple_choice", "shots": 0, "delimiter": " ", "baseline": 30, "examples": mc},
        {"label": "schema", "kind": "schema", "shots": 0, "delimiter": " ", "baseline": 33, "examples": schema},
        {"label": "lm", "kind": "language_modeling", "shots": 0, "delimiter": " ", "baseline": 0, "examples": lm},
    ]
    result = core_score(ckpt, write_bundle(tmp_path / "bundle", tasks), device="cpu", dtype="float32", progress=False)

    def accuracy(kind, examples) -> float:
        right = 0
        for e in examples:
            if kind == "language_modeling":
                right += scored(model, [EOT_TOKEN, *encode(e["context"])], encode(" " + e["continuation"]))[1]
                continue
            if kind == "multiple_choice":
                options = [([EOT_TOKEN, *encode(e["query"])], encode(" " + c)) for c in e["choices"]]
            else:
                options = [([EOT_TOKEN, *encode(c)], encode(" " + e["continuation"])) for c in e["context_options"]]
            losses = [scored(model, context, continuation)[0] for context, continuation in options]
            right += losses.index(min(losses)) == e["gold"]
        return right / len(examples)

    centred = []
    for task in tasks:
        expected = accuracy(task["kind"], task["examples"])
        assert result["tasks"][task["label"]]["accuracy"] == pytest.approx(expected)
        centred.append((expected - 0.01 * task["baseline"]) / (1 - 0.01 * task["baseline"]))
    assert result["core"] == pytest.approx(sum(centred) / 3)


def test_prompts_are_nanochats():
    shots = [{"query": "Q1", "choices": ["a", "b"], "gold": 1}, {"query": "Q2", "choices": ["c"], "gold": 0}]
    item = {"query": "Q3", "choices": ["x", "y"], "gold": 0}
    assert prompts("multiple_choice", item, shots, ": ") == ["Q1: b\n\nQ2: c\n\nQ3: x", "Q1: b\n\nQ2: c\n\nQ3: y"]
    schema = {"context_options": ["A", "B"], "continuation": "end", "gold": 1}
    assert prompts("schema", schema, [schema], " ") == ["B end\n\nA end", "B end\n\nB end"]
    lm = {"context": " Say ", "continuation": "it"}
    assert prompts("language_modeling", lm, [lm], " ") == ["Say it\n\nSay", "Say it\n\nSay it"]
    examples = [{"n": i} for i in range(10)]
    drawn = fewshot_examples(examples, 3, 4)
    assert len(drawn) == 4 and examples[3] not in drawn and drawn == fewshot_examples(examples, 3, 4)
    assert len(fewshot_examples(examples[:2], 0, 5)) == 1


def test_a_bundle_that_cannot_be_read_is_one_line(tmp_path):
    with pytest.raises(GptkitError, match=f"no core.yaml.*{EVAL_BUNDLE_URL}"):
        read_bundle(tmp_path)
    tasks = by_hand_tasks()
    bundle = write_bundle(tmp_path / "b1", tasks)
    (bundle / "eval_meta_data.csv").write_text("Eval Task,Random baseline\nmc,25\nschema,50\n")
    with pytest.raises(GptkitError, match="no random baseline for the task lm"):
        read_bundle(bundle)
    tasks[0]["examples"][2]["gold"] = 3
    with pytest.raises(GptkitError, match=r"mc.jsonl line 3: 'gold' must be the index"):
        read_bundle(write_bundle(tmp_path / "b2", tasks))
    tasks[0]["kind"] = "generation_task_with_answers"
    with pytest.raises(GptkitError, match="which CORE does not score"):
        read_bundle(write_bundle(tmp_path / "b3", tasks))
    bundle = write_bundle(tmp_path / "b4", by_hand_tasks())
    (bundle / "eval_data" / "sub" / "lm.jsonl").write_text('{"context": "a"}\n')
    with pytest.raises(GptkitError, match="lm.jsonl line 1: a language_modeling example needs context, continuation"):
        read_bundle(bundle)
    with pytest.raises(GptkitError, match="the limit must be at least 1"):
        core_score(tmp_path / "ckpt", bundle, limit=0)


def test_gptkit_eval_core_prints_the_score(tmp_path, tiny_config):
    """`gptkit eval CKPT --core BUNDLE --json`: the same score as core_score, by hand 4/9 (see above)."""
    import subprocess
    import sys

    model = GPT(tiny_config).eval()
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
    ckpt = save_checkpoint(model, tmp_path / "uniform")
    bundle = write_bundle(tmp_path / "eval_bundle", by_hand_tasks())
    ran = subprocess.run(
        [sys.executable, "-m", "gptkit", "eval", str(ckpt), "--core", str(bundle), "--device", "cpu", "--dtype",
         "float32", "--json"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["core"]["core"] == pytest.approx(4 / 9)
