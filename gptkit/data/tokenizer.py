"""GPT-2's byte-pair encoding, built offline from the two files OpenAI published, which ship inside the package."""

import hashlib
from functools import cache
from pathlib import Path

from gptkit.errors import GptkitError

ASSETS = Path(__file__).parent / "assets"
EOT_TOKEN = 50256  # <|endoftext|>, GPT-2's bos and eos
EOT_TEXT = "<|endoftext|>"
VOCAB_SIZE = EOT_TOKEN + 1  # 50,000 merges, 256 bytes and <|endoftext|>, the last token
BPE_FILES = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}


def bpe_file(name: str) -> bytes:
    """One of the shipped BPE files (encoder.json, vocab.bpe), checked against its sha256 (once a process)."""
    return checked_file(ASSETS / name, BPE_FILES[name])


@cache
def checked_file(path: Path, sha256: str) -> bytes:
    """The bytes of path, if their sha256 is sha256 (cached by path, not by name: a test may move ASSETS)."""
    data = path.read_bytes() if path.is_file() else b""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise GptkitError(f"the GPT-2 BPE file {path} is missing or corrupted: reinstall gptkit")
    return data


@cache
def get_tokenizer():
    """tiktoken's "gpt2" encoding, token for token, without touching the network."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    for name in BPE_FILES:
        bpe_file(name)
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(ASSETS / "vocab.bpe"),
        encoder_json_file=str(ASSETS / "encoder.json"),
        vocab_bpe_hash=BPE_FILES["vocab.bpe"],
        encoder_json_hash=BPE_FILES["encoder.json"],
    )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=VOCAB_SIZE,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={EOT_TEXT: EOT_TOKEN},
    )


def encode(text: str) -> list[int]:
    """Encode text, reading <|endoftext|> in it as the special token (as GPT-2's data was made)."""
    return get_tokenizer().encode(text, allowed_special={EOT_TEXT})


def decode(tokens) -> str:
    return get_tokenizer().decode(list(tokens))
