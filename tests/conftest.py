import pytest
import torch

from gptkit.checkpoint import save_checkpoint
from gptkit.model import GPT, GPTConfig


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test tokenizes into a cache of its own, never the user's ~/.cache/gptkit."""
    monkeypatch.setenv("GPTKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def text(tmp_path):
    """The first 40 KB of Shakespeare: about 11k tokens."""
    path = tmp_path / "shakespeare.txt"
    path.write_text(open("data/input.txt", encoding="utf-8").read()[:40_000])
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
def tiny_checkpoint(tmp_path, tiny_model):
    """A saved gptkit checkpoint directory of tiny_model."""
    return save_checkpoint(tiny_model, tmp_path / "tiny", {"note": "test fixture"})
