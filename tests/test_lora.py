"""LoRA: adapters trained on a frozen checkpoint, saved in PEFT's format, read by PEFT, sample, eval and merge."""

import io
import json

import pytest
import torch
from conftest import assert_one_line_error
from rich.console import Console
from typer.testing import CliRunner

from gptkit.checkpoint.folder import load_checkpoint, save_checkpoint
from gptkit.checkpoint.tensors import load_tensors
from gptkit.cli import app
from gptkit.training.runfolder import STATE_TENSORS, newest_save
from gptkit.training.loop import train
from gptkit.training.config import TrainConfig

# a flat schedule, so that a run resumed with a larger --steps trains as one run of that many steps
SETTINGS = dict(
    batch_size=2, block_size=32, lr=1e-2, min_lr=1e-2, warmup_steps=0, dtype="float32", device="cpu", eval_every=0
)
SETTINGS |= dict(eval_tokens=64, save_every=0, lora_rank=4, lora_targets="attn,mlp")


@pytest.fixture
def base(tmp_path, lively_model):
    return save_checkpoint(lively_model, tmp_path / "base")


def run(text, base, out, steps: int, **options):
    cfg = TrainConfig(data=str(text), model=base and str(base), out=str(out), steps=steps, **SETTINGS | options)
    return train(cfg, console=Console(file=io.StringIO()))


def logits_of(model, idx):
    with torch.no_grad():
        return model(idx)[0] if not hasattr(model, "peft_config") else model(idx).logits


def test_adapters_load_in_peft_with_the_same_logits_and_the_base_stays_as_it_was(text, base, tmp_path):
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    before = (base / "model.safetensors").read_bytes()
    out = tmp_path / "run"
    run(text, base, out, steps=3)
    assert (base / "model.safetensors").read_bytes() == before
    assert not (out / "model.safetensors").exists() and (out / "adapter_model.safetensors").is_file()
    trained = {name for name in load_tensors(newest_save(out) / STATE_TENSORS) if name.startswith("optimizer.")}
    assert trained and all(".lora_" in name for name in trained)  # only the adapters have optimizer state

    idx = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(0))
    ours = logits_of(load_checkpoint(out), idx)
    peft = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base), out).eval()
    theirs = logits_of(peft, idx)
    plain = logits_of(load_checkpoint(base), idx)
    # merged (W + s B A) against PEFT's unmerged (W x + s B A x): the same numbers summed in another order, within
    # fp32's rounding of sums of n_embd products (n_embd * 2^-24 ~ 4e-6 of their size), far below what 3 steps of
    # training moved (the adapters' effect, asserted at least 1e-3 of the logits' size)
    scale = plain.abs().max()
    assert (ours - plain).abs().max() > 1e-3 * scale
    assert (ours - theirs).abs().max() < 1e-4 * scale


def test_a_lora_run_resumes_exactly(text, base, tmp_path):
    run(text, base, tmp_path / "straight", steps=4, lora_dropout=0.1)
    run(text, base, tmp_path / "split", steps=2, lora_dropout=0.1)
    run(text, None, tmp_path / "split", steps=4, resume=True)
    straight, split = (load_tensors(tmp_path / name / "adapter_model.safetensors") for name in ("straight", "split"))
    assert straight.keys() == split.keys() and all(torch.equal(straight[k], split[k]) for k in straight)
    config = json.loads((tmp_path / "split" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base.resolve()) and config["fan_in_fan_out"] is True
    assert config["r"] == 4 and config["lora_alpha"] == 8.0
    assert set(config["target_modules"]) == {"attn.c_attn", "mlp.c_fc", "mlp.c_proj"}


def test_sample_eval_and_merge_take_a_lora_run(text, base, tmp_path):
    out = tmp_path / "run"
    run(text, base, out, steps=2)
    runner = CliRunner()
    sampled = runner.invoke(app, ["sample", "Hello", "--ckpt", str(out), "--max-new-tokens", "5", "--temperature", "0"])
    assert sampled.exit_code == 0, sampled.output

    merged = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(out), "--out", str(merged)])
    assert result.exit_code == 0, result.output
    idx = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(logits_of(load_checkpoint(merged), idx), logits_of(load_checkpoint(out), idx))
    assert (merged / "vocab.json").is_file()  # a plain checkpoint, with its tokenizer files

    def eval_loss(ckpt):
        args = ["eval", str(ckpt), str(text), "--max-tokens", "64", "--json", "--dtype", "float32", "--device", "cpu"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["lm"]["loss"]

    assert eval_loss(out) == eval_loss(merged)
    assert_one_line_error(runner.invoke(app, ["merge", str(out), "--out", str(merged)]), "add --overwrite")
    assert_one_line_error(runner.invoke(app, ["merge", str(base)]), "holds no LoRA adapters")


def test_bad_lora_options_are_one_line(text, base, tmp_path):
    runner = CliRunner()

    def train_cli(*args):
        return runner.invoke(app, ["train", str(text), "--out", str(tmp_path / "bad"), "--steps", "1", *map(str, args)])

    assert_one_line_error(train_cli("--model", base, "--lora-rank", "0"), "--lora-rank must be at least 1, not 0")
    assert_one_line_error(
        train_cli("--model", base, "--lora-rank", "2", "--lora-targets", "attn,ffn"), "no layers named 'ffn'"
    )
    assert_one_line_error(train_cli("--model", "nano", "--lora-rank", "2"), "give it as --model")
    assert_one_line_error(train_cli("--model", base, "--lora-alpha", "4"), "add --lora-rank")
    out = tmp_path / "run"
    run(text, base, out, steps=1)
    resumed = runner.invoke(
        app, ["train", str(text), "--out", str(out), "--steps", "2", "--resume", "--lora-rank", "8"]
    )
    assert_one_line_error(resumed, "--lora-rank 8 differs from the run being resumed (4)")
