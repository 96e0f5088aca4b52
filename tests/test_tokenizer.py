import hashlib
import shutil

import pytest
from conftest import SHAKESPEARE_PATH

from gptkit.data.tokenizer import ASSETS, EOT_TOKEN, decode, encode, get_tokenizer

TEXTS = [
    "Hello, world! This is GPT-2's tokenizer.",
    "  leading spaces, trailing spaces   \n\n\n\tTabs\tand\r\nWindows newlines\n",
    "Ünïcödé: naïve café, Straße, 日本語のテキスト, emoji 🎉🚀, Ελληνικά, русский, עברית, عربى",
    "numbers 1234567890 3.14159 -42 1e-10 and   multiple     whitespace runs",
    "I'm sure they'll've done it; we're, you've, she'd. DON'T SHOUT",
    "code: def f(x):\n    return x ** 2  # comment\n",
    "first document<|endoftext|>second document",
    "",
    "\u200b zero width, \x00 nul byte, \ufffd replacement",
]

TIKTOKEN_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}


@pytest.fixture(scope="module")
def tiktoken_own_gpt2(tmp_path_factory):
    """tiktoken's own get_encoding("gpt2"), served from its download cache (seeded with our files: no network)."""
    import os

    import tiktoken
    import tiktoken.registry

    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name, url in TIKTOKEN_URLS.items():
        shutil.copy(ASSETS / name, cache / hashlib.sha1(url.encode()).hexdigest())
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    tiktoken.registry.ENCODINGS.pop("gpt2", None)
    try:
        yield tiktoken.get_encoding("gpt2")
    finally:
        tiktoken.registry.ENCODINGS.pop("gpt2", None)
        if old is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR")
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old


@pytest.mark.parametrize("text", TEXTS)
def test_equals_tiktoken_gpt2(text, tiktoken_own_gpt2):
    ours = get_tokenizer()
    assert ours.encode(text, allowed_special="all") == tiktoken_own_gpt2.encode(text, allowed_special="all")
    assert ours.encode_ordinary(text) == tiktoken_own_gpt2.encode_ordinary(text)
    assert decode(encode(text)) == text


def test_shakespeare_equals_tiktoken(tiktoken_own_gpt2):
    text = SHAKESPEARE_PATH.read_text(encoding="utf-8")[:100_000]
    assert get_tokenizer().encode_ordinary(text) == tiktoken_own_gpt2.encode_ordinary(text)


def test_endoftext_is_special():
    assert encode("<|endoftext|>") == [EOT_TOKEN]
    assert get_tokenizer().n_vocab == 50257


def test_corrupted_bpe_file_is_refused(tmp_path, monkeypatch):
    from gptkit.data import tokenizer
    from gptkit.errors import GptkitError

    for name in ("vocab.bpe", "encoder.json"):
        shutil.copy(ASSETS / name, tmp_path / name)
    with open(tmp_path / "vocab.bpe", "a") as f:
        f.write("x")
    monkeypatch.setattr(tokenizer, "ASSETS", tmp_path)
    tokenizer.get_tokenizer.cache_clear()
    try:
        with pytest.raises(GptkitError, match="corrupted"):
            tokenizer.get_tokenizer()
    finally:
        tokenizer.get_tokenizer.cache_clear()
