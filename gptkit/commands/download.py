"""`gptkit download`: GPT-2 weights from the Hugging Face hub, as a checkpoint folder (checkpoint.hub fetches them
and says what it did)."""

from pathlib import Path

from gptkit.checkpoint.hub import download as download_model
from gptkit.options import DownloadOptions


def download(options: DownloadOptions) -> Path:
    return download_model(options.name, options.out, options.revision, options.force)
