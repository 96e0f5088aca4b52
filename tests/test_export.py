"""`gptkit export --format gguf`: the file holds llama.cpp's gpt2 layout, its weights are the checkpoint's within the
rounding of each --type, and transformers, reading it, computes gptkit's logits and greedy text."""

import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, lively
from typer.testing import CliRunner

from gptkit.checkpoint.folder import load_checkpoint, save_checkpoint
from gptkit.cli import app
from gptkit.model.config import GPTConfig
from gptkit.checkpoint.gguf import gguf_names
from gptkit.inference.chat_template import DEFAULT_TEMPLATE, check_template, format_prompt, jinja_template
from gptkit.model.int8 import quantize_int8
from gptkit.data.tokenizer import EOT_TOKEN, VOCAB_SIZE, encode

gguf = pytest.importorskip("gguf")  # gptkit[gguf], in the dev group

CONFIG = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=VOCAB_SIZE)
TYPES = ("f32", "f16", "bf16", "q8_0")
TEXT = "Hello, world!  It's 2024;\n\n\tthey'll pay $1,234.56. Ünïcödé 日本語 🤖<|endoftext|>A new one"
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("offline_hub")


@pytest.fixture(scope="module", autouse=True)
def read_once():
    """gguf.GGUFReader parses the 100,000 strings of the tokenizer in Python, seconds a file, and transformers reads
    a file twice a load: each file (as it is now) is read once here, for transformers too."""
    readers = {}
    reader_class = gguf.GGUFReader

    def reader(path, *args, **kwargs):
        stat = Path(path).stat()
        key = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)
        if key not in readers:
            readers[key] = reader_class(path, *args, **kwargs)
        return readers[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", reader)
        yield


def export(ckpt, *args) -> str:
    result = runner.invoke(app, ["export", str(ckpt), "--format", "gguf", *args])
    assert result.exit_code == 0, result.output
    return result.stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A lively tiny checkpoint (its greedy text varies) and its export to each type: {type: file}."""
    root = tmp_path_factory.mktemp("export")
    ckpt = save_checkpoint(lively(CONFIG), root / "lively")
    for t in TYPES:
        export(ckpt, "--type", t)
    return ckpt, {t: root / f"lively-{t}.gguf" for t in TYPES}


@cache
def read_gguf(path) -> tuple[dict, dict]:
    """(fields: name -> value, tensors: name -> (type, float32 tensor in the file's numpy shape)) of a GGUF file."""
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {
        t.name: (t.tensor_type, torch.tensor(gguf.quants.dequantize(t.data, t.tensor_type), dtype=torch.float32))
        for t in reader.tensors
    }
    return fields, tensors


def file_names(n_layer: int) -> dict[str, str]:
    """gptkit's tensor names -> the file's."""
    return {
        f"{ours}.{kind}": f"{theirs}.{kind}"
        for ours, theirs in gguf_names(n_layer).items()
        for kind in ("weight", "bias")
    }


@cache
def from_transformers(folder, name, block_size=CONFIG.block_size):
    from transformers import GPT2LMHeadModel

    # transformers reads gpt2.context_length as n_ctx, not n_positions (the position table's size), so a context
    # other than GPT-2's 1024 must be given
    return GPT2LMHeadModel.from_pretrained(folder, gguf_file=name, n_positions=block_size).eval()


def assert_fp32_noise(got: torch.Tensor, expected: torch.Tensor):
    """Equal but for float32 rounding in another order: sums of up to 256 products (the MLP's width), each rounded
    by at most 2^-24, move a logit by at most 2^-16 of the magnitudes involved, here the largest logit's."""
    torch.testing.assert_close(got, expected, atol=2**-16 * expected.abs().max().item(), rtol=0)


# --- the file ----------------------------------------------------------------------------------------------------


def test_file_holds_llama_cpps_gpt2(exported):
    _, files = exported
    fields, tensors = read_gguf(files["q8_0"])
    assert fields["general.architecture"] == gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2] == "gpt2"
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    hyper = {k.removeprefix("gpt2."): v for k, v in fields.items() if k.startswith("gpt2.")}
    assert hyper == {
        "context_length": 64,
        "embedding_length": 64,
        "block_count": 2,
        "feed_forward_length": 256,
        "attention.head_count": 4,
        "attention.layer_norm_epsilon": pytest.approx(1e-5),
    }
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == VOCAB_SIZE and tokens[EOT_TOKEN] == "<|endoftext|>" and tokens[220] == "Ġ"
    assert types[EOT_TOKEN] == gguf.TokenType.CONTROL and set(types[:EOT_TOKEN]) == {gguf.TokenType.NORMAL}
    assert len(fields["tokenizer.ggml.merges"]) == 50_000 and fields["tokenizer.ggml.merges"][0] == "Ġ t"
    assert fields["tokenizer.ggml.bos_token_id"] == fields["tokenizer.ggml.eos_token_id"] == EOT_TOKEN
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == jinja_template(DEFAULT_TEMPLATE)
    # every tensor of llama.cpp's gpt2 (the tied output head aside), under its name, and nothing else
    arch = [gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GPT2] if t != gguf.MODEL_TENSOR.OUTPUT]
    expected = {n.format(bid=i) + kind for n in arch for i in range(2) for kind in (".weight", ".bias")}
    expected -= {"token_embd.bias", "position_embd.bias"}
    assert set(tensors) == expected
    # matrices q8_0; vectors and the position embedding f32, as llama.cpp's converter writes them
    for name, (qtype, tensor) in tensors.items():
        want = "F32" if tensor.dim() == 1 or name.startswith("position_embd") else "Q8_0"
        assert qtype.name == want, name
    assert tensors["blk.0.attn_qkv.weight"][1].shape == (3 * 64, 64)  # nn.Linear's (out, in): llama.cpp's {in, out}


def elementwise_bound(w: torch.Tensor, type: str) -> torch.Tensor:
    """The most a weight can move when written as type, from the type's definition:
    f16 rounds to 11 significant bits (relative error <= 2^-11, and at most half its smallest step, 2^-25, below
    2^-14 where it has fewer bits); bf16 to 8 (<= 2^-8, with float32's range); q8_0 stores each block of 32 weights
    as round(w / d) * d16, with d = max|w| / 127 rounded to f16 as d16: |w - q d16| <= d / 2 + 127 |d - d16|,
    d / 2 = max / 254 and 127 |d - d16| <= max 2^-11 (or 127 2^-25 where d16 is subnormal)."""
    if type == "f32":
        return torch.zeros_like(w)
    if type == "f16":
        return w.abs() * 2**-11 + 2**-25
    if type == "bf16":
        return w.abs() * 2**-8
    blocks = w.reshape(*w.shape[:-1], -1, 32).abs().amax(-1, keepdim=True)
    bound = blocks * (1 / 254 + 2**-11) + 127 * 2**-25
    return bound.expand(*w.shape[:-1], -1, 32).reshape(w.shape) * (1 + 1e-6)


@pytest.mark.parametrize("type", TYPES)
def test_weights_are_the_checkpoints_within_the_types_rounding(exported, type):
    ckpt, files = exported
    _, tensors = read_gguf(files[type])
    state = load_checkpoint(ckpt).state_dict()
    names = file_names(CONFIG.n_layer)
    for ours, tensor in state.items():
        if ours == "lm_head.weight":
            continue  # tied: the file's token_embd
        qtype, stored = tensors[names[ours]]
        rounded = type if qtype.name != "F32" else "f32"
        assert (stored - tensor).abs().le(elementwise_bound(tensor, rounded)).all(), ours


# --- read back by transformers -------------------------------------------------------------------------------------


def first_order_bounds(model, idx, chosen, type) -> torch.Tensor:
    """For each chosen logit (batch, position, token), a bound on how far rounding the weights to type moves it:
    to first order the change is sum_w dz/dw * dw, so |dz| <= sum_w |dz/dw| * bound(w), bound from
    elementwise_bound, over the matrices the type applies to (not the f32 position embedding)."""
    matrices = [p for n, p in model.named_parameters() if p.dim() == 2 and n != "transformer.wpe.weight"]
    bounds = [elementwise_bound(p.detach(), type) for p in matrices]
    out = []
    for b, t, v in chosen:
        model.zero_grad()
        model(idx)[0][b, t, v].backward()
        out.append(sum((p.grad.abs() * bound).sum() for p, bound in zip(matrices, bounds)))
    return torch.stack(out)


@pytest.mark.parametrize("type", TYPES)
def test_transformers_computes_gptkits_logits(exported, type):
    ckpt, files = exported
    model = load_checkpoint(ckpt)
    idx = torch.randint(0, VOCAB_SIZE, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(idx)[0]
        got = from_transformers(ckpt.parent, files[type].name)(idx).logits
    difference = (got - expected).abs()
    print(f"{type}: largest logit difference {difference.max():.3g} (logits up to {expected.abs().max():.3g})")
    if type == "f32":
        assert_fp32_noise(got, expected)  # the same weights
        return
    # The most likely token and another at every position, each within twice its first-order bound: the
    # second-order terms are a fraction of about the rounding error (2^-7 at most) of the first.
    top = expected.argmax(dim=-1)
    others = torch.randint(0, VOCAB_SIZE, (2, 12), generator=torch.Generator().manual_seed(1))
    chosen = [(b, t, int(v)) for b in range(2) for t in range(12) for v in (top[b, t], others[b, t])]
    bounds = first_order_bounds(model, idx, chosen, type)
    moved = torch.stack([difference[b, t, v] for b, t, v in chosen])
    assert moved.le(2 * bounds + 1e-4).all(), (moved / bounds).max()
    assert moved.max() > 0  # rounded: the check above compared something


def test_greedy_text_and_tokens_of_the_f32_file_are_gptkits(exported):
    from transformers import AutoTokenizer

    ckpt, files = exported
    tokenizer = AutoTokenizer.from_pretrained(ckpt.parent, gguf_file=files["f32"].name)
    assert tokenizer(TEXT)["input_ids"] == encode(TEXT)
    prompt = "Hello, my name is"
    args = ["sample", prompt, "--ckpt", str(ckpt), "--temperature", "0", "--max-new-tokens", "20"]
    result = runner.invoke(app, [*args, "--dtype", "float32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    idx = tokenizer(prompt, return_tensors="pt")["input_ids"]
    generated = from_transformers(ckpt.parent, files["f32"].name).generate(
        idx, attention_mask=torch.ones_like(idx), do_sample=False, max_new_tokens=20, pad_token_id=EOT_TOKEN
    )
    assert len(set(generated[0, idx.size(1) :].tolist())) > 10  # a varied text, not one token repeated
    assert result.stdout == tokenizer.decode(generated[0]) + "\n"


def test_padded_vocabulary_is_cut(tmp_path):
    config = GPTConfig(**{**CONFIG.to_dict(), "vocab_size": 50304})  # nanoGPT's padding to a multiple of 64
    model = lively(config)
    ckpt = save_checkpoint(model, tmp_path / "padded")
    assert "vocabulary cut from 50304 to GPT-2's 50257 tokens" in export(ckpt, "--type", "f32")
    fields, tensors = read_gguf(tmp_path / "padded-f32.gguf")
    assert len(fields["tokenizer.ggml.tokens"]) == VOCAB_SIZE  # llama.cpp wants a token a row
    wte = model.transformer.wte.weight[:VOCAB_SIZE]
    torch.testing.assert_close(tensors["token_embd.weight"][1], wte, atol=0, rtol=0)
    assert "output.weight" not in tensors  # still tied: the cut embedding is the head


def test_the_checkpoints_own_chat_template_is_written(tmp_path, tiny_model):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = check_template({"user": "Q: «{content}»\n", "assistant": "A: {content}<|endoftext|>"}, "test")
    ckpt = save_checkpoint(tiny_model, tmp_path / "own", {"chat_template": template})
    export(ckpt, "--type", "f16")
    fields, _ = read_gguf(tmp_path / "own-f16.gguf")
    assert fields["tokenizer.chat_template"] == jinja_template(template)
    messages = [("system", "Be brief."), ("user", "2+2?"), ("assistant", "4"), ("user", "{x}\n")]
    jinja = ImmutableSandboxedEnvironment().from_string(fields["tokenizer.chat_template"])
    as_dicts = [{"role": role, "content": content} for role, content in messages]
    assert jinja.render(messages=as_dicts, add_generation_prompt=True) == format_prompt(template, messages)


def test_int8_checkpoint_exports_its_own_output_head(tmp_path):
    model = quantize_int8(lively(CONFIG))
    ckpt = save_checkpoint(model, tmp_path / "int8")
    export(ckpt, "--type", "f32")
    export(ckpt, "--type", "q8_0")
    _, f32 = read_gguf(tmp_path / "int8-f32.gguf")
    _, q8 = read_gguf(tmp_path / "int8-q8_0.gguf")
    head = model.lm_head.dequantized()  # int8 x scale: not the token embedding, so stored as output.weight
    torch.testing.assert_close(f32["output.weight"][1], head, atol=0, rtol=0)
    assert (q8["output.weight"][1] - head).abs().le(elementwise_bound(head, "q8_0")).all()
    torch.testing.assert_close(f32["token_embd.weight"][1], model.transformer.wte.weight, atol=0, rtol=0)
    # 2 x 24 rows: more than int8.DEQUANTIZE_ABOVE_ROWS, so Int8Linear multiplies by its dequantized weight in fp32
    idx = torch.randint(0, VOCAB_SIZE, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = from_transformers(tmp_path, "int8-f32.gguf")(idx).logits
        assert_fp32_noise(got, model(idx)[0])


# --- refusals ------------------------------------------------------------------------------------------------------


def test_without_the_gguf_package_it_names_the_extra_before_importing_torch(tiny_checkpoint):
    code = (
        "import sys; sys.modules['gguf'] = None  # as if not installed\n"
        f"from gptkit.cli import main; sys.argv = ['gptkit', 'export', {str(tiny_checkpoint)!r}, '--format', 'gguf']\n"
        "try: main()\nexcept SystemExit as e: code = e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert_one_line_error(result, "needs the gguf package: pip install 'gptkit[gguf]' (from a clone: uv sync --extra")


def test_refusals(tmp_path, tiny_checkpoint):
    small = save_checkpoint(
        lively(GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=16, vocab_size=1000)), tmp_path / "small"
    )
    huge = lively(CONFIG)
    with torch.no_grad():
        huge.transformer.h[0].mlp.c_fc.weight[0, 0] = 1e5  # beyond f16
    huge = save_checkpoint(huge, tmp_path / "huge")
    (tmp_path / "taken.gguf").write_text("")
    cases = [
        ([small], "has a vocabulary of 1000 tokens, fewer than GPT-2's 50257"),
        ([tiny_checkpoint, "--out", str(tmp_path / "taken.gguf")], "taken.gguf exists: add --overwrite"),
        ([huge, "--type", "f16"], "transformer.h.0.mlp.c_fc.weight holds values beyond f16's range"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["export", str(args[0]), "--format", "gguf", *args[1:]])
        assert_one_line_error(result, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge", "small", "taken.gguf", "tiny"]  # nothing left
    assert "wrote" in export(huge, "--type", "bf16")  # bf16 has float32's range


def test_output_is_one_line_and_overwrite_replaces(tiny_checkpoint, tmp_path):
    out = tmp_path / "model.gguf"
    first = export(tiny_checkpoint, "--out", str(out))
    assert first.count("\n") == 1 and first.startswith(f"wrote {out}: ") and "(f16)" in first
    export(tiny_checkpoint, "--out", str(out), "--type", "q8_0", "--overwrite")
    assert read_gguf(out)[0]["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
