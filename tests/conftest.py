import subprocess
from pathlib import Path

import pytest
import torch

from gptkit.checkpoint.folder import save_checkpoint
from gptkit.model.gpt import GPT, GPTConfig

SHAKESPEARE_PATH = Path(__file__).resolve().parents[1] / "data" / "input.txt"


def assert_one_line_error(result, message: str):
    """result, a failed command (a typer CliRunner result or a subprocess.CompletedProcess), exited non-zero with
    exactly one line on stderr, 'error: ...' containing message, and no traceback anywhere."""
    if isinstance(result, subprocess.CompletedProcess):
        code, stdout, stderr = result.returncode, result.stdout or "", result.stderr or ""
    else:
        code, stdout, stderr = result.exit_code, result.stdout, result.stderr
    stdout, stderr = (s.decode() if isinstance(s, bytes) else s for s in (stdout, stderr))
    lines = stderr.splitlines()
    assert code != 0, f"exit code {code}\n{stdout}{stderr}"
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert "Traceback" not in stdout + stderr, stdout + stderr


@pytest.fixture(scope="session", autouse=True)
def inductor_cache_dir(tmp_path_factory):
    """torch.compile's on-disk cache (Inductor's, with Triton's inside it) of this session alone, never the user's
    /tmp/torchinductor_<user>: set in the environment, so that the commands tests start as subprocesses use it too."""
    path = tmp_path_factory.mktemp("torchinductor")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TORCHINDUCTOR_CACHE_DIR", str(path))
        env.delenv("TRITON_CACHE_DIR", raising=False)
        yield path


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test tokenizes into a cache of its own, never the user's ~/.cache/gptkit."""
    monkeypatch.setenv("GPTKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def text(tmp_path):
    """The first 40 KB of Shakespeare: about 11k tokens."""
    path = tmp_path / "shakespeare.txt"
    path.write_text(SHAKESPEARE_PATH.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    return path


@pytest.fixture
def tiny_config() -> GPTConfig:
    """A GPT-2 shaped model small enough for tests: the real vocabulary, 2 layers, 64 dims, 64 positions."""
    return GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=50257)


@pytest.fixture
def tiny_model(tiny_config) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config).eval()


@pytest.fixture
def offline_hub(monkeypatch):
    """No request to the Hugging Face hub. huggingface_hub reads HF_HUB_OFFLINE once, when first imported, so its
    constant is set too, and put back afterwards (a test of downloads later in the same process needs it off)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def lively(config: GPTConfig) -> GPT:
    """A model of config whose weight matrices are drawn wider than at initialization, so that its greedy text
    changes with the context (a fresh model's near-uniform logits repeat one token): comparing greedy text then
    compares models."""
    torch.manual_seed(0)
    model = GPT(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0, 1.0 if name == "transformer.wte.weight" else 0.3)
    return model


@pytest.fixture
def lively_model(tiny_config) -> GPT:
    return lively(tiny_config)


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_model):
    """A saved gptkit checkpoint directory of tiny_model."""
    return save_checkpoint(tiny_model, tmp_path / "tiny", {"note": "test fixture"})
