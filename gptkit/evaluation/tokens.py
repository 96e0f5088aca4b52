"""The tokens an evaluation scores: those of a TEXT (a text file or folder, or token files), or the validation split
a checkpoint's training held out, rebuilt from the data its metadata records. Either stays in its memory-mapped shards
(a TokenSequence), read a batch of windows at a time.
"""

from pathlib import Path

from gptkit.checkpoint.folder import read_metadata
from gptkit.data.loader import TokenSequence, open_data
from gptkit.data.inputs import input_files
from gptkit.errors import GptkitError
from gptkit.files import data_hash
from gptkit.progress import PrepareProgress


def read_tokens(path: Path, quiet: bool = False) -> tuple[TokenSequence, str]:
    """(all the tokens of TEXT, its digest): its token files (a prepared or foreign token folder, or the token cache
    of a text, tokenized the first time with a progress bar), memory-mapped and read as one sequence."""
    progress = PrepareProgress(enabled=not quiet)
    try:
        source = open_data(path, progress)
    finally:
        progress.close()
    return TokenSequence(source.all_shards), source.digest


def validation_split(ckpt: Path, quiet: bool = False, max_tokens: int | None = None) -> tuple[TokenSequence, dict]:
    """The validation tokens `gptkit train` held out (at most max_tokens + 1 of them), rebuilt from the data recorded
    in the checkpoint's metadata: the tail of text or prepared data, or the val files of nanoGPT / build-nanogpt. They
    stay in their memory-mapped shards (a TokenSequence): nothing is read here."""
    data = read_metadata(ckpt).get("data")
    if not isinstance(data, dict) or "path" not in data:
        raise GptkitError(
            f"{ckpt} records no training data (it was not made by gptkit train), so there is no validation split: "
            "give a TEXT file or folder to evaluate on"
        )
    path, val_fraction, split = Path(data["path"]), data.get("val_fraction"), data.get("split", "tail")
    if split == "conversations":
        raise GptkitError(
            f"{ckpt} was fine-tuned on conversations: its validation loss on the replies is the val_loss of its "
            "gptkit.json and metrics.jsonl; give a TEXT to evaluate it on text"
        )
    if split not in ("tail", "files") or split == "tail" and val_fraction is None:
        raise GptkitError(
            f"{ckpt}: the validation split it records is not one gptkit knows: give a TEXT to evaluate on"
        )
    if not path.exists():
        raise GptkitError(
            f"the training data {path} recorded in {ckpt} no longer exists: give a TEXT file or folder to evaluate on"
        )

    def check(sha256: str):
        if data.get("sha256") and sha256 != data["sha256"]:
            raise GptkitError(
                f"the training data {path} has changed since {ckpt} was trained (sha256 {sha256[:12]}..., recorded "
                f"{data['sha256'][:12]}...), so its validation split cannot be rebuilt: give a TEXT file or folder"
            )

    if data.get("format", "text") == "text":  # before tokenizing changed text into the cache
        check(data_hash(input_files(path)))
    progress = PrepareProgress(enabled=not quiet)
    try:
        source = open_data(path, progress)
    finally:
        progress.close()
    check(source.digest)
    _, val_shards = source.split(float(val_fraction or 0.0))
    val = TokenSequence(val_shards)
    if max_tokens is not None:
        val = val.head(max_tokens + 1)
    if len(val) < 2:
        raise GptkitError(
            f"{ckpt} was trained with no validation split (val_fraction {val_fraction}): give a TEXT to evaluate on"
        )
    return val, {"validation_split_of": str(path), "sha256": source.digest, "val_fraction": val_fraction}
