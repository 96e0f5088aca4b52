"""nanoGPT's and build-nanogpt's checkpoints in gptkit (nanogpt.py, `gptkit convert`, and sample / eval / train
reading a .pt file directly).

nanoGPT is not a package, so its files are made here from the format's facts: Reference is a GPT-2 written for these
tests from what nanoGPT's model.py and build-nanogpt's train_gpt2.py compute and save (their module names, nn.Linear
weights, the exact or tanh GELU, biases or none, the tied head, the causal-mask buffer, a vocabulary padded to 50304),
apart from gptkit's model: attention by explicit matmuls, the loss by F.cross_entropy over every row. It trains a few
AdamW steps and is saved as their train.py's do (torch.save of the same dict), and the loss gptkit computes from the
file must be the one Reference computes from its own weights.
"""

import json
import math
import os
import sys
import types
import zipfile
from dataclasses import dataclass, field, make_dataclass

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error
from torch import nn
from torch.nn import functional as F
from typer.testing import CliRunner

from gptkit.checkpoint.folder import load_checkpoint, read_config, read_metadata
from gptkit.cli import app
from gptkit.evaluation.loss import lm_windows
from gptkit.checkpoint.nanogpt import read_nanogpt_file
from gptkit.data.tokenizer import VOCAB_SIZE, encode
from gptkit.training.runcheck import run_name

PADDED_VOCAB = 50304  # nanoGPT's and build-nanogpt's 50257 rounded up to a multiple of 64
SHAPE = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=PADDED_VOCAB)
# The eval's loss against Reference's: both in fp32, their sums in other orders (SDPA against explicit matmuls, a
# chunked log-sum-exp over the vocabulary against F.cross_entropy's). fp32 rounds each result to within 2^-24 (6e-8)
# of its size; a token's loss (~12 here) comes from logits of ~13 through two blocks and a log-sum-exp of 50304 terms,
# a few tens of roundings deep, so it may be off by ~30 x 6e-8 x 13 ~ 2e-5 at worst, and so may the mean over the
# ~800 tokens scored. TOLERANCE is that bound; the differences measured are ~1e-7 (of either sign, they average out).
# The logits are compared too, where no average hides a difference: within 1e-5 of the largest (30 roundings: 2e-6).
TOLERANCE = 2e-5


class ReferenceBlock(nn.Module):
    def __init__(self, n_head: int, n_embd: int, block_size: int, bias: bool, exact_gelu: bool, mask_buffer: bool):
        super().__init__()
        self.n_head, self.exact_gelu = n_head, exact_gelu
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.attn.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        if mask_buffer:  # nanoGPT's, where torch has no scaled_dot_product_attention: saved as attn.bias
            self.attn.register_buffer("bias", torch.tril(torch.ones(block_size, block_size))[None, None])
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.mlp.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.reshape(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(C // self.n_head)
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        y = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
        x = x + self.attn.c_proj(y)
        h = F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="none" if self.exact_gelu else "tanh")
        return x + self.mlp.c_proj(h)


class Reference(nn.Module):
    """A GPT-2 with nanoGPT's state-dict names, as its model.py and build-nanogpt's build it (see the docstring)."""

    def __init__(self, n_layer, n_head, n_embd, block_size, vocab_size, bias=True, exact_gelu=True, mask_buffer=False):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, n_embd),
                wpe=nn.Embedding(block_size, n_embd),
                h=nn.ModuleList(
                    ReferenceBlock(n_head, n_embd, block_size, bias, exact_gelu, mask_buffer) for _ in range(n_layer)
                ),
                ln_f=nn.LayerNorm(n_embd, bias=bias),
            )
        )
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        torch.manual_seed(0)
        with torch.no_grad():  # wide weights: GELU's inputs reach the range where its two forms differ
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    p.normal_(0, 0.5 if "c_fc" in name or "wte" in name or "wpe" in name else 0.3)
                else:  # layer norms' scales about 1, biases about 0
                    p.normal_(1.0 if "ln" in name and name.endswith("weight") else 0.0, 0.1)

    def forward(self, idx, targets=None):
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.size(1)))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)


def trained(reference: Reference, tokens: np.ndarray, steps: int = 3) -> torch.optim.AdamW:
    """reference after a few AdamW steps on windows of tokens; the optimizer (its state is saved, as nanoGPT does)."""
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    T = reference.transformer.wpe.weight.size(0)
    data = torch.from_numpy(tokens.astype(np.int64))
    for step in range(steps):
        starts = torch.arange(4) * T + step
        x = torch.stack([data[s : s + T] for s in starts])
        y = torch.stack([data[s + 1 : s + T + 1] for s in starts])
        reference(x, y).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return optimizer


@torch.no_grad()
def reference_loss(reference: Reference, tokens: np.ndarray) -> float:
    """The mean next-token loss over the windows gptkit eval scores (its context, no overlap), computed by Reference."""
    T = reference.transformer.wpe.weight.size(0)
    total, count = 0.0, 0
    for begin, end, n_scored in lm_windows(len(tokens), T, T):
        window = torch.from_numpy(tokens[begin : end + 1].astype(np.int64))[None]
        losses = reference(window[:, :-1], window[:, 1:])[0, -n_scored:]
        total += losses.double().sum().item()
        count += n_scored
    return total / count


@pytest.fixture
def tokens(text) -> np.ndarray:
    return np.array(encode(text.read_text()[:3000]), dtype=np.uint16)


@pytest.fixture
def short_text(tmp_path, text):
    path = tmp_path / "short.txt"
    path.write_text(text.read_text()[:3000])
    return path


def save_nanogpt(path, reference: Reference, optimizer, bias=True, compiled=False, iter_num=3):
    """torch.save of the dict nanoGPT's train.py saves as out_dir/ckpt.pt (its raw_model's state dict: under
    torch.compile, with the names of the compiled wrapper, `_orig_mod.`...)."""
    model = torch.compile(reference) if compiled else reference
    args = dict(SHAPE, bias=bias, dropout=0.0)
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "model_args": dict(
            n_layer=args["n_layer"],
            n_head=args["n_head"],
            n_embd=args["n_embd"],
            block_size=args["block_size"],
            bias=bias,
            vocab_size=args["vocab_size"],
            dropout=0.0,
        ),
        "iter_num": iter_num,
        "best_val_loss": torch.tensor(7.25),
        "config": {"out_dir": "out", "batch_size": 4, "learning_rate": 1e-2, "compile": compiled, "dtype": "float32"},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


@dataclass
class GPTConfig:
    """build-nanogpt's GPTConfig, by its fields."""

    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768


def pickled_as(monkeypatch, cls, module: str):
    """cls pickled under module.GPTConfig (build-nanogpt's script run as __main__, or train_gpt2 / model imported)."""
    target = sys.modules.get(module)
    if target is None:
        target = types.ModuleType(module)
        monkeypatch.setitem(sys.modules, module, target)
    monkeypatch.setattr(cls, "__module__", module)
    monkeypatch.setattr(target, cls.__name__, cls, raising=False)


def save_build_nanogpt(path, reference: Reference, monkeypatch, module="__main__", config=None, step=3):
    """torch.save of the dict build-nanogpt's train_gpt2.py saves as log/model_XXXXX.pt."""
    pickled_as(monkeypatch, GPTConfig, module)
    config = config or GPTConfig(**{k: SHAPE[k] for k in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd")})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": reference.state_dict(), "config": config, "step": step, "val_loss": 6.5}, path)
    return path


def eval_loss(ckpt, text) -> float:
    result = CliRunner().invoke(app, ["eval", str(ckpt), str(text), "--json", "--device", "cpu", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["lm"]["loss"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# --- the loss: gptkit's from the file = nanoGPT's model's from its weights ------------------------------------------


@pytest.mark.parametrize(
    "bias, compiled, mask_buffer",
    [
        (True, False, False),
        pytest.param(False, True, False, marks=pytest.mark.slow),  # the other kinds of file: in .ci/run
        pytest.param(True, True, True, marks=pytest.mark.slow),
    ],
)
def test_nanogpt_checkpoint_gives_nanogpts_loss(tmp_path, tokens, short_text, bias, compiled, mask_buffer):
    reference = Reference(**SHAPE, bias=bias, exact_gelu=True, mask_buffer=mask_buffer)
    optimizer = trained(reference, tokens)
    ckpt = save_nanogpt(tmp_path / "out" / "ckpt.pt", reference, optimizer, bias=bias, compiled=compiled)
    names = set(torch.load(ckpt, weights_only=True)["model"])
    assert compiled == all(name.startswith("_orig_mod.") for name in names)
    assert any(name.endswith(".attn.bias") for name in names) == mask_buffer
    assert any(name.endswith("c_fc.bias") for name in names) == bias

    expected = reference_loss(reference, tokens)
    direct = eval_loss(ckpt, short_text)  # converted on the fly
    result = run("convert", ckpt)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "ckpt"  # the default --out: SRC without .pt, beside it
    converted = eval_loss(folder, short_text)
    print(f"bias={bias} compiled={compiled}: loss {expected:.6f}, gptkit - reference {direct - expected:+.2e}")
    assert direct == pytest.approx(expected, abs=TOLERANCE)
    assert converted == direct  # the folder holds the same fp32 weights

    # the logits too, where no average hides a difference: nanoGPT's exact GELU, which the tanh approximation (GPT-2's,
    # gptkit's default) is told apart from
    window = torch.from_numpy(tokens[: SHAPE["block_size"]].astype(np.int64))[None]
    with torch.no_grad():
        ours, exact = load_checkpoint(ckpt)(window)[0], reference(window)
        for block in reference.transformer.h:
            block.exact_gelu = False
        tanh = reference(window)
    error, gap = (ours - exact).abs().max().item(), (tanh - exact).abs().max().item()
    print(f"logits: largest {exact.abs().max().item():.1f}, gptkit - reference {error:.1e}, tanh GELU's {gap:.1e}")
    assert error < 1e-5 * exact.abs().max().item() and gap > 100 * error

    config = json.loads((folder / "config.json").read_text())
    assert config["activation_function"] == "gelu" and config["vocab_size"] == PADDED_VOCAB
    meta = read_metadata(folder)
    assert meta["step"] == 3 and meta["converted_from"]["format"] == "nanoGPT"
    assert meta["converted_from"]["val_loss"] == 7.25


def test_build_nanogpt_checkpoint_gives_its_loss(tmp_path, tokens, short_text, monkeypatch):
    reference = Reference(**SHAPE, bias=True, exact_gelu=False)
    trained(reference, tokens)
    ckpt = save_build_nanogpt(tmp_path / "log" / "model_00003.pt", reference, monkeypatch)
    assert b"__main__\nGPTConfig" in zipfile.ZipFile(ckpt).read("model_00003/data.pkl")
    expected = reference_loss(reference, tokens)
    loss = eval_loss(ckpt, short_text)
    print(f"build-nanogpt: loss {expected:.6f}, gptkit - reference {loss - expected:+.2e}")
    assert loss == pytest.approx(expected, abs=TOLERANCE)
    assert read_config(ckpt).activation == "gelu_new"


@pytest.mark.parametrize("module", ["train_gpt2", "model"])
def test_build_nanogpt_config_imported_from_its_module(tmp_path, tokens, monkeypatch, module):
    reference = Reference(**SHAPE, bias=True, exact_gelu=False)
    ckpt = save_build_nanogpt(tmp_path / "model_05000.pt", reference, monkeypatch, module=module, step=5000)
    original = read_nanogpt_file(ckpt)
    assert (original.format, original.step, original.val_loss) == ("build-nanogpt", 5000, 6.5)
    assert original.config.n_embd == SHAPE["n_embd"] and original.config.vocab_size == PADDED_VOCAB


# nanoGPT's GPTConfig (model.py's), by its fields, as a script of one's own might pickle it
NanoGPTConfig = make_dataclass(
    "GPTConfig",
    [
        *((name, int) for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd")),
        ("dropout", float, field(default=0.0)),
        ("bias", bool, field(default=True)),
    ],
)


def test_a_pickled_nanogpt_config_is_nanogpts_model(tmp_path, monkeypatch):
    pickled_as(monkeypatch, NanoGPTConfig, "model")
    path = tmp_path / "ckpt.pt"
    saved = {"model": Reference(**SHAPE, bias=False).state_dict(), "config": NanoGPTConfig(**SHAPE, bias=False)}
    torch.save({**saved, "iter_num": 7}, path)
    original = read_nanogpt_file(path)
    assert (original.format, original.config.activation, original.bias, original.step) == ("nanoGPT", "gelu", False, 7)


def test_transformers_reads_the_converted_folder(tmp_path, tokens):
    """The converted folder is a GPT-2 folder transformers computes the same with: activation_function "gelu" is its
    exact GELU, the zero biases of a bias=False model are biases like any."""
    from transformers import GPT2LMHeadModel

    reference = Reference(**SHAPE, bias=False, exact_gelu=True)
    ckpt = save_nanogpt(tmp_path / "ckpt.pt", reference, trained(reference, tokens), bias=False)
    assert run("convert", ckpt, "--out", tmp_path / "converted").exit_code == 0
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "converted").eval()
    window = torch.from_numpy(tokens[: SHAPE["block_size"]].astype(np.int64))[None]
    with torch.no_grad():
        ours, theirs = reference(window), hf(window).logits
    assert (ours - theirs).abs().max().item() < 1e-4 * ours.abs().max().item()


# --- every command takes the file ------------------------------------------------------------------------------------


@pytest.fixture
def nanogpt_file(tmp_path, tokens):
    reference = Reference(**SHAPE, bias=True, exact_gelu=True)
    return save_nanogpt(tmp_path / "out" / "ckpt.pt", reference, trained(reference, tokens))


def test_sample_from_the_file_equals_sample_from_the_converted_folder(tmp_path, nanogpt_file):
    assert run("convert", nanogpt_file, "--out", tmp_path / "folder").exit_code == 0
    texts = []
    for ckpt in (nanogpt_file, tmp_path / "folder"):
        result = run(
            "sample",
            "ROMEO:",
            "--ckpt",
            ckpt,
            "--temperature",
            "0",
            "--max-new-tokens",
            "12",
            "--dtype",
            "float32",
            "--device",
            "cpu",
        )
        assert result.exit_code == 0, result.output
        texts.append(result.stdout)
    assert texts[0] == texts[1] and texts[0].startswith("ROMEO:") and len(texts[0]) > len("ROMEO:")


def test_train_from_the_file(tmp_path, nanogpt_file, short_text):
    out = tmp_path / "run"
    result = run(
        "train",
        short_text,
        "--model",
        nanogpt_file,
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--out",
        out,
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--eval-every",
        "0",
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["activation_function"] == "gelu" and config["n_embd"] == SHAPE["n_embd"]
    assert run_name(str(short_text), str(nanogpt_file)) == "short-ckpt-finetuned"  # the default --out's name
    base = load_checkpoint(nanogpt_file)
    tuned = load_checkpoint(out)
    assert not torch.equal(base.transformer.h[0].mlp.c_fc.weight, tuned.transformer.h[0].mlp.c_fc.weight)


def test_commands_that_need_a_folder_say_convert(tmp_path, nanogpt_file):
    for args in (["inspect", nanogpt_file], ["quantize", nanogpt_file, "--out", tmp_path / "q"]):
        assert_one_line_error(run(*args), f"gptkit convert {nanogpt_file}")
    assert not (tmp_path / "q").exists()


def test_sampling_never_draws_the_padding(tmp_path, nanogpt_file):
    """The padded rows' logits are cut off before sampling: here they are made the largest, and every token drawn
    is still one of GPT-2's (a padding id would not decode)."""
    model, hidden = load_checkpoint(nanogpt_file), {}
    model.transformer.ln_f.register_forward_hook(lambda module, args, out: hidden.setdefault("last", out[0, -1]))
    model(torch.tensor([encode("ROMEO:")]))
    saved = torch.load(nanogpt_file, weights_only=True)
    saved["model"]["transformer.wte.weight"][VOCAB_SIZE:] = 100 * hidden["last"] / hidden["last"].norm()
    torch.save(saved, nanogpt_file)
    with torch.no_grad():
        logits = load_checkpoint(nanogpt_file)(torch.tensor([encode("ROMEO:")]))[0][0, -1]
    assert logits.argmax().item() >= VOCAB_SIZE  # the padding would win
    for extra in ([], ["--quantize", "int8"]):
        result = run(
            "sample",
            "ROMEO:",
            "--ckpt",
            nanogpt_file,
            "--temperature",
            "0",
            "--max-new-tokens",
            "8",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            *extra,
        )
        assert result.exit_code == 0, result.output


# --- refusals: one line, nothing run, nothing written -----------------------------------------------------------------


class Payload:
    """A pickle that would make a folder when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@dataclass
class TrainConfig:
    """A dataclass gptkit does not know."""

    learning_rate: float = 6e-4


@pytest.mark.parametrize("what", ["payload", "dataclass", "payload as model"])
def test_other_pickled_objects_are_refused_and_never_run(tmp_path, monkeypatch, what):
    marker = tmp_path / "pwned"
    reference = Reference(**SHAPE)
    saved = {"model": reference.state_dict(), "model_args": dict(SHAPE, bias=True, dropout=0.0), "iter_num": 1}
    if what == "payload":
        saved["config"] = Payload(marker)
    elif what == "dataclass":
        saved["config"] = TrainConfig()
    else:
        saved["model"]["transformer.wte.weight"] = Payload(marker)
    path = tmp_path / "ckpt.pt"
    torch.save(saved, path)
    name = f"{os.mkdir.__module__}.mkdir" if "payload" in what else f"{TrainConfig.__module__}.TrainConfig"
    for args in (["convert", path], ["eval", path, tmp_path], ["sample", "--ckpt", path]):
        result = run(*args)
        assert_one_line_error(result, f"{path}: refused: its pickle names {name}")
        assert "nothing in it was run" in result.stderr
    assert not marker.exists() and not (tmp_path / "ckpt").exists()


def test_a_gptconfig_with_other_values_is_refused(tmp_path, monkeypatch):
    reference = Reference(**SHAPE)
    config = GPTConfig(block_size=32, vocab_size=PADDED_VOCAB, n_layer="2", n_head=2, n_embd=32)
    ckpt = save_build_nanogpt(tmp_path / "model.pt", reference, monkeypatch, config=config)
    assert_one_line_error(run("convert", ckpt), "its GPTConfig's n_layer is '2', not a positive whole number")
    config.n_layer, config.rope = 2, True
    ckpt = save_build_nanogpt(tmp_path / "model.pt", reference, monkeypatch, config=config)
    assert_one_line_error(run("convert", ckpt), "its GPTConfig has rope, which gptkit's GPT-2 does not have")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s["model_args"].update(vocab_size=65), "a vocabulary of 65 tokens, not GPT-2's 50257"),
        (lambda s: s["model_args"].pop("n_head"), "model_args's n_head is missing"),
        (lambda s: s.pop("model_args"), "neither nanoGPT's 'model_args' nor build-nanogpt's pickled GPTConfig"),
        (
            lambda s: s["model"].pop("transformer.h.1.mlp.c_fc.weight"),
            "missing tensors transformer.h.1.mlp.c_fc.weight",
        ),
        (
            lambda s: s["model"].update({"transformer.h.0.attn.c_proj.weight": torch.zeros(32, 31)}),
            "has shape (32, 31)",
        ),
    ],
)
def test_wrong_contents_are_one_line(tmp_path, change, message):
    reference = Reference(**SHAPE)
    saved = {"model": reference.state_dict(), "model_args": dict(SHAPE, bias=True, dropout=0.0), "iter_num": 1}
    change(saved)
    path = tmp_path / "ckpt.pt"
    torch.save(saved, path)
    assert_one_line_error(run("convert", path), message)
    assert not (tmp_path / "ckpt").exists()


def test_damaged_files_are_one_line(tmp_path, nanogpt_file):
    data = nanogpt_file.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    for path in (truncated, text):
        for args in (["convert", path], ["eval", path, path], ["sample", "--ckpt", path]):
            assert_one_line_error(run(*args), f"{path} is not a PyTorch checkpoint, or it is truncated or damaged")
    # a whole zip whose pickle is cut short
    cut = tmp_path / "cut.pt"
    with zipfile.ZipFile(nanogpt_file) as source, zipfile.ZipFile(cut, "w") as target:
        for item in source.infolist():
            content = source.read(item)
            target.writestr(item, content[: len(content) // 2] if item.filename.endswith("data.pkl") else content)
    assert_one_line_error(run("convert", cut), f"{cut} is damaged or not a PyTorch checkpoint")


def test_out_that_exists_needs_overwrite(tmp_path, nanogpt_file):
    out = tmp_path / "converted"
    assert run("convert", nanogpt_file, "--out", out).exit_code == 0
    weights = (out / "model.safetensors").read_bytes()
    assert_one_line_error(run("convert", nanogpt_file, "--out", out), f"{out} exists: add --overwrite")
    assert (out / "model.safetensors").read_bytes() == weights
    result = run("convert", nanogpt_file, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "nanoGPT's" in result.stderr and "step 3, val loss 7.2500" in result.stderr
    (tmp_path / "file").write_text("")
    assert_one_line_error(run("convert", nanogpt_file, "--out", tmp_path / "file"), "is a file: give a folder")
    assert_one_line_error(run("convert", out / "model.safetensors"), "is not a nanoGPT or build-nanogpt checkpoint")
    assert_one_line_error(run("convert", tmp_path / "missing.pt"), "does not exist")
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # atomic_dir's temporary folders are gone


def test_convert_reads_the_file_once(tmp_path, nanogpt_file, monkeypatch):
    from gptkit.checkpoint import nanogpt

    reads, load_pickle = [], nanogpt.load_pickle
    monkeypatch.setattr(nanogpt, "load_pickle", lambda path: reads.append(path) or load_pickle(path))
    assert run("convert", nanogpt_file, "--out", tmp_path / "converted").exit_code == 0
    assert reads == [nanogpt_file]
