"""lm-evaluation-harness speed: gptkit's model adapter (gptkit/evaluation/harness.py) against the harness's own `hf`
model on the same checkpoint folder (a preset's shape, GPT-2 124M's by default, with bench.common.random_gpt2's kind
of random weights) and the same multiple-choice task: a synthetic HellaSwag (a context of about 60 tokens, four
endings of about 20; the words drawn from data/input.txt), zero-shot and with 3 solved examples before each
question; offline. Each model is built once and evaluates each task once untimed, then repeats times, the models
alternating; of each model's runs, the one whose loglikelihood calls (the model's part of it, the harness's
bookkeeping aside) took least is reported, with that whole evaluation's time. The adapter runs twice: as it chooses
(on the CPU a question's choices share one pass over their context) and with each choice a row of its own, as the
hf model runs them.

    uv run python -m bench.harness_bench                     # GPT-2 124M's shape, 24 questions, float32
    uv run python -m bench.harness_bench --preset mini --questions 8   # a quick look
    uv run python -m bench.harness_bench --questions 100 --dtype bfloat16 --repeats 3
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cpu_name  # noqa: E402

TEXT = Path(__file__).resolve().parent.parent / "data" / "input.txt"


def random_model(preset: str):
    """A model of preset's shape with bench.common.random_gpt2's weights: peaked logits, text that follows the
    prompt."""
    from gptkit.model.config import PRESETS
    from gptkit.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(PRESETS[preset]).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0, 1.0 if name == "transformer.wte.weight" else 2 / param.size(-1) ** 0.5)
    return model


def write_task(folder: Path, questions: int) -> list[str]:
    """Two tasks on one synthetic HellaSwag-like jsonl (and a train split for the solved examples); their names."""
    words = TEXT.read_text(encoding="utf-8").split()
    rng = random.Random(0)

    def passage(n: int) -> str:
        start = rng.randrange(len(words) - n)
        return " ".join(words[start : start + n])

    for split, count in (("test", questions), ("train", 8)):
        rows = [{"ctx": passage(45), "endings": [passage(15) for _ in range(4)], "label": rng.randrange(4)}]
        rows += [{"ctx": passage(45), "endings": [passage(15) for _ in range(4)], "label": rng.randrange(4)}
                 for _ in range(count - 1)]  # fmt: skip
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    names = []
    for shots in (0, 3):
        name = f"bench_mc_{shots}shot"
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'test.jsonl'}\n"
            f"    train: {folder / 'train.jsonl'}\n  cache_dir: {folder / 'cache'}\ntest_split: test\n"
            f"training_split: train\nfewshot_split: train\nnum_fewshot: {shots}\noutput_type: multiple_choice\n"
            'doc_to_text: "{{ctx}}"\ndoc_to_target: "{{label}}"\ndoc_to_choice: "{{endings}}"\n'
            "target_delimiter: ' '\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n"
        )
        names.append(name)
    return names


def timing_loglikelihood(lm):
    """Make lm's loglikelihood add the seconds it runs to lm.scoring_seconds: the model's part of an evaluation."""
    scoring = lm.loglikelihood

    def loglikelihood(requests, *args, **kwargs):
        start = time.perf_counter()
        answers = scoring(requests, *args, **kwargs)
        lm.scoring_seconds += time.perf_counter() - start
        return answers

    lm.loglikelihood = loglikelihood
    return lm


def evaluate(lm, task: str, manager) -> tuple[float, float, float]:
    """(seconds of the harness's whole evaluation of task with lm, seconds of it in lm's loglikelihood, acc)."""
    import lm_eval

    lm.scoring_seconds = 0.0
    start = time.perf_counter()
    results = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager, bootstrap_iters=0)
    return time.perf_counter() - start, lm.scoring_seconds, results["results"][task]["acc,none"]


def bench(preset: str, questions: int, dtype: str, repeats: int, batch_size: int) -> list[dict]:
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from gptkit.checkpoint.folder import save_checkpoint
    from gptkit.evaluation.harness import GptkitLM

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = save_checkpoint(random_model(preset), folder / f"{preset}-random")
        (folder / "tasks").mkdir()
        tasks = write_task(folder / "tasks", questions)
        manager = TaskManager(include_path=str(folder / "tasks"), include_defaults=False)
        lms = {
            "gptkit": GptkitLM(ckpt, "cpu", dtype, batch_size=batch_size, progress=False),
            "gptkit, a row a choice": GptkitLM(
                ckpt, "cpu", dtype, batch_size=batch_size, share_context=False, progress=False
            ),
            "hf": HFLM(pretrained=str(ckpt), dtype=dtype, device="cpu", batch_size=batch_size),
        }
        lms = {name: timing_loglikelihood(lm) for name, lm in lms.items()}
        for task in tasks:
            times, accs = {name: [] for name in lms}, {}
            for name, lm in lms.items():
                accs[name] = evaluate(lm, task, manager)[2]  # untimed: the dataset cache, the first allocations
            for _ in range(repeats):
                for name, lm in lms.items():
                    times[name].append(evaluate(lm, task, manager)[:2])
            for name, runs in times.items():
                total, scoring = min(runs, key=lambda run: run[1])  # the least disturbed run
                rows.append({"task": task, "model": name, "seconds": total, "scoring_seconds": scoring,
                             "acc": accs[name], "dtype": dtype, "threads": torch.get_num_threads()})  # fmt: skip
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gpt2", help="the model's shape: a gptkit preset (gpt2, mini, ...)")
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch's threads (default: torch's, one a core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = bench(args.preset, args.questions, args.dtype, args.repeats, args.batch_size)
    print(f"\n{cpu_name()}, {torch.get_num_threads()} threads; {args.preset}'s shape, {args.dtype}, batch size "
          f"{args.batch_size}, {args.questions} questions x 4 endings")  # fmt: skip
    print("| task | model | scoring s | questions/s scored | vs hf | whole evaluation s | acc |")
    print("|---|---|---:|---:|---:|---:|---:|")
    hf = {r["task"]: r["scoring_seconds"] for r in rows if r["model"] == "hf"}
    for r in rows:
        print(
            f"| {r['task']} | {r['model']} | {r['scoring_seconds']:.2f} | {args.questions / r['scoring_seconds']:.2f} "
            f"| {hf[r['task']] / r['scoring_seconds']:.2f}x | {r['seconds']:.2f} | {r['acc']:.3f} |"
        )


if __name__ == "__main__":
    main()
