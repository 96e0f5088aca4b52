"""`gptkit export`: a checkpoint written as a GGUF file (checkpoint.gguf writes it and says what it wrote)."""

from pathlib import Path

from gptkit.checkpoint.gguf import export as write_gguf
from gptkit.options import ExportOptions


def export(options: ExportOptions) -> Path:
    return write_gguf(options)
