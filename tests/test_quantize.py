import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from gptkit import checkpoint
from gptkit.checkpoint import (
    is_checkpoint,
    load_checkpoint,
    read_metadata,
    read_safetensors_header,
    save_checkpoint,
    write_json,
)
from gptkit.cli import app
from gptkit.data import load_tokens
from gptkit.model import GPT, GPTConfig
from gptkit.int8 import DEQUANTIZE_ABOVE_ROWS, Int8Linear, quantize_int8
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


def test_compiled_int8_decoding_gives_the_same_tokens(tiny_model, tiny_config):
    idx = torch.randint(0, 50257, (2, 8), generator=torch.Generator().manual_seed(1))
    eager = prepare_for_decoding(quantized_copy(tiny_model, tiny_config))
    compiled = prepare_for_decoding(quantized_copy(tiny_model, tiny_config), compile=True)
    for kwargs in ({"temperature": 0}, {"generator": torch.Generator().manual_seed(3)}):
        expected = torch.stack(list(generate(eager, idx, 12, **kwargs)), dim=1)
        if "generator" in kwargs:
            kwargs["generator"].manual_seed(3)
        assert torch.equal(torch.stack(list(generate(compiled, idx, 12, **kwargs)), dim=1), expected)


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


# --- gptkit quantize: int8 checkpoints ------------------------------------------------------------------------------


def quantize_command(*args: str):
    result = runner.invoke(app, ["quantize", *map(str, args)])
    return result


@pytest.fixture
def int8_checkpoint(tiny_checkpoint):
    result = quantize_command(tiny_checkpoint)
    assert result.exit_code == 0, result.output
    return tiny_checkpoint.parent / "tiny-int8"


def int8_layers(model: GPT) -> dict[str, Int8Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, Int8Linear)}


def test_quantized_checkpoint_loads_the_weights_quantize_int8_makes(tiny_checkpoint, int8_checkpoint):
    at_load = quantize_int8(load_checkpoint(tiny_checkpoint))
    stored = load_checkpoint(int8_checkpoint)
    assert not any(isinstance(m, torch.nn.Linear) for m in stored.modules())
    expected, got = int8_layers(at_load), int8_layers(stored)
    assert got.keys() == expected.keys() and "lm_head" in got
    for name, layer in got.items():
        assert layer.weight.dtype == torch.int8 and torch.equal(layer.weight, expected[name].weight), name
        assert torch.equal(layer.scales, expected[name].scales), name
        assert (layer.bias is None) == (expected[name].bias is None), name
        assert layer.bias is None or torch.equal(layer.bias, expected[name].bias), name
        assert layer.kernel_dtype == expected[name].kernel_dtype
    for name, tensor in at_load.state_dict().items():  # the float tensors: embeddings, layer norms, biases
        assert torch.equal(stored.state_dict()[name], tensor), name
    # the activation dtype: the scales and the float tensors follow it, the int8 weights stay int8
    bf16 = load_checkpoint(int8_checkpoint, dtype=torch.bfloat16)
    assert bf16.lm_head.weight.dtype == torch.int8 and bf16.lm_head.scales.dtype == torch.bfloat16
    assert bf16.transformer.wte.weight.dtype == torch.bfloat16


def greedy_sample(ckpt, *options: str):
    result = runner.invoke(
        app, ["sample", "ROMEO:", "--ckpt", str(ckpt), "--temperature", "0", "--max-new-tokens", "24", *options]
    )
    assert result.exit_code == 0, result.output
    return result


def test_sample_from_an_int8_checkpoint_is_sample_quantize_int8(tiny_checkpoint, int8_checkpoint):
    expected = greedy_sample(tiny_checkpoint, "--quantize", "int8", "--dtype", "float32")
    stored = greedy_sample(int8_checkpoint, "--dtype", "float32")
    assert stored.stdout == expected.stdout and len(stored.stdout.strip()) > 0
    assert "int8 weights" in stored.stderr  # without --quantize: the checkpoint's own weights are int8
    assert greedy_sample(int8_checkpoint, "--quantize", "int8", "--dtype", "float32").stdout == expected.stdout
    assert "bfloat16" in greedy_sample(int8_checkpoint, "--dtype", "bfloat16").stderr


def test_eval_of_an_int8_checkpoint_is_eval_quantize_int8(tiny_checkpoint, int8_checkpoint, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    records = []
    for ckpt, options in ((tiny_checkpoint, ["--quantize", "int8"]), (int8_checkpoint, []), (int8_checkpoint, ["--quantize", "int8"])):  # fmt: skip
        result = runner.invoke(app, ["eval", str(ckpt), str(text), "--json", "--dtype", "float32", *options])
        assert result.exit_code == 0, result.output
        records.append(json.loads(result.stdout))
    assert records[1]["lm"]["loss"] == records[0]["lm"]["loss"] == records[2]["lm"]["loss"]
    assert [r["settings"]["quantize"] for r in records] == ["int8"] * 3


def test_eval_without_text_uses_the_validation_split_the_float_checkpoint_records(tiny_checkpoint, text):
    _, sha256 = load_tokens(text)
    meta = read_metadata(tiny_checkpoint)
    meta["data"] = {"path": str(text), "sha256": sha256, "tokens": 0, "val_fraction": 0.25, "split": "tail"}
    write_json(tiny_checkpoint / "gptkit.json", meta)
    assert quantize_command(tiny_checkpoint).exit_code == 0
    losses = []
    for ckpt, options in ((tiny_checkpoint, ["--quantize", "int8"]), (tiny_checkpoint.parent / "tiny-int8", [])):
        result = runner.invoke(
            app, ["eval", str(ckpt), "--json", "--dtype", "float32", "--max-tokens", "500", *options]
        )
        assert result.exit_code == 0, result.output
        record = json.loads(result.stdout)["lm"]
        assert record["evaluated"]["validation_split_of"] == str(text)
        losses.append(record["loss"])
    assert losses[0] == losses[1]


def test_inspect_shows_an_int8_checkpoint(tiny_checkpoint, int8_checkpoint):
    float_info = json.loads(runner.invoke(app, ["inspect", str(tiny_checkpoint), "--json"]).stdout)
    result = runner.invoke(app, ["inspect", str(int8_checkpoint), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert float_info["quantization"] is None and set(float_info) <= set(info)  # --json only gains keys
    assert info["parameters"] == float_info["parameters"]  # the same model: scales and the int8 head not counted
    n_linear = 4 * 2 + 1  # c_attn, attn.c_proj, c_fc, mlp.c_proj in each of 2 layers, and the head
    assert info["quantization"] == {
        "method": "int8",
        "granularity": "per output channel",
        "int8_tensors": n_linear,
        "int8_parameters": 2 * (192 * 64 + 64 * 64 + 256 * 64 + 64 * 256) + 50257 * 64,
        "scales_dtype": "F32",
    }
    tensors = {t["name"]: t for t in info["tensors"]}
    assert tensors["lm_head.weight"] == {"name": "lm_head.weight", "shape": [50257, 64], "dtype": "I8"}
    assert tensors["lm_head.scales"]["shape"] == [50257] and tensors["lm_head.scales"]["dtype"] == "F32"
    assert tensors["transformer.h.0.mlp.c_fc.weight"]["shape"] == [256, 64]  # (out, in): Int8Linear's layout
    assert tensors["transformer.wte.weight"]["dtype"] == "F32"
    files = ("model.safetensors", "config.json", "gptkit.json")
    assert info["size_on_disk"] == sum((int8_checkpoint / f).stat().st_size for f in files)
    assert info["config"]["dtype"] == "float32"
    assert info["metadata"]["quantization"] == {
        "method": "int8",
        "granularity": "per output channel",
        "source": str(tiny_checkpoint.resolve()),
    }
    assert info["metadata"]["note"] == "test fixture"  # how the float checkpoint was made is kept
    config = json.loads((int8_checkpoint / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "gptkit_int8"
    text = runner.invoke(app, ["inspect", str(int8_checkpoint)], env={"COLUMNS": "250"}).stdout
    assert "int8 weights, one float32 scale per output channel: 9 Linear layers" in text
    assert "I8 (9 tensors)" in text


def test_int8_file_is_about_a_quarter_for_a_model_of_mostly_linear_weights(tmp_path):
    config = GPTConfig(n_layer=4, n_head=6, n_embd=384, block_size=32, vocab_size=64)
    torch.manual_seed(0)
    save_checkpoint(GPT(config), tmp_path / "linear")
    result = quantize_command(tmp_path / "linear")
    assert result.exit_code == 0, result.output
    fp32, int8 = ((tmp_path / name / "model.safetensors").stat().st_size for name in ("linear", "linear-int8"))
    assert 3.8 < fp32 / int8 < 4.0
    assert f"{int8 / fp32:.0%} of {tmp_path / 'linear'}" in result.stderr


def test_float_tensors_keep_their_stored_dtype(tiny_model, tmp_path):
    bf16 = save_checkpoint(tiny_model.to(torch.bfloat16), tmp_path / "bf16")
    result = quantize_command(bf16, "--out", tmp_path / "q")
    assert result.exit_code == 0, result.output
    header = read_safetensors_header(tmp_path / "q" / "model.safetensors")
    assert header["transformer.wte.weight"]["dtype"] == "BF16" and header["lm_head.scales"]["dtype"] == "F32"
    at_load = quantize_int8(load_checkpoint(bf16))  # float32 from the exact bf16 values
    stored = load_checkpoint(tmp_path / "q")
    assert torch.equal(stored.lm_head.weight, at_load.lm_head.weight)
    assert torch.equal(stored.lm_head.scales, at_load.lm_head.scales)


def test_a_bare_safetensors_file_and_overwrite(tiny_checkpoint, tmp_path):
    bare = tmp_path / "weights.safetensors"
    shutil.copy(tiny_checkpoint / "model.safetensors", bare)
    assert quantize_command(bare).exit_code == 0
    assert is_checkpoint(tmp_path / "weights-int8")
    before = (tmp_path / "weights-int8" / "model.safetensors").stat().st_mtime_ns
    assert quantize_command(bare, "--overwrite").exit_code == 0
    assert (tmp_path / "weights-int8" / "model.safetensors").stat().st_mtime_ns != before
    assert sorted(p.name for p in (tmp_path / "weights-int8").iterdir()) == ["config.json", "gptkit.json", "model.safetensors"]  # fmt: skip


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def one_line_error(result, message: str):
    assert result.exit_code == 1, result.output
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_bad_input_is_one_line_and_writes_nothing(tiny_checkpoint, int8_checkpoint, tmp_path):
    folder = tiny_checkpoint.parent
    before = listing(folder)
    one_line_error(quantize_command(tmp_path / "missing"), "does not exist")
    one_line_error(quantize_command(int8_checkpoint, "--out", tmp_path / "again"), "holds int8 weights")
    made_from = f"quantize the float checkpoint it was made from ({tiny_checkpoint.resolve()})"
    one_line_error(quantize_command(int8_checkpoint), made_from)
    one_line_error(quantize_command(tiny_checkpoint), "exists: add --overwrite")
    one_line_error(quantize_command(tiny_checkpoint, "--out", tiny_checkpoint, "--overwrite"), "is the checkpoint")
    one_line_error(quantize_command(tiny_checkpoint, "--out", tiny_checkpoint / "config.json"), "is a file")
    assert listing(folder) == before


def test_an_interrupted_quantize_leaves_nothing(tiny_checkpoint, int8_checkpoint, monkeypatch):
    folder = tiny_checkpoint.parent
    before = {p: p.read_bytes() for p in int8_checkpoint.iterdir()}
    real_write_json = checkpoint.write_json

    def interrupt_after_the_weights(path, data):  # Ctrl-C between model.safetensors and config.json
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "write_json", interrupt_after_the_weights)
    result = quantize_command(tiny_checkpoint, "--out", folder / "new")
    assert result.exit_code == 130 and "interrupted" in result.stderr
    result = quantize_command(tiny_checkpoint, "--overwrite")
    assert result.exit_code == 130
    monkeypatch.setattr(checkpoint, "write_json", real_write_json)
    assert sorted(p.name for p in folder.iterdir()) == ["tiny", "tiny-int8"]  # no temporary folders, no "new"
    assert {p: p.read_bytes() for p in int8_checkpoint.iterdir()} == before


def test_training_an_int8_checkpoint_is_refused(int8_checkpoint, text, tmp_path):
    result = runner.invoke(app, ["train", str(text), "--model", str(int8_checkpoint), "--out", str(tmp_path / "run")])
    one_line_error(result, "cannot be trained: fine-tune the float checkpoint it was made from")
    assert not (tmp_path / "run").exists()


def test_transformers_does_not_load_an_int8_checkpoint_as_a_float_one(int8_checkpoint):
    from transformers import GPT2LMHeadModel

    # it skips the unknown quantization_config (with a warning), then refuses the (out, in) int8 weights
    with pytest.raises((RuntimeError, ValueError)):
        GPT2LMHeadModel.from_pretrained(int8_checkpoint)
