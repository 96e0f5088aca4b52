import errno
import hashlib
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptkit import files
from gptkit.checkpoint import tensors as tensor_files
from gptkit.checkpoint.folder import load_checkpoint, read_config, read_metadata, save_checkpoint
from gptkit.checkpoint.huggingface import convert_bin
from gptkit.checkpoint.locate import checkpoint_or_latest, find_latest_checkpoint
from gptkit.errors import GptkitError
from gptkit.model.gpt import GPT


def hf_model(path):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(path).eval()


def test_gptkit_checkpoint_opens_in_transformers(tiny_model, tiny_checkpoint):
    idx = torch.randint(0, 50257, (2, 24))
    ours, _ = tiny_model(idx)
    theirs = hf_model(tiny_checkpoint)(idx).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_transformers_checkpoint_opens_in_gptkit(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=48)).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = load_checkpoint(tmp_path / "hf")
    assert ours.config.block_size == 48 and ours.config.n_head == 2
    idx = torch.randint(0, 50257, (2, 20))
    assert torch.allclose(ours(idx)[0], hf(idx).logits, atol=1e-5)


def test_openai_style_keys_and_buffers(tiny_model, tiny_checkpoint, tmp_path):
    """The openai-community repos store keys without 'transformer.' and carry attn.bias buffers."""
    tensors = load_file(tiny_checkpoint / "model.safetensors")
    renamed = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    for i in range(tiny_model.config.n_layer):
        renamed[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        renamed[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    (tmp_path / "openai").mkdir()
    save_file(renamed, tmp_path / "openai" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "openai" / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    idx = torch.randint(0, 50257, (1, 10))
    assert torch.equal(load_checkpoint(tmp_path / "openai")(idx)[0], tiny_model(idx)[0])


def test_bare_safetensors_file(tiny_model, tiny_checkpoint, tmp_path):
    bare = tmp_path / "weights.safetensors"
    bare.write_bytes((tiny_checkpoint / "model.safetensors").read_bytes())
    model = load_checkpoint(bare)  # config from the file's metadata
    assert model.config == tiny_model.config
    idx = torch.randint(0, 50257, (1, 10))
    assert torch.equal(model(idx)[0], tiny_model(idx)[0])


def test_metadata(tiny_checkpoint):
    meta = read_metadata(tiny_checkpoint)
    assert meta["note"] == "test fixture" and "created" in meta and "gptkit_version" in meta
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_layer"] == 2 and config["tie_word_embeddings"]


def test_load_in_bfloat16(tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight


CHECKPOINT_FILES = ["model.safetensors", "config.json", "gptkit.json"]  # in the order save_checkpoint writes them


def fail_writing(monkeypatch, name: str):
    """Make save_checkpoint's write of the file `name` fail midway, as a full disk would: its temporary file is left
    half-written and the write raises ENOSPC inside files.atomic_path, which must clean up."""
    real_atomic_path = files.atomic_path

    @contextmanager
    def atomic_path_failing(path):
        with real_atomic_path(path) as tmp:
            yield tmp
            if Path(path).name == name:
                with open(tmp, "r+b") as f:
                    f.truncate(tmp.stat().st_size // 2)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    for module in (tensor_files, files):  # where save_tensors and write_json look it up
        monkeypatch.setattr(module, "atomic_path", atomic_path_failing)


def digests(folder) -> dict[str, str]:
    """The sha256 of each file in folder, by name (digests, so that a failed comparison prints in a line, even
    under CI=true, where pytest would diff the bytes in full)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def failed_save(model, ckpt, monkeypatch, name) -> dict[str, str]:
    """Save a changed model over ckpt with the write of `name` failing; the files of ckpt then (digests, by name)."""
    fail_writing(monkeypatch, name)
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(model, ckpt, {"note": "new"})
    return digests(ckpt)


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_failed_write_keeps_that_file_and_leaves_no_temporary_file(tiny_model, tiny_checkpoint, monkeypatch, name):
    before = digests(tiny_checkpoint)
    after = failed_save(tiny_model, tiny_checkpoint, monkeypatch, name)
    assert sorted(after) == sorted(before) and after[name] == before[name]
    load_checkpoint(tiny_checkpoint)


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_failed_save_keeps_the_whole_previous_checkpoint(tiny_model, tiny_checkpoint, monkeypatch, name):
    before = digests(tiny_checkpoint)
    assert failed_save(tiny_model, tiny_checkpoint, monkeypatch, name) == before


def test_missing_tensor(tiny_checkpoint):
    tensors = load_file(tiny_checkpoint / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_fc.weight"]
    save_file(tensors, tiny_checkpoint / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(GptkitError, match=r"missing tensors transformer\.h\.1\.mlp\.c_fc\.weight"):
        load_checkpoint(tiny_checkpoint)


def test_wrong_shape(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["n_embd"] = 128
    (tiny_checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(GptkitError, match="has shape"):
        load_checkpoint(tiny_checkpoint)


def test_truncated_file(tiny_checkpoint):
    weights = tiny_checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(GptkitError, match="truncated"):
        load_checkpoint(tiny_checkpoint)


def test_not_safetensors(tmp_path):
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10)
    with pytest.raises(GptkitError, match="not a safetensors file"):
        load_checkpoint(bogus)


def test_not_gpt2(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["model_type"] = "llama"
    (tiny_checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(GptkitError, match="'llama' model, not GPT-2"):
        read_config(tiny_checkpoint)


def test_missing_and_empty(tmp_path):
    with pytest.raises(GptkitError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(GptkitError, match="not a checkpoint"):
        load_checkpoint(tmp_path)


def test_find_latest_checkpoint(tiny_model, tmp_path):
    assert find_latest_checkpoint(tmp_path / "none") is None
    older = save_checkpoint(tiny_model, tmp_path / "a")
    newer = save_checkpoint(tiny_model, tmp_path / "b" / "run")
    os.utime(older / "model.safetensors", (1, 1))
    assert find_latest_checkpoint(tmp_path) == newer


def test_checkpoint_or_latest(tiny_model, tmp_path, monkeypatch):
    """sample's and serve's checkpoint: the one given, else the newest under checkpoints/, else one line on how."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GptkitError, match=r"^no checkpoint under checkpoints/: .* or give CKPT$"):
        checkpoint_or_latest(None, "CKPT")
    saved = save_checkpoint(tiny_model, tmp_path / "checkpoints" / "run")
    assert checkpoint_or_latest(None, "CKPT") == Path("checkpoints/run")
    assert checkpoint_or_latest(saved, "CKPT") == saved


def test_saved_files_get_the_usual_mode(tiny_model, tmp_path):
    """Atomic saves give files the mode a plain open() would (0666 less the umask), not mkstemp's owner-only 0600."""
    from gptkit.files import atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.json") as tmp:
            tmp.write_text("{}")
        save_checkpoint(tiny_model, tmp_path / "ckpt")
    finally:
        os.umask(old)
    for path in [tmp_path / "f.json", *(tmp_path / "ckpt").iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o644, path


ALIGNMENT = 64  # bytes: the widest vector loads torch's kernels make (AVX-512) want this, aligned


def misaligned(model) -> list[str]:
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return [name for name, t in tensors.items() if t.numel() and t.data_ptr() % ALIGNMENT]


@pytest.mark.parametrize("kind", ["float32", "bfloat16", "int8", "converted .bin"])
def test_every_loaded_tensor_is_64_byte_aligned(tiny_model, tmp_path, kind):
    """A tensor viewed in place from the file sits wherever its bytes are (8-byte aligned in safetensors): torch's
    AVX-512 int8 kernel crashed on such a weight. Every parameter and buffer of every kind of checkpoint is aligned."""
    from gptkit.model.int8 import quantize_int8

    if kind == "bfloat16":
        model = GPT(tiny_model.config).to(torch.bfloat16)
        model.load_state_dict(tiny_model.state_dict())
        ckpt = save_checkpoint(model, tmp_path / kind)
    elif kind == "int8":
        ckpt = save_checkpoint(
            quantize_int8(load_checkpoint(save_checkpoint(tiny_model, tmp_path / "f"))), tmp_path / kind
        )
    elif kind == "converted .bin":
        source = save_checkpoint(tiny_model, tmp_path / "source")
        ckpt = tmp_path / kind
        ckpt.mkdir()
        torch.save(load_file(source / "model.safetensors"), ckpt / "pytorch_model.bin")
        convert_bin(ckpt / "pytorch_model.bin", ckpt / "model.safetensors", tiny_model.config)
        (ckpt / "config.json").write_text((source / "config.json").read_text())
    else:
        ckpt = save_checkpoint(tiny_model, tmp_path / kind)
    for dtype in (torch.float32, torch.bfloat16):
        assert misaligned(load_checkpoint(ckpt, dtype=dtype)) == []


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
def test_loading_a_checkpoint_leaves_torch_dynamo_unimported(tiny_model, tmp_path, int8):
    """The model is built on the meta device and then given the loaded weights: initializing or quantizing it there
    (normal_, round on meta tensors) imported torch._dynamo, a second of every command's start that sample and eval
    do not need."""
    from gptkit.model.int8 import quantize_int8

    ckpt = save_checkpoint(quantize_int8(tiny_model) if int8 else tiny_model, tmp_path / "ckpt")
    code = (
        "import sys; from gptkit.checkpoint.folder import load_checkpoint; "
        f"load_checkpoint({str(ckpt)!r}); assert 'torch._dynamo' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
