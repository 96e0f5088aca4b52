import json
import shutil

import pytest
import torch
from conftest import assert_one_line_error
from typer.testing import CliRunner

from gptkit.checkpoint import folder as checkpoint
from gptkit.checkpoint.folder import load_checkpoint, read_metadata, save_checkpoint
from gptkit.checkpoint.locate import is_checkpoint
from gptkit.checkpoint.tensors import read_safetensors_header
from gptkit.cli import app
from gptkit.data.loader import load_tokens
from gptkit.evaluation.loss import evaluate_lm
from gptkit.files import write_json
from gptkit.model.int8 import DEQUANTIZE_ABOVE_ROWS, Int8Linear, quantize_int8
from gptkit.model.gpt import GPT, GPTConfig
from gptkit.inference.decode import prepare_for_decoding
from gptkit.inference.generate import generate
from gptkit.inference.sampling import Sampling
from gptkit.data.tokenizer import encode
from gptkit.checkpoint.tokenizer_files import TOKENIZER_FILES

runner = CliRunner()


def quantized_copy(model: GPT, config) -> GPT:
    copy = GPT(config).eval()
    copy.load_state_dict(model.state_dict())
    return quantize_int8(copy)


def dequantized_copy(model: GPT, config) -> GPT:
    """model in float32, each Linear's weight replaced by its per-output-channel int8 rounding, dequantized: the
    weights int8 layers should multiply by, computed here from the definition (scale = max |w| / 127 of the row)."""
    copy = GPT(config).eval()
    copy.load_state_dict(model.state_dict())
    for name, linear in model.named_modules():
        if isinstance(linear, torch.nn.Linear):  # the head too, untied from wte, which stays float
            weight = linear.weight.detach().float()
            scales = weight.abs().amax(dim=1, keepdim=True) / 127
            rounded = (weight / scales).round().double() * scales.double()
            copy.get_submodule(name).weight = torch.nn.Parameter(rounded.float())
    return copy


def dequantized(layer: Int8Linear) -> torch.Tensor:
    return layer.weight.double() * layer.scales.double()[:, None]


def int8_layers(model: GPT) -> dict[str, Int8Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, Int8Linear)}


def rounding_bound(layer: Int8Linear, rows: int, in_features: int) -> float:
    """How far layer's output may be from the exact product with its dequantized weight, relative to
    sum |w| |x| (+ |bias|): float32 sums of in_features products, then the scale and the bias (in_features + 2
    roundings of 2^-24); where the int8 kernel runs (few rows), also its input, scales and output rounded to the
    kernel's dtype (3 roundings of half its eps: 2^-8 for bf16)."""
    bound = (in_features + 2) * 2**-24
    if layer.kernel_dtype is not None and rows <= DEQUANTIZE_ABOVE_ROWS:
        bound += 3 * torch.finfo(layer.kernel_dtype).eps / 2
    return bound


def test_every_linear_and_the_head_become_int8_with_a_scale_per_output_channel(tiny_model, tiny_config):
    # rows of weights 1000 times apart: one scale for the whole tensor would round the small rows to zero
    row_scales = torch.logspace(-3, 0, 7)
    with torch.no_grad():
        for module in tiny_model.modules():
            if isinstance(module, torch.nn.Linear) and module is not tiny_model.lm_head:  # the head is wte: below
                module.weight *= row_scales.repeat(module.out_features // 7 + 1)[: module.out_features, None]
        tiny_model.transformer.wte.weight *= row_scales.repeat(50257 // 7 + 1)[:50257, None]
    model = quantized_copy(tiny_model, tiny_config)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert isinstance(model.lm_head, Int8Linear) and model.lm_head.weight.dtype == torch.int8
    # the embedding keeps its float weights (a step reads one row); the head's are its int8 copy
    torch.testing.assert_close(model.transformer.wte.weight, tiny_model.transformer.wte.weight)
    for name, layer in int8_layers(model).items():
        weight = tiny_model.get_submodule(name).weight.double()
        assert layer.weight.dtype == torch.int8 and layer.scales.shape == (layer.out_features,), name
        # round(w / scale) is within half a scale of w / scale, the scale max |w| / 127 of the weight's own row
        # (plus one float32 rounding of w / scale, at most 127.5 x 2^-24 of it)
        scales = weight.abs().amax(dim=1, keepdim=True) / 127
        assert ((dequantized(layer) - weight).abs() <= scales * (0.5 + 127.5 * 2**-24)).all(), name


@pytest.mark.parametrize("rows", [1, DEQUANTIZE_ABOVE_ROWS + 1])  # the int8 kernel, and dequantize-then-matmul
def test_int8_linear_computes_the_product_with_its_dequantized_weight(tiny_model, rows):
    generator = torch.Generator().manual_seed(0)
    for name, linear in tiny_model.named_modules():
        if not isinstance(linear, torch.nn.Linear):
            continue
        bias = None if linear.bias is None else torch.randn(linear.out_features, generator=generator)
        layer = Int8Linear.quantize(linear.weight, bias)
        x = torch.randn(rows, layer.in_features, generator=generator)
        weight, bias = dequantized(layer), 0 if bias is None else bias.double()
        with torch.inference_mode():
            got = layer(x)
        assert got.dtype == torch.float32
        bound = rounding_bound(layer, rows, layer.in_features) * (x.double().abs() @ weight.abs().T + abs(bias))
        assert ((got.double() - (x.double() @ weight.T + bias)).abs() <= bound).all(), name


def logits_tolerance(model: GPT, int8: GPT, idx: torch.Tensor, rows: int) -> torch.Tensor:
    """Per position of idx, how far int8's logits, its layers run on rows rows at a time, may be from model's (the
    dequantized copy's): each Linear on the way (4 a block, and the head) may be off by rounding_bound of its
    sum |w| |x|, and every block starts with a LayerNorm, which brings what it passes on back to unit size; so at
    most (their number) x rounding_bound of the head's sum |w| |x| (at the widest layer, the MLP's 4 x n_embd)."""
    inputs = []
    hook = model.lm_head.register_forward_hook(lambda module, args, output: inputs.append(args[0]))
    with torch.inference_mode():
        model(idx)
    hook.remove()
    magnitude = (inputs[0].abs() @ model.lm_head.weight.abs().T).amax(dim=-1)  # (B, T)
    config = model.config
    return (4 * config.n_layer + 1) * rounding_bound(int8.lm_head, rows, 4 * config.n_embd) * magnitude


@pytest.mark.parametrize("rows", [1, DEQUANTIZE_ABOVE_ROWS + 1])
def test_int8_logits_are_those_of_the_dequantized_weights(tiny_model, tiny_config, rows):
    idx = torch.randint(0, 50257, (1, rows), generator=torch.Generator().manual_seed(0))
    int8, reference = quantized_copy(tiny_model, tiny_config), dequantized_copy(tiny_model, tiny_config)
    with torch.inference_mode():
        expected, _ = reference(idx)
        got, _ = int8(idx)
    assert got.dtype == expected.dtype
    assert ((got - expected).abs() <= logits_tolerance(reference, int8, idx, rows)[..., None]).all()


def test_int8_greedy_decoding_picks_the_dequantized_models_best_tokens(tiny_model, tiny_config):
    """Where the two best logits are closer than twice the tolerance either may come first: at each step the token
    int8 picks is at most that far below the best of the reference's logits for the same context."""
    prompt = torch.randint(0, 50257, (2, 8), generator=torch.Generator().manual_seed(1))
    int8 = prepare_for_decoding(quantized_copy(tiny_model, tiny_config))
    tokens = torch.stack(list(generate(int8, prompt, 16, Sampling(temperature=0))), dim=1)
    reference = dequantized_copy(tiny_model, tiny_config)
    sequence = torch.cat([prompt, tokens], dim=1)
    with torch.inference_mode():
        logits = reference(sequence)[0][:, 7:-1]  # the logits that chose each new token
    rows = prompt.numel()  # the prefill's, the most any step ran: through the kernel, as every step did
    tolerance = logits_tolerance(reference, int8, sequence, rows)[:, 7:-1]
    shortfall = logits.amax(dim=-1) - logits.gather(-1, tokens[..., None])[..., 0]
    assert (shortfall <= 2 * tolerance).all()


@pytest.mark.slow
def test_compiled_int8_decoding_gives_the_same_tokens(tiny_model, tiny_config):
    idx = torch.randint(0, 50257, (2, 8), generator=torch.Generator().manual_seed(1))
    eager = prepare_for_decoding(quantized_copy(tiny_model, tiny_config))
    compiled = prepare_for_decoding(quantized_copy(tiny_model, tiny_config), compile=True)
    for sampling in (Sampling(temperature=0), Sampling(generator=torch.Generator().manual_seed(3))):
        expected = torch.stack(list(generate(eager, idx, 12, sampling)), dim=1)
        if sampling.generator is not None:
            sampling.generator.manual_seed(3)
        assert torch.equal(torch.stack(list(generate(compiled, idx, 12, sampling)), dim=1), expected)


SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """A tiny model trained on SENTENCE repeated until greedy decoding repeats it: its loss there is far below the
    ln(50257) = 10.8 of an untrained model, whatever that outputs."""
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=50257)
    model = GPT(config)
    tokens = torch.tensor(encode(" ".join([SENTENCE] * 3)))[None, :24]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0)
    for _ in range(30):
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return save_checkpoint(model.eval(), tmp_path_factory.mktemp("trained") / "trained")


def test_sample_and_eval_with_int8(trained_checkpoint, tmp_path):
    pinned = ["--device", "cpu", "--dtype", "float32"]
    float32 = greedy_sample(trained_checkpoint, *pinned, prompt="The quick brown", tokens=12)
    int8 = greedy_sample(trained_checkpoint, *pinned, "--quantize", "int8", prompt="The quick brown", tokens=12)
    learned = "The quick brown fox jumps over the lazy dog. The quick brown fox jumps\n"  # the training text's 12 next
    assert int8.stdout == float32.stdout == learned
    assert "int8 weights" in int8.stderr

    text = tmp_path / "text.txt"
    text.write_text(" ".join([SENTENCE] * 7))  # 70 tokens; --max-tokens 64 scores the first 65 in one window
    losses = {}
    for quantize in ([], ["--quantize", "int8"]):
        result = runner.invoke(
            app, ["eval", str(trained_checkpoint), str(text), "--json", *pinned, "--max-tokens", "64", *quantize]
        )
        assert result.exit_code == 0, result.output
        record = json.loads(result.stdout)
        losses[record["settings"]["quantize"]] = record["lm"]["loss"]
    assert losses[None] < 1  # far below what a head of zeros (or noise) gives: ln(50257) = 10.8
    model = load_checkpoint(trained_checkpoint)
    reference = dequantized_copy(model, model.config)
    tokens = encode(text.read_text())[:65]
    # a token's cross entropy moves by at most twice the largest change of a logit
    logits_error = logits_tolerance(reference, quantize_int8(model), torch.tensor([tokens[:64]]), rows=64).max()
    assert losses["int8"] == pytest.approx(evaluate_lm(reference, tokens)["loss"], abs=2 * logits_error.item())


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_unsupported_quantization_is_a_clear_error(tiny_checkpoint, command):
    result = runner.invoke(app, [command, *(["Hi", "--ckpt"] if command == "sample" else []), str(tiny_checkpoint),
                                 "--quantize", "int3"])  # fmt: skip
    assert result.exit_code == 1
    assert "--quantize int3 is not supported: use --quantize int8 or int4" in result.stderr
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


def greedy_sample(ckpt, *options: str, prompt: str = "ROMEO:", tokens: int = 24):
    result = runner.invoke(
        app, ["sample", prompt, "--ckpt", str(ckpt), "--temperature", "0", "--max-new-tokens", str(tokens), *options]
    )
    assert result.exit_code == 0, result.output
    return result


def test_sample_from_an_int8_checkpoint_is_sample_quantize_int8(tiny_checkpoint, int8_checkpoint):
    pinned = ["--device", "cpu", "--dtype", "float32"]
    expected = greedy_sample(tiny_checkpoint, "--quantize", "int8", *pinned)
    stored = greedy_sample(int8_checkpoint, *pinned)
    assert stored.stdout == expected.stdout and len(stored.stdout.strip()) > 0
    assert "int8 weights" in stored.stderr  # without --quantize: the checkpoint's own weights are int8
    assert greedy_sample(int8_checkpoint, "--quantize", "int8", *pinned).stdout == expected.stdout
    assert "bfloat16" in greedy_sample(int8_checkpoint, "--dtype", "bfloat16").stderr


def test_eval_of_an_int8_checkpoint_is_eval_quantize_int8(tiny_checkpoint, int8_checkpoint, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    records = []
    for ckpt, options in ((tiny_checkpoint, ["--quantize", "int8"]), (int8_checkpoint, []), (int8_checkpoint, ["--quantize", "int8"])):  # fmt: skip
        result = runner.invoke(
            app, ["eval", str(ckpt), str(text), "--json", "--device", "cpu", "--dtype", "float32", *options]
        )
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
            app, ["eval", str(ckpt), "--json", "--device", "cpu", "--dtype", "float32", "--max-tokens", "500", *options]
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
    written = {p.name for p in (tmp_path / "weights-int8").iterdir()}
    assert written == {"config.json", "gptkit.json", "model.safetensors", *TOKENIZER_FILES}


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_bad_input_is_one_line_and_writes_nothing(tiny_checkpoint, int8_checkpoint, tmp_path):
    folder = tiny_checkpoint.parent
    before = listing(folder)
    assert_one_line_error(quantize_command(tmp_path / "missing"), "does not exist")
    assert_one_line_error(quantize_command(int8_checkpoint, "--out", tmp_path / "again"), "holds int8 weights")
    made_from = f"quantize the float checkpoint it was made from ({tiny_checkpoint.resolve()})"
    assert_one_line_error(quantize_command(int8_checkpoint), made_from)
    assert_one_line_error(quantize_command(tiny_checkpoint), "exists: add --overwrite")
    assert_one_line_error(quantize_command(tiny_checkpoint, "--out", tiny_checkpoint, "--overwrite"), "is the checkpoint")
    assert_one_line_error(quantize_command(tiny_checkpoint, "--out", tiny_checkpoint / "config.json"), "is a file")
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
    assert_one_line_error(result, "cannot be trained: fine-tune the float checkpoint it was made from")
    assert not (tmp_path / "run").exists()


def test_transformers_does_not_load_an_int8_checkpoint_as_a_float_one(int8_checkpoint):
    from transformers import GPT2LMHeadModel

    # it skips the unknown quantization_config (with a warning), then refuses the (out, in) int8 weights, whose
    # shapes are not its Conv1D's (in, out)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        GPT2LMHeadModel.from_pretrained(int8_checkpoint)
