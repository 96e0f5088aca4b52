"""The options of the commands that fetch what training reads: `gptkit download` (weights) and `gptkit prepare`
(text into token shards), each declared once (see declare.option) and checked when the object is made."""

from dataclasses import dataclass
from pathlib import Path

from gptkit.options.declare import argument, check_declared, option
from gptkit.options.shared import check_text


@dataclass(frozen=True)
class DownloadOptions:
    """`gptkit download`'s options (the name is checked by checkpoint.hub, which knows the hub's names)."""

    name: str = argument("gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, or org/name")
    out: Path | None = option(None, "Checkpoint directory (default: checkpoints/<name>).", flag="--out", short="-o")
    revision: str | None = option(None, "Branch, tag or commit of the repo (default: main).")
    force: bool = option(False, "Download again, replacing what --out holds.")


@dataclass(frozen=True)
class PrepareOptions:
    """`gptkit prepare`'s options: DATA exists, the split and shard size make sense (what DATA holds,
    prepare.input_files checks)."""

    data: Path = argument(
        'A UTF-8 text file, .jsonl / .jsonl.gz (a "text" field a line), .parquet (a "text" column), or a folder of '
        "them.",
        check=check_text,
    )
    out: Path | None = option(None, "Token folder.", default_text="<data>-tokens beside DATA")
    val_fraction: float = option(0.1, "Tail of the tokens that gptkit train holds out for validation.", min=0, below=1)
    shard_tokens: int = option(100_000_000, "Tokens per shard (2 bytes each).", min=1)

    def __post_init__(self):
        check_declared(self)


def check_prepare(data: Path, val_fraction: float, shard_tokens: int):
    """prepare's inputs checked as `gptkit prepare` checks them (for the library's callers)."""
    PrepareOptions(data, val_fraction=val_fraction, shard_tokens=shard_tokens)
