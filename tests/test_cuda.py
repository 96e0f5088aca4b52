"""The CUDA paths (bf16 autocast, TF32, fused AdamW, torch.compile): skipped where there is no CUDA GPU."""

import io

import numpy as np
import pytest
import torch
from rich.console import Console

from gptkit.checkpoint import load_checkpoint
from gptkit.eval import evaluate_lm
from gptkit.model import GPT
from gptkit.int8 import quantize_int8
from gptkit.quantize import quantize_checkpoint
from gptkit.runtime import pick_device, pick_dtype
from gptkit.sample import generate, prepare_for_decoding
from gptkit.train import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_picks_cuda_and_bf16():
    device = pick_device("auto")
    assert device.type == "cuda"
    assert pick_dtype("auto", device) == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)


def test_forward_matches_cpu(tiny_model):
    idx = torch.randint(0, 50257, (2, 48))
    cpu_logits, _ = tiny_model(idx)
    gpu_logits, _ = tiny_model.cuda()(idx.cuda())
    assert torch.allclose(gpu_logits.float().cpu(), cpu_logits, atol=1e-4)


def test_greedy_generation_matches_cpu(tiny_model):
    idx = torch.randint(0, 50257, (2, 10))
    cpu = torch.stack(list(generate(tiny_model, idx, 20, temperature=0)), dim=1)
    gpu = torch.stack(list(generate(tiny_model.cuda(), idx.cuda(), 20, temperature=0)), dim=1)
    assert torch.equal(gpu.cpu(), cpu)


def test_int8_decoding_matches_cpu(tiny_model, tiny_config):
    int8 = GPT(tiny_config).eval()
    int8.load_state_dict(tiny_model.state_dict())
    quantize_int8(int8)  # the CPU's int8 kernel (bf16 activations)
    idx = torch.randint(0, 50257, (2, 10))
    cpu_logits, _ = int8(idx[:, :1])
    gpu_logits, _ = quantize_int8(tiny_model.cuda())(idx[:, :1].cuda())  # dequantized on CUDA
    torch.testing.assert_close(gpu_logits.cpu(), cpu_logits, atol=0.02 * cpu_logits.abs().max().item(), rtol=0)


def test_int8_checkpoint_on_cuda(tiny_checkpoint):
    stored = load_checkpoint(quantize_checkpoint(tiny_checkpoint), "cuda")
    at_load = quantize_int8(load_checkpoint(tiny_checkpoint, "cuda"))
    assert stored.lm_head.weight.is_cuda and stored.lm_head.kernel_dtype == at_load.lm_head.kernel_dtype
    assert torch.equal(stored.lm_head.weight, at_load.lm_head.weight)
    idx = torch.randint(0, 50257, (2, 10), device="cuda")
    greedy = [torch.stack(list(generate(m, idx, 20, temperature=0)), dim=1) for m in (stored, at_load)]
    assert torch.equal(*greedy)


@pytest.mark.parametrize("compile", [False, True])
def test_speculative_and_compiled_greedy_on_cuda(tiny_model, tiny_config, compile):
    idx = torch.randint(0, 50257, (2, 10), device="cuda")
    model = tiny_model.cuda()
    greedy = torch.stack(list(generate(model, idx, 20, temperature=0)), dim=1)
    fast = GPT(tiny_config).eval().cuda()
    fast.load_state_dict(model.state_dict())
    prepare_for_decoding(fast, compile)
    speculative = torch.stack(list(generate(fast, idx, 20, temperature=0, draft=fast, draft_tokens=3)), dim=1)
    assert torch.equal(speculative, greedy)


def test_eval_matches_cpu(tiny_model):
    tokens = np.random.default_rng(0).integers(0, 50257, 500)
    cpu = evaluate_lm(tiny_model, tokens, block_size=64)
    gpu = evaluate_lm(tiny_model.cuda(), tokens, block_size=64)
    assert gpu["loss"] == pytest.approx(cpu["loss"], abs=1e-4)


@pytest.mark.parametrize("compile", [False, True])
def test_train_bf16_on_cuda(tiny_checkpoint, tmp_path, monkeypatch, compile):
    monkeypatch.setenv("GPTKIT_CACHE_DIR", str(tmp_path / "cache"))
    text = tmp_path / "text.txt"
    text.write_text(open("data/input.txt", encoding="utf-8").read()[:40_000])
    cfg = TrainConfig(
        data=str(text),
        model=str(tiny_checkpoint),
        out=str(tmp_path / "run"),
        steps=6,
        batch_size=4,
        block_size=32,
        dtype="auto",
        device="cuda",
        compile=compile,
        eval_every=0,
        eval_tokens=256,
    )
    summary = train(cfg, console=Console(file=io.StringIO()))
    assert np.isfinite(summary["train_loss"]) and np.isfinite(summary["val_loss"])
    load_checkpoint(tmp_path / "run")  # written from GPU, readable on the CPU
