"""lm-evaluation-harness through gptkit's model adapter (gptkit/evaluation/harness.py), offline: custom tasks (a YAML
and a small jsonl written here, found through the include path) score the same, example by example, through the
adapter as through the harness's own `hf` model on the same checkpoint folder; every kind of checkpoint runs them."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import lively

from gptkit.checkpoint.folder import load_checkpoint, save_adapters, save_checkpoint
from gptkit.errors import GptkitError
from gptkit.evaluation.scoring import score_requests
from gptkit.inference.decode import load_for_decoding
from gptkit.model.config import GPTConfig, LoraSettings
from gptkit.model.int8 import quantize_int8
from gptkit.model.lora import add_lora

lm_eval = pytest.importorskip("lm_eval")
from gptkit.evaluation.harness import run_tasks

QUESTIONS = [
    ("The cat sat on the", ["mat", "moon", "idea of a small green house"], 0),
    ("Water is", ["wet", "dry and dusty", "a kind of bird"], 0),
    ("Two plus two is", ["four", "five", "a banana"], 2),
    ("The sky is", ["blue", "green", "made of cheese"], 1),
    # longer than the model's context of 64 tokens: both models cut it from the left
    (" ".join(["Once upon a time there was a long story"] * 8) + " and it ended", ["well", "badly"], 1),
]
TEXTS = ["To be, or not to be, that is the question. " * 6, "All the world's a stage.", "Brevity is the soul of wit."]
PROMPTS = [("Q: What is red?\nA:", "rose"), ("Q: Who sings?\nA:", "birds"), ("Once upon a", "time")]
MC_TASK, ROLLING_TASK, GEN_TASK = "gptkit_test_mc", "gptkit_test_rolling", "gptkit_test_gen"
TASKS = [MC_TASK, ROLLING_TASK, GEN_TASK]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def task_yaml(name: str, data, cache, body: str) -> str:
    return (
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {cache}\n"
        f"test_split: test\n{body}"
    )


def write_tasks(folder):
    """Three tasks of the harness's three request types, their data in local jsonl files."""
    folder.mkdir()
    cache = folder / "datasets-cache"
    write_jsonl(folder / "mc.jsonl", [{"question": q, "choices": c, "label": a} for q, c, a in QUESTIONS])
    write_jsonl(folder / "texts.jsonl", [{"text": t} for t in TEXTS])
    write_jsonl(folder / "gen.jsonl", [{"question": q, "answer": a} for q, a in PROMPTS])
    mc = 'output_type: multiple_choice\ndoc_to_text: "{{question}}"\ndoc_to_target: "{{label}}"\n'
    mc += 'doc_to_choice: "{{choices}}"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n'
    rolling = 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
    rolling += "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n"
    gen = 'output_type: generate_until\ndoc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
    gen += 'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n'
    gen += "metric_list:\n  - metric: exact_match\n"
    for name, data, body in ((MC_TASK, "mc", mc), (ROLLING_TASK, "texts", rolling), (GEN_TASK, "gen", gen)):
        (folder / f"{name}.yaml").write_text(task_yaml(name, folder / f"{data}.jsonl", cache, body))
    return folder


@pytest.fixture(scope="module")
def offline():
    """Neither the datasets library nor the hub reach the network (both read their flags once, at import)."""
    import datasets.config
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as patch:
        for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
            patch.setenv(name, "1")
        patch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        patch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory, offline):
    root = tmp_path_factory.mktemp("harness")
    config = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=50257)
    return {"ckpt": save_checkpoint(lively(config), root / "ckpt"), "tasks": write_tasks(root / "tasks"), "root": root}


@pytest.fixture(scope="module")
def gptkit_results(setup):
    return run_tasks(setup["ckpt"], TASKS, include_path=setup["tasks"], device="cpu", dtype="float32", log_samples=True)


def responses(samples: list[dict]) -> list:
    return [sample["filtered_resps"] for sample in sorted(samples, key=lambda s: s["doc_id"])]


def assert_same_loglikelihoods(ours: list, theirs: list, rel: float = 0.0):
    """Within 1e-4, or rel of a long text's total (summed in float32 by the harness's hf model)."""
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        a, b = (x if isinstance(x, list | tuple) else [x] for x in (a, b))
        assert len(a) == len(b)
        for x, y in zip(a, b):
            x, y = (v[0] if isinstance(v, list | tuple) else v for v in (x, y))
            assert x == pytest.approx(y, abs=1e-4, rel=rel)


def test_the_adapter_scores_as_the_harness_hf_model_does(setup, gptkit_results):
    from lm_eval.tasks import TaskManager

    hf = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={setup['ckpt']},dtype=float32",
        tasks=TASKS,
        device="cpu",
        batch_size=1,
        task_manager=TaskManager(include_path=str(setup["tasks"]), include_defaults=False),
        log_samples=True,
    )
    ours = gptkit_results["samples"]
    mc_ours, mc_theirs = responses(ours[MC_TASK]), responses(hf["samples"][MC_TASK])
    assert_same_loglikelihoods(mc_ours, mc_theirs)
    assert [[greedy for _, greedy in r] for r in mc_ours] == [[greedy for _, greedy in r] for r in mc_theirs]
    assert_same_loglikelihoods(responses(ours[ROLLING_TASK]), responses(hf["samples"][ROLLING_TASK]), rel=1e-6)
    assert responses(ours[GEN_TASK]) == responses(hf["samples"][GEN_TASK])
    for task, metric in ((MC_TASK, "acc"), (MC_TASK, "acc_norm"), (GEN_TASK, "exact_match")):
        assert gptkit_results["tasks"][task]["metrics"][metric] == hf["results"][task][f"{metric},none"]
    ppl = gptkit_results["tasks"][ROLLING_TASK]["metrics"]["word_perplexity"]
    assert ppl == pytest.approx(hf["results"][ROLLING_TASK]["word_perplexity,none"], rel=1e-4)
    assert gptkit_results["tasks"][MC_TASK]["examples"] == len(QUESTIONS)
    assert gptkit_results["settings"]["dtype"] == "float32"


def test_sharing_the_context_scores_as_rows_do(setup):
    """A question's choices over one cached context, against each choice a row, against a whole forward pass; with
    contexts longer than the model's, cut from the left."""
    model = load_for_decoding(setup["ckpt"], torch.device("cpu"), torch.float32, None, compile=False)
    torch.manual_seed(1)
    contexts = [torch.randint(0, 50257, (n,)).tolist() for n in (5, 30, 63, 90)]
    requests = [(c, torch.randint(0, 50257, (k,)).tolist()) for c in contexts for k in (1, 3, 7)]
    shared = score_requests(model, requests, batch_size=2, share_context=True)
    rows = score_requests(model, requests, batch_size=5, share_context=False)
    for (context, continuation), (a, greedy_a), (b, greedy_b) in zip(requests, shared, rows):
        tokens = (context + continuation)[-65:]
        with torch.no_grad():
            logits = model(torch.tensor([tokens[:-1]]))[0][0, -len(continuation) :]
        whole = logits.log_softmax(-1).gather(-1, torch.tensor(continuation)[:, None]).sum().item()
        assert a == pytest.approx(whole, abs=1e-4) and b == pytest.approx(whole, abs=1e-4)
        assert greedy_a == greedy_b == (logits.argmax(-1).tolist() == continuation)


def mc_loglikelihoods(results) -> list[float]:
    return [ll for r in responses(results["samples"][MC_TASK]) for ll, _ in r]


def test_lora_nanogpt_and_int8_checkpoints_run_a_task(setup, gptkit_results):
    root, ckpt = setup["root"], setup["ckpt"]
    model = load_checkpoint(ckpt)
    settings = LoraSettings(rank=4, alpha=8.0, targets=("attn", "mlp"))
    add_lora(model, settings)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.2)
    save_adapters(model, root / "lora", settings, base=str(ckpt))
    merged = save_checkpoint(load_checkpoint(root / "lora"), root / "merged")
    base = load_checkpoint(ckpt)
    shape = {k: getattr(base.config, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")}
    saved = {"model": base.state_dict(), "model_args": dict(shape, bias=True, dropout=0.0), "iter_num": 7}
    torch.save(saved, root / "ckpt.pt")  # nanoGPT's train.py's file
    int8 = load_checkpoint(ckpt)
    quantize_int8(int8)
    save_checkpoint(int8, root / "int8")

    def run(path):
        return run_tasks(path, [MC_TASK], include_path=setup["tasks"], device="cpu", dtype="float32", log_samples=True)

    lora, from_merged = run(root / "lora"), run(merged)
    assert mc_loglikelihoods(lora) == pytest.approx(mc_loglikelihoods(from_merged), abs=1e-4)
    assert mc_loglikelihoods(lora) != pytest.approx(mc_loglikelihoods(gptkit_results), abs=1e-2)
    converted = save_checkpoint(load_checkpoint(root / "ckpt.pt"), root / "converted")  # nanoGPT's exact GELU
    assert mc_loglikelihoods(run(root / "ckpt.pt")) == pytest.approx(mc_loglikelihoods(run(converted)), abs=1e-4)
    quantized = run(root / "int8")
    assert quantized["settings"]["quantize"] is None and quantized["tasks"][MC_TASK]["examples"] == len(QUESTIONS)
    assert all(math.isfinite(ll) for ll in mc_loglikelihoods(quantized))
    on_the_fly = run_tasks(ckpt, [MC_TASK], include_path=setup["tasks"], device="cpu", dtype="float32", quantize="int8")
    assert on_the_fly["tasks"][MC_TASK]["metrics"]["acc"] == quantized["tasks"][MC_TASK]["metrics"]["acc"]


def test_a_chat_run_asks_in_its_own_template(setup):
    """With apply_chat_template, each question is a user message in the template the checkpoint's gptkit.json
    records, the reply begun with its generation text."""
    own = {"user": "Q: {content}\n", "assistant": "A: {content}<|endoftext|>"}
    chat = save_checkpoint(load_checkpoint(setup["ckpt"]), setup["root"] / "chat", {"chat_template": own})
    results = run_tasks(
        chat, [GEN_TASK], include_path=setup["tasks"], device="cpu", dtype="float32", apply_chat_template=True,
        log_samples=True,
    )  # fmt: skip
    asked = [sample["arguments"][0][0] for sample in sorted(results["samples"][GEN_TASK], key=lambda s: s["doc_id"])]
    assert asked == [f"Q: {question}\nA:" for question, _ in PROMPTS]
    assert results["settings"]["apply_chat_template"] is True


def test_what_cannot_run_is_one_line(setup, tmp_path):
    tasks = setup["tasks"]
    missing = tmp_path / "tasks"
    missing.mkdir()
    body = 'output_type: multiple_choice\ndoc_to_text: "{{q}}"\ndoc_to_target: 0\ndoc_to_choice: ["a", "b"]\n'
    (missing / "gone.yaml").write_text(task_yaml("gptkit_test_gone", tmp_path / "nowhere.jsonl", tmp_path, body))
    with pytest.raises(GptkitError, match="the data of gptkit_test_gone could not be read"):
        run_tasks(setup["ckpt"], ["gptkit_test_gone"], include_path=missing, device="cpu", dtype="float32")
    with pytest.raises(GptkitError, match="is not a folder of task files"):
        run_tasks(setup["ckpt"], [MC_TASK], include_path=tmp_path / "nothing", device="cpu")
    with pytest.raises(GptkitError, match="no tasks given"):
        run_tasks(setup["ckpt"], [], include_path=tasks)
    with pytest.raises(GptkitError, match="quantize int3 is not supported"):
        run_tasks(setup["ckpt"], [MC_TASK], include_path=tasks, device="cpu", quantize="int3")
    with pytest.raises(GptkitError, match="does not exist"):
        run_tasks(tmp_path / "no-checkpoint", [MC_TASK], include_path=tasks, device="cpu")


@pytest.mark.slow
def test_unknown_tasks_are_one_line(setup):
    """Indexes the harness's own tasks (many seconds) to find that the name is none of them."""
    with pytest.raises(GptkitError, match="no task named gptkit_test_nosuch in lm-evaluation-harness nor in"):
        run_tasks(setup["ckpt"], [MC_TASK, "gptkit_test_nosuch"], include_path=setup["tasks"], device="cpu")


@pytest.mark.slow
def test_the_harness_command_line_runs_gptkit(setup, gptkit_results):
    """`python -m gptkit.evaluation.harness` is lm-eval's own command line with the model "gptkit" registered."""
    args = f"ckpt={setup['ckpt']},dtype=float32,progress=False"  # the device and batch size are lm-eval's options
    command = [sys.executable, "-m", "gptkit.evaluation.harness", "--model", "gptkit", "--model_args", args]
    command += ["--device", "cpu", "--batch_size", "4"]
    command += ["--tasks", MC_TASK, "--include_path", str(setup["tasks"]), "--output_path", str(setup["root"] / "out")]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (written,) = (setup["root"] / "out").rglob("results_*.json")
    acc = json.loads(written.read_text())["results"][MC_TASK]["acc,none"]
    assert acc == gptkit_results["tasks"][MC_TASK]["metrics"]["acc"]


def test_gptkit_eval_tasks_prints_the_harness_scores_and_records_them(setup, gptkit_results):
    """`gptkit eval CKPT --tasks ... --include-path DIR --json` gives run_tasks' scores, and evals.jsonl records them."""
    ran = subprocess.run(
        [sys.executable, "-m", "gptkit", "eval", str(setup["ckpt"]), "--tasks", MC_TASK, "--include-path",
         str(setup["tasks"]), "--device", "cpu", "--dtype", "float32", "--json"],
        capture_output=True, text=True, env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    printed = json.loads(ran.stdout)["tasks"]["tasks"][MC_TASK]["metrics"]
    assert printed["acc"] == gptkit_results["tasks"][MC_TASK]["metrics"]["acc"]
    recorded = json.loads((setup["ckpt"] / "evals.jsonl").read_text().splitlines()[-1])  # a line a task
    assert recorded["task"] == MC_TASK and recorded["metrics"] == printed


def test_gptkit_eval_tasks_with_a_text_is_one_line(setup):
    from conftest import assert_one_line_error

    ran = subprocess.run(
        [sys.executable, "-m", "gptkit", "eval", str(setup["ckpt"]), str(setup["tasks"] / "mc.jsonl"), "--tasks", "x"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert_one_line_error(ran, "--tasks and --core run on their own")
