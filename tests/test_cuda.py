"""The CUDA paths (bf16 autocast, TF32, fused AdamW, torch.compile): skipped where there is no CUDA GPU."""

import io

import numpy as np
import pytest
import torch
from conftest import SHAKESPEARE_PATH
from rich.console import Console
from typer.testing import CliRunner

from gptkit.checkpoint.folder import load_checkpoint, read_metadata, save_checkpoint
from gptkit.cli import app
from gptkit.evaluation.loss import evaluate_lm
from gptkit.model.int8 import quantize_int8
from gptkit.model.gpt import GPT
from gptkit.commands.quantize import quantize
from gptkit.options import QuantizeOptions
from gptkit.inference.decode import prepare_for_decoding
from gptkit.inference.generate import generate
from gptkit.inference.sampling import Sampling
from gptkit.training.loop import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

AUTO_DTYPE = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


def test_sample_runs_on_cuda_in_bf16_by_default(tiny_checkpoint):
    """What `gptkit sample` reports it ran on, with --device and --dtype left on auto."""
    result = CliRunner().invoke(app, ["sample", "Hi", "--ckpt", str(tiny_checkpoint), "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert f"({AUTO_DTYPE}, cuda" in result.stderr


def test_forward_matches_cpu(tiny_model):
    idx = torch.randint(0, 50257, (2, 48))
    cpu_logits, _ = tiny_model(idx)
    gpu_logits, _ = tiny_model.cuda()(idx.cuda())
    assert torch.allclose(gpu_logits.float().cpu(), cpu_logits, atol=1e-4)


def test_greedy_generation_matches_cpu(tiny_model):
    idx = torch.randint(0, 50257, (2, 10))
    cpu = torch.stack(list(generate(tiny_model, idx, 20, Sampling(temperature=0))), dim=1)
    gpu = torch.stack(list(generate(tiny_model.cuda(), idx.cuda(), 20, Sampling(temperature=0))), dim=1)
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
    stored = load_checkpoint(quantize(QuantizeOptions(tiny_checkpoint)), "cuda")
    at_load = quantize_int8(load_checkpoint(tiny_checkpoint, "cuda"))
    assert stored.lm_head.weight.is_cuda and stored.lm_head.weight.dtype == torch.int8
    assert torch.equal(stored.lm_head.weight, at_load.lm_head.weight)
    idx = torch.randint(0, 50257, (2, 10), device="cuda")
    with torch.inference_mode():
        logits = [m(idx)[0] for m in (stored, at_load)]
    assert logits[0].is_cuda and torch.equal(*logits)  # the same weights through the same (dequantizing) path
    greedy = [torch.stack(list(generate(m, idx, 20, Sampling(temperature=0))), dim=1) for m in (stored, at_load)]
    assert greedy[0].shape == (2, 20) and torch.equal(*greedy)


def test_checkpoints_load_onto_cuda_64_byte_aligned(tiny_model, tmp_path):
    """Every tensor of a checkpoint loaded onto the GPU starts on a 64-byte boundary (vectorized kernels need it)."""
    fp32 = save_checkpoint(tiny_model, tmp_path / "fp32")
    int8 = quantize(QuantizeOptions(fp32))
    bf16 = save_checkpoint(GPT(tiny_model.config).to(torch.bfloat16), tmp_path / "bf16")
    for ckpt, dtype in ((fp32, None), (bf16, torch.bfloat16), (int8, None), (int8, torch.bfloat16)):
        model = load_checkpoint(ckpt, "cuda", dtype)
        tensors = dict(model.named_parameters()) | dict(model.named_buffers())
        assert any(t.dtype == torch.int8 for t in tensors.values()) == (ckpt == int8)
        for name, tensor in tensors.items():
            assert tensor.is_cuda and tensor.data_ptr() % 64 == 0, (ckpt.name, dtype, name, tensor.data_ptr() % 64)


@pytest.mark.parametrize("compile", [False, True])
def test_speculative_and_compiled_greedy_on_cuda(tiny_model, tiny_config, compile):
    idx = torch.randint(0, 50257, (2, 10), device="cuda")
    model = tiny_model.cuda()
    greedy = torch.stack(list(generate(model, idx, 20, Sampling(temperature=0))), dim=1)
    fast = GPT(tiny_config).eval().cuda()
    fast.load_state_dict(model.state_dict())
    prepare_for_decoding(fast, compile)
    speculative = torch.stack(
        list(generate(fast, idx, 20, Sampling(temperature=0), draft=fast, draft_tokens=3)), dim=1
    )
    assert torch.equal(speculative, greedy)


def test_eval_matches_cpu(tiny_model):
    tokens = np.random.default_rng(0).integers(0, 50257, 500)
    cpu = evaluate_lm(tiny_model, tokens, block_size=64)
    gpu = evaluate_lm(tiny_model.cuda(), tokens, block_size=64)
    assert gpu["loss"] == pytest.approx(cpu["loss"], abs=1e-4)


@pytest.mark.parametrize("compile", [False, True])
def test_train_on_cuda_with_auto_dtype(tiny_checkpoint, tmp_path, compile):
    from torch._dynamo.utils import counters

    text = tmp_path / "text.txt"
    text.write_text(SHAKESPEARE_PATH.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
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
    linear_outputs = set()  # the dtypes the model's Linear layers computed in (eager: compiled code runs no hooks)

    def record(module, args, output):
        if isinstance(module, torch.nn.Linear) and output.is_cuda:
            linear_outputs.add(output.dtype)

    graphs = counters["stats"]["unique_graphs"]
    hook = None if compile else torch.nn.modules.module.register_module_forward_hook(record)
    try:
        summary = train(cfg, console=Console(file=io.StringIO()))
    finally:
        if hook is not None:
            hook.remove()
    assert np.isfinite(summary["train_loss"]) and np.isfinite(summary["val_loss"])
    settings = read_metadata(tmp_path / "run")["settings"]
    assert (settings["dtype"], settings["device"], settings["compile"]) == (AUTO_DTYPE, "cuda", compile)
    if compile:
        assert counters["stats"]["unique_graphs"] > graphs
    else:
        assert linear_outputs == {getattr(torch, AUTO_DTYPE)}  # autocast ran the products in bf16
    load_checkpoint(tmp_path / "run")  # written from GPU, readable on the CPU
