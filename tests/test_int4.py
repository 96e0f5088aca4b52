"""--quantize int4 (model/int4.py): 4-bit weights in groups of 32 with a scale and an offset each, through torch's
int4 CPU kernel; the product is that of the dequantized weight, and a trained model keeps what it learned."""

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from gptkit.cli import app
from gptkit.errors import GptkitError
from gptkit.model.config import GPTConfig
from gptkit.model.gpt import GPT
from gptkit.model.int4 import GROUP_SIZE, Int4Linear, quantize_int4
from gptkit.model.quantization import QUANTIZERS
from gptkit.options.shared import QUANTIZATIONS
from test_quantize import SENTENCE, trained_checkpoint  # noqa: F401 (a fixture)

runner = CliRunner()
BF16_EPS = torch.finfo(torch.bfloat16).eps


def test_every_quantization_the_options_name_has_a_quantizer():
    assert tuple(QUANTIZERS) == QUANTIZATIONS


def test_each_weight_is_within_half_a_step_of_its_group():
    """The kernel's product with the identity reads back each dequantized weight (rounded to bf16): off by at most
    half its group's step (scale / 2), plus bf16's rounding of the scale, the offset and the result."""
    torch.manual_seed(0)
    weight = torch.randn(40, 4 * GROUP_SIZE) * torch.logspace(-2, 1, 40)[:, None]  # rows of different magnitudes
    with torch.no_grad():
        dequantized = Int4Linear.quantize(weight)(torch.eye(4 * GROUP_SIZE)).t()
    groups = weight.view(40, 4, GROUP_SIZE)
    step = ((groups.amax(-1) - groups.amin(-1)) / 15)[..., None]
    rounding = BF16_EPS * (groups.abs().amax(-1, keepdim=True) + 8 * step) + BF16_EPS * weight.abs().view_as(groups)
    assert ((dequantized.view_as(groups) - groups).abs() <= step / 2 + 2 * rounding).all()


@pytest.mark.parametrize("rows", [1, 5])
def test_int4_product_is_within_its_rounding_of_the_float_product(rows):
    """Each weight is off by at most half its group's step (scale / 2) plus bf16's rounding of the stored scale and
    offset; the activations are rounded to bf16 and the output too: the bound below adds these up."""
    torch.manual_seed(0)
    linear = nn.Linear(4 * GROUP_SIZE, 40)  # 40 outputs: padded to the kernel's 48 and cut back
    layer = Int4Linear.quantize(linear.weight, linear.bias)
    x = torch.randn(rows, 4 * GROUP_SIZE)
    with torch.no_grad():
        exact = linear(x.bfloat16().float())
        groups = linear.weight.view(40, 4, GROUP_SIZE)
        step = (groups.amax(-1) - groups.amin(-1)) / 15
        weight_error = step / 2 + BF16_EPS * (groups.abs().amax(-1) + 8 * step)  # (out, groups)
        x_groups = x.bfloat16().float().abs().view(rows, 4, GROUP_SIZE).sum(-1)  # (rows, groups)
        bound = x_groups @ weight_error.t() + BF16_EPS * exact.abs()
        got = layer(x)
    assert got.shape == (rows, 40) and got.dtype == torch.float32
    assert ((got - exact).abs() <= bound * 1.01 + 1e-6).all()
    assert (got - exact).abs().max() > 0  # quantized for real


def test_layers_not_a_multiple_of_the_group_are_a_clear_error():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=48, block_size=16, vocab_size=256))
    with pytest.raises(GptkitError, match="multiple of it"):
        quantize_int4(model)


def test_sample_and_eval_with_int4(trained_checkpoint, tmp_path):
    pinned = ["--device", "cpu", "--dtype", "float32"]
    sample = ["sample", "The quick brown", "--ckpt", str(trained_checkpoint), "--temperature", "0",
              "--max-new-tokens", "12", *pinned, "--quantize", "int4"]  # fmt: skip
    result = runner.invoke(app, sample)
    assert result.exit_code == 0, result.output
    assert result.stdout == "The quick brown fox jumps over the lazy dog. The quick brown fox jumps\n"
    assert "int4 weights" in result.stderr
    text = tmp_path / "text.txt"
    text.write_text(" ".join([SENTENCE] * 7))
    losses = {}
    for quantize in ([], ["--quantize", "int4"]):
        result = runner.invoke(app, ["eval", str(trained_checkpoint), str(text), "--json", *pinned,
                                     "--max-tokens", "64", *quantize])  # fmt: skip
        assert result.exit_code == 0, result.output
        losses[bool(quantize)] = float(result.stdout.split('"loss": ')[1].split(",")[0])
    assert losses[False] < 1 and losses[True] < 1  # ln(50257) = 10.8 for a model that learned nothing
