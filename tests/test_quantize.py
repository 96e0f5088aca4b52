import json

import pytest
import torch
from typer.testing import CliRunner

from gptkit.cli import app
from gptkit.model import GPT
from gptkit.quantize import DEQUANTIZE_ABOVE_ROWS, Int8Linear, quantize_int8
from gptkit.sample import generate, prepare_for_decoding

runner = CliRunner()


def quantized_copy(model: GPT, config) -> GPT:
    copy = GPT(config).eval()
    copy.load_state_dict(model.state_dict())
    return quantize_int8(copy)


def test_every_linear_and_the_head_become_int8(tiny_model, tiny_config):
    model = quantized_copy(tiny_model, tiny_config)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert isinstance(model.lm_head, Int8Linear) and model.lm_head.weight.dtype == torch.int8
    assert model.lm_head.scales.shape == (tiny_config.vocab_size,)  # one scale per output channel
    # the embedding keeps its float weights (a step reads one row); the head's are its int8 copy
    torch.testing.assert_close(model.transformer.wte.weight, tiny_model.transformer.wte.weight)
    scales = tiny_model.lm_head.weight.abs().amax(dim=1) / 127
    assert (model.lm_head.dequantized() - tiny_model.lm_head.weight).abs().max() <= scales.max() / 2 + 1e-6


# Tolerance: int8 rounds each weight by at most half its channel's scale (max |w| / 254), which on these models
# moves no logit by more than 2% of the largest |logit|.
@pytest.mark.parametrize("rows", [1, DEQUANTIZE_ABOVE_ROWS + 1])  # the int8 kernel, and dequantize-then-matmul
def test_int8_logits_close_to_fp32(tiny_model, tiny_config, rows):
    idx = torch.randint(0, 50257, (1, rows), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, _ = tiny_model(idx)
        got, _ = quantized_copy(tiny_model, tiny_config)(idx)
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, atol=0.02 * expected.abs().max().item(), rtol=0)


def test_int8_decoding_follows_fp32_greedy(tiny_model, tiny_config):
    idx = torch.randint(0, 50257, (2, 8), generator=torch.Generator().manual_seed(1))
    model = prepare_for_decoding(quantized_copy(tiny_model, tiny_config))
    int8 = torch.stack(list(generate(model, idx, 16, temperature=0)), dim=1)
    fp32 = torch.stack(list(generate(tiny_model, idx, 16, temperature=0)), dim=1)
    assert (int8 == fp32).float().mean() >= 0.9


def test_sample_and_eval_with_int8(tiny_checkpoint, tmp_path):
    result = runner.invoke(
        app, ["sample", "Hi", "--ckpt", str(tiny_checkpoint), "--quantize", "int8", "--max-new-tokens", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "int8 weights" in result.stderr
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    losses = {}
    for quantize in ([], ["--quantize", "int8"]):
        result = runner.invoke(
            app, ["eval", str(tiny_checkpoint), str(text), "--json", "--dtype", "float32", *quantize]
        )
        assert result.exit_code == 0, result.output
        record = json.loads(result.stdout)
        losses[record["settings"]["quantize"]] = record["lm"]["loss"]
    assert losses["int8"] == pytest.approx(losses[None], rel=0.01)


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_unsupported_quantization_is_a_clear_error(tiny_checkpoint, command):
    result = runner.invoke(app, [command, *(["Hi", "--ckpt"] if command == "sample" else []), str(tiny_checkpoint),
                                 "--quantize", "int4"])  # fmt: skip
    assert result.exit_code == 1
    assert "--quantize int4 is not supported: use --quantize int8" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
