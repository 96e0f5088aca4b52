"""The tokenizer files of a checkpoint folder: transformers' tokenizer and pipeline from the folder alone give what
gptkit gives."""

import shutil

import pytest
from typer.testing import CliRunner

from gptkit.checkpoint.folder import save_checkpoint
from gptkit.cli import app
from gptkit.data.tokenizer import EOT_TOKEN, VOCAB_SIZE, encode
from gptkit.checkpoint.tokenizer_files import TOKENIZER_FILES, file_bytes, merges, tokens, write_tokenizer_files

# Words, digits, contractions, runs of spaces, tabs and newlines (GPT-2's pre-tokenizer splits them apart), accents,
# CJK, an emoji (several tokens of one character's bytes), CRLF, and <|endoftext|> as the special token.
TEXT = (
    "Hello, world!  It's 2024; they'll pay $1,234.56.\n\n\tIndented   spaces  \r\n"
    "Ünïcödé naïve café, 日本語のテキスト, Ελληνικά, emoji 🤖👍🏽<|endoftext|>A new document <|endoftext|>   "
)


pytestmark = pytest.mark.usefixtures("offline_hub")


def test_files_are_written_atomically_and_only_when_changed(tmp_path):
    written = write_tokenizer_files(tmp_path / "ckpt")
    assert [p.name for p in written] == list(TOKENIZER_FILES) == list(file_bytes())
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(TOKENIZER_FILES)  # no temporary left
    vocab = tmp_path / "ckpt" / "vocab.json"
    before = vocab.stat().st_mtime_ns, vocab.stat().st_ino
    write_tokenizer_files(tmp_path / "ckpt")
    assert (vocab.stat().st_mtime_ns, vocab.stat().st_ino) == before
    vocab.write_text("{}")
    write_tokenizer_files(tmp_path / "ckpt")
    assert vocab.read_bytes() == file_bytes()["vocab.json"]


def test_tokens_and_merges():
    assert len(tokens()) == VOCAB_SIZE and tokens()[EOT_TOKEN] == "<|endoftext|>" and tokens()[220] == "Ġ"
    assert len(merges()) == 50_000 and merges()[0] == "Ġ t"


def test_auto_tokenizer_gives_gptkit_tokens(tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    write_tokenizer_files(tmp_path)
    expected = encode(TEXT)
    assert EOT_TOKEN in expected
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.is_fast and tokenizer.eos_token_id == tokenizer.bos_token_id == EOT_TOKEN
    assert tokenizer(TEXT)["input_ids"] == expected
    assert tokenizer.decode(expected) == TEXT
    assert Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(TEXT).ids == expected
    # vocab.json and merges.txt alone (tokenizer.json left out) make the same tokenizer
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tmp_path / name, alone / name)
    assert AutoTokenizer.from_pretrained(alone)(TEXT)["input_ids"] == expected


def test_pipeline_gives_the_text_of_gptkit_sample(lively_model, tmp_path):
    from transformers import pipeline

    ckpt = save_checkpoint(lively_model, tmp_path / "lively")
    write_tokenizer_files(ckpt)
    prompt = "Hello, my name is"
    args = ["sample", prompt, "--ckpt", str(ckpt), "--temperature", "0", "--max-new-tokens", "20"]
    result = CliRunner().invoke(app, [*args, "--dtype", "float32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert len(set(encode(result.stdout))) > 10  # many tokens, not one repeated
    generator = pipeline("text-generation", model=str(ckpt), device="cpu")
    (out,) = generator(prompt, do_sample=False, max_new_tokens=20)
    assert result.stdout == out["generated_text"] + "\n"
