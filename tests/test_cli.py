import json
import os
import re
import struct
import subprocess
import sys

import pytest
from conftest import assert_one_line_error

from gptkit.checkpoint.huggingface import hf_config
from gptkit.model.config import GPTConfig


def test_help_does_not_import_torch():
    code = (
        "import sys; from gptkit.cli import main; sys.argv = ['gptkit', '--help'];\n"
        "try: main()\nexcept SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'huggingface_hub', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "inspect" in result.stdout


def test_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "gptkit", "--help"], check=False, capture_output=True, text=True)
    assert result.returncode == 0 and "download" in result.stdout


# Runs the CLI on each argument list of a JSON list, in one process, and prints for each, as JSON: the exit code, what
# went to stdout and stderr, and the heavy modules imported so far (a module once imported stays in sys.modules).
CLI_RUNS = """
import io, json, sys
from gptkit.cli import main
results, real_stdout = [], sys.stdout
for args in json.loads(sys.argv[1]):
    sys.argv, sys.stdout, sys.stderr = ["gptkit", *args], io.StringIO(), io.StringIO()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    heavy = sorted(m for m in ("torch", "transformers", "numpy") if m in sys.modules)
    results.append({"code": code, "stdout": sys.stdout.getvalue(), "stderr": sys.stderr.getvalue(), "heavy": heavy})
print(json.dumps(results), file=real_stdout)
"""


def cli_runs(runs: list[list[str]], cwd) -> list[tuple[subprocess.CompletedProcess, list[str]]]:
    """Each run as if it were a process of its own, and the heavy modules imported by then."""
    result = subprocess.run(
        [sys.executable, "-c", CLI_RUNS, json.dumps(runs)], capture_output=True, text=True, cwd=cwd, check=True
    )
    return [
        (subprocess.CompletedProcess(["gptkit", *args], r["code"], r["stdout"], r["stderr"]), r["heavy"])
        for args, r in zip(runs, json.loads(result.stdout.splitlines()[-1]), strict=True)
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A text, a checkpoint-like folder (a safetensors header and a config are all the checks read) and a folder that is neither."""
    root = tmp_path_factory.mktemp("files")
    (root / "text.txt").write_text("To be, or not to be, that is the question.\n")
    ckpt = root / "ckpt"
    ckpt.mkdir()
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    (ckpt / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (ckpt / "config.json").write_text(json.dumps(hf_config(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=16))))
    int8 = root / "int8"  # gptkit quantize's variant: int8 tensors
    int8.mkdir()
    header = json.dumps({"lm_head.weight": {"dtype": "I8", "shape": [0], "data_offsets": [0, 0]}}).encode()
    (int8 / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (int8 / "config.json").write_text("{}")
    (root / "folder").mkdir()
    return root


BAD_OPTIONS = [
    (["sample", "Hi", "--top-p", "1.5"], "--top-p must be in (0, 1], not 1.5"),
    (["sample", "Hi", "--temperature", "-1"], "--temperature must be 0 (greedy) or more"),
    (["sample", "Hi", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["sample", "Hi", "--dtype", "fp8"], "unknown dtype 'fp8'"),
    (["sample", "Hi", "--device", "tpu"], "unknown device 'tpu'"),
    (["sample", "Hi", "--ckpt", "{root}/nowhere"], "checkpoint {root}/nowhere does not exist"),
    (["sample", "Hi", "--ckpt", "{root}/folder"], "is not a checkpoint"),
    (["eval", "{root}/nowhere"], "checkpoint {root}/nowhere does not exist"),
    (["eval", "{root}/ckpt", "{root}/missing.txt"], "{root}/missing.txt does not exist"),
    (["eval", "{root}/ckpt", "{root}/text.txt", "--stride", "0"], "--stride must be at least 1"),
    (["eval", "{root}/ckpt", "{root}/text.txt", "--block-size", "8", "--stride", "9"], "--stride must be between 1"),
    (["eval", "{root}/ckpt", "{root}/text.txt", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["eval", "{root}/ckpt", "--hellaswag", "{root}/no.jsonl"], "get hellaswag_val.jsonl from"),
    (["eval", "{root}/ckpt", "{root}/text.txt", "--dtype", "half"], "unknown dtype 'half'"),
    (["eval", "{root}/ckpt", "{root}/text.txt", "--block-size", "17"], "the model's context of 16, got 17"),
    (["train", "{root}/missing.txt"], "{root}/missing.txt does not exist"),
    (["train", "{root}/text.txt", "--steps", "0"], "--steps must be at least 1"),
    (["train", "{root}/text.txt", "--lr", "-1"], "--lr must be positive"),
    (["train", "{root}/text.txt", "--lr", "0.1", "--min-lr", "1"], "--min-lr 1.0 must not exceed --lr 0.1"),
    (["train", "{root}/text.txt", "--steps", "10", "--warmup-steps", "20"], "--warmup-steps 20 must not exceed"),
    (["train", "{root}/text.txt", "--val-fraction", "1"], "--val-fraction must be in [0, 1)"),
    (["train", "{root}/text.txt", "--dtype", "float16"], "training in float16 needs loss scaling"),
    (["train", "{root}/text.txt", "--device", "gpu"], "unknown device 'gpu'"),
    (["train", "{root}/text.txt", "--model", "gpt5"], "unknown model 'gpt5': use a preset (gpt2, gpt2-medium"),
    (["train", "{root}/text.txt", "--model", "{root}/folder"], "is not a checkpoint"),
    (["train", "{root}/text.txt", "--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
    (["train", "{root}/text.txt", "--model", "{root}/int8"], "cannot be trained: fine-tune the float checkpoint"),
    (["prepare", "{root}/missing.txt"], "{root}/missing.txt does not exist"),
    (["prepare", "{root}/text.txt", "--val-fraction", "-0.5"], "--val-fraction must be in [0, 1)"),
    (["prepare", "{root}/text.txt", "--shard-tokens", "0"], "--shard-tokens must be at least 1"),
    (["download", "gpt3"], "unknown model 'gpt3'"),
    (["quantize", "{root}/nowhere"], "checkpoint {root}/nowhere does not exist"),
    (["quantize", "{root}/int8", "--out", "{root}/new"], "holds int8 weights (written by gptkit quantize)"),
    (["quantize", "{root}/ckpt", "--out", "{root}/ckpt", "--overwrite"], "is the checkpoint being quantized"),
    (["quantize", "{root}/ckpt", "--out", "{root}/text.txt"], "{root}/text.txt is a file: give a folder"),
    (["quantize", "{root}/ckpt", "--out", "{root}"], "{root} exists: add --overwrite"),
    (["inspect", "{root}/nowhere"], "checkpoint {root}/nowhere does not exist"),
    (["export", "{root}/ckpt", "--format", "onnx"], "unknown --format 'onnx': use --format gguf"),
    (
        ["export", "{root}/ckpt", "--format", "gguf", "--type", "q4_0"],
        "unknown --type 'q4_0': use f32, f16, bf16, q8_0",
    ),
    (["export", "{root}/nowhere", "--format", "gguf"], "checkpoint {root}/nowhere does not exist"),
    (["export", "{root}/folder", "--format", "gguf"], "is not a checkpoint"),
    (["export", "{root}/ckpt", "--format", "gguf", "--out", "{root}/folder"], "--out {root}/folder is a folder"),
    (
        ["export", "{root}/ckpt", "--format", "gguf", "--out", "{root}/text.txt"],
        "{root}/text.txt exists: add --overwrite",
    ),
    (
        ["export", "{root}/ckpt", "--format", "gguf", "--out", "{root}/ckpt/model.safetensors", "--overwrite"],
        "is a file of the checkpoint being exported",
    ),
]


@pytest.fixture(scope="module")
def bad_option_runs(files) -> list[dict]:
    return cli_runs([[a.format(root=files) for a in args] for args, _ in BAD_OPTIONS], cwd=files)


@pytest.mark.parametrize("case", range(len(BAD_OPTIONS)), ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_OPTIONS])
def test_bad_options_fail_before_importing_torch(files, bad_option_runs, case):
    run, heavy = bad_option_runs[case]
    assert heavy == []  # neither torch, nor transformers, nor numpy
    assert run.returncode == 1
    assert_one_line_error(run, BAD_OPTIONS[case][1].format(root=files))


def test_a_good_command_does_import_torch(files):
    """The check above can fail: a command that passes the option checks goes on to import torch."""
    ((_, heavy),) = cli_runs([["sample", "Hi", "--ckpt", str(files / "ckpt"), "--device", "cpu"]], cwd=files)
    assert "torch" in heavy


def test_train_help_groups_the_options_in_panels():
    result = subprocess.run(
        [sys.executable, "-m", "gptkit", "train", "--help"],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
    )
    panels = re.findall(r"^╭─ (.+?) ─", result.stdout, re.MULTILINE)
    assert panels == ["Arguments", "Options", "Model", "Data", "Optimization", "Schedule", "Evaluation and saving",
                      "Hardware", "LoRA", "Logging"]  # fmt: skip
    model_panel = result.stdout.split("╭─ Model")[1].split("╰")[0]
    assert "--model" in model_panel and "--block-size" in model_panel and "--lr" not in model_panel
    logging_panel = result.stdout.split("╭─ Logging")[1].split("╰")[0]
    assert "--tensorboard" in logging_panel and "--wandb" in logging_panel


@pytest.mark.parametrize("command, panels", [("sample", ["Model", "Sampling", "Hardware", "Speed"]),
                                             ("eval", ["Scoring", "Benchmarks", "Output", "Hardware"])])  # fmt: skip
def test_help_panels_of_sample_and_eval(command, panels):
    result = subprocess.run(
        [sys.executable, "-m", "gptkit", command, "--help"],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert re.findall(r"^╭─ (.+?) ─", result.stdout, re.MULTILINE)[2:] == panels


def test_an_unexpected_error_is_one_line_and_the_traceback_needs_gptkit_debug():
    code = (
        "import sys, gptkit.commands.inspect\n"
        "def broken(path): raise ZeroDivisionError('something deep\\nand its second line')\n"
        "gptkit.commands.inspect.inspect_checkpoint = broken\n"
        "from gptkit.cli import main; sys.argv = ['gptkit', 'inspect', 'anything']; main()"
    )
    env = {k: v for k, v in os.environ.items() if k != "GPTKIT_DEBUG"}
    quiet = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env)
    assert quiet.returncode == 1 and quiet.stdout == ""
    assert quiet.stderr.splitlines() == [
        (
            "error: gptkit hit an unexpected error: ZeroDivisionError: something deep; this is a bug, please report "
            "it with the output of `gptkit env`; set GPTKIT_DEBUG=1 for the traceback"
        )
    ]
    debug = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env | {"GPTKIT_DEBUG": "1"}
    )
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr and "in broken" in debug.stderr
    assert "ZeroDivisionError: something deep\nand its second line" in debug.stderr
