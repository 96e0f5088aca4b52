"""The options of the commands that write a checkpoint as another (quantize, merge, convert, export), each declared
once (see declare.option) and checked, with the input and output they name, when the object is made (no torch)."""

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from gptkit.options.declare import argument, check_declared, fail_if, option
from gptkit.options.shared import check_checkpoint, check_not_int8, check_out_folder

EXPORT_FORMATS = ("gguf",)
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")  # export's --type: llama.cpp's names of the weight matrices' types


def beside(path: Path, suffix: str) -> Path:
    """<name><suffix> beside a checkpoint folder or file (its stem for a file)."""
    path = Path(path)
    path = path.resolve() if path.name in ("", ".", "..") else path
    return path.parent / f"{path.stem if path.is_file() else path.name}{suffix}"


@dataclass(frozen=True)
class QuantizeOptions:
    """`gptkit quantize`'s options: a float checkpoint, and a folder for its int8 copy that is not the input and
    exists only with --overwrite."""

    ckpt: Path = argument("A checkpoint directory or .safetensors file (float weights).", check=check_checkpoint)
    out: Path | None = option(
        None, "Checkpoint directory to write (default: <name>-int8 beside CKPT).", flag="--out", short="-o"
    )
    overwrite: bool = option(False, "Replace the checkpoint --out holds.")

    def __post_init__(self):
        check_declared(self)
        check_not_int8(self.ckpt, "are quantized already", "quantize the float checkpoint it was made from")
        folder = Path(self.ckpt) if Path(self.ckpt).is_dir() else Path(self.ckpt).parent
        fail_if(
            self.out_path.resolve() == folder.resolve(),
            f"--out {self.out_path} is the checkpoint being quantized: give another folder, the float weights stay "
            "where they are",
        )
        check_out_folder(self.out_path, self.overwrite)

    @property
    def out_path(self) -> Path:
        return Path(self.out) if self.out is not None else beside(self.ckpt, "-int8")


def check_adapter_run(run: Path):
    """gptkit merge's input: a folder of LoRA adapters whose base checkpoint exists."""
    from gptkit.checkpoint.adapters import ADAPTER_CONFIG_FILE  # imported here, as in shared.check_checkpoint
    from gptkit.checkpoint.locate import is_adapter_folder, resolve

    run = Path(run)
    fail_if(not run.exists(), f"{run} does not exist")
    fail_if(
        not is_adapter_folder(run),
        f"{run} holds no LoRA adapters ({ADAPTER_CONFIG_FILE}): gptkit merge takes the folder of a run trained with "
        "--lora-rank",
    )
    resolve(run)  # the base checkpoint it names


@dataclass(frozen=True)
class MergeOptions:
    """`gptkit merge`'s options: a LoRA run, and a folder for the merged checkpoint that is not the run and exists
    only with --overwrite."""

    run: Path = argument(
        "A LoRA run folder (or a save of one): adapters and the base they name.", check=check_adapter_run
    )
    out: Path | None = option(
        None, "Checkpoint directory to write (default: <run>-merged beside RUN).", flag="--out", short="-o"
    )
    overwrite: bool = option(False, "Replace the checkpoint --out holds.")

    def __post_init__(self):
        check_declared(self)
        fail_if(
            self.out_path.resolve() == Path(self.run).resolve(),
            f"--out {self.out_path} is the run folder: give another folder",
        )
        check_out_folder(self.out_path, self.overwrite)

    @property
    def out_path(self) -> Path:
        run = Path(self.run).resolve()
        return Path(self.out) if self.out is not None else run.parent / f"{run.name}-merged"


def check_nanogpt_file(src: Path):
    """gptkit convert's input: a .pt file of nanoGPT's or build-nanogpt's (what it holds, read_nanogpt_file checks)."""
    from gptkit.checkpoint.nanogpt import is_nanogpt_file  # imported here, as in shared.check_checkpoint

    src = Path(src)
    fail_if(not src.exists(), f"{src} does not exist")
    fail_if(
        not src.is_file() or not is_nanogpt_file(src),
        f"{src} is not a nanoGPT or build-nanogpt checkpoint: give its .pt file (nanoGPT's out/ckpt.pt, "
        "build-nanogpt's log/model_XXXXX.pt)",
    )


@dataclass(frozen=True)
class ConvertOptions:
    """`gptkit convert`'s options: a nanoGPT or build-nanogpt .pt file, and a folder that exists only with
    --overwrite."""

    src: Path = argument("nanoGPT's out/ckpt.pt or build-nanogpt's log/model_XXXXX.pt.", check=check_nanogpt_file)
    out: Path | None = option(
        None, "Checkpoint directory to write.", flag="--out", short="-o", default_text="SRC without .pt, beside it"
    )
    overwrite: bool = option(False, "Replace the checkpoint --out holds.")

    def __post_init__(self):
        check_declared(self)
        check_out_folder(self.out_path, self.overwrite)

    @property
    def out_path(self) -> Path:
        return Path(self.out) if self.out is not None else Path(self.src).with_suffix("")


@dataclass(frozen=True)
class ExportOptions:
    """`gptkit export`'s options, checked when made (no torch needed): the gguf package is there, the checkpoint is
    one llama.cpp can run (GPT-2's vocabulary, padded or not), --out is a file that may be written."""

    ckpt: Path = argument("A checkpoint directory or .safetensors file (float or int8).")
    format: str = option(
        help="The file format: gguf (llama.cpp, Ollama, LM Studio; needs gptkit[gguf]).",
        flag="--format",
        choices=EXPORT_FORMATS,
    )
    type: str = option(
        "f16",
        "The weight matrices' type: f32, f16, bf16 or q8_0 (biases, norms, positions stay f32).",
        flag="--type",
        choices=GGUF_TYPES,
    )
    out: Path | None = option(
        None, "The file to write.", flag="--out", short="-o", default_text="<name>-<type>.gguf beside CKPT"
    )
    overwrite: bool = option(False, "Replace --out if it exists.")

    def __post_init__(self):
        from gptkit.checkpoint.folder import read_config  # imported here, as in shared.check_checkpoint
        from gptkit.checkpoint.locate import checkpoint_files
        from gptkit.data.tokenizer import VOCAB_SIZE

        check_declared(self)
        fail_if(
            importlib.util.find_spec("gguf") is None,
            "gptkit export --format gguf needs the gguf package: pip install 'gptkit[gguf]' "
            "(from a clone: uv sync --extra gguf)",
        )
        check_checkpoint(self.ckpt)
        vocab_size = read_config(self.ckpt).vocab_size
        fail_if(
            vocab_size < VOCAB_SIZE,
            f"{self.ckpt} has a vocabulary of {vocab_size} tokens, fewer than GPT-2's {VOCAB_SIZE}: the GGUF file "
            "carries GPT-2's tokenizer, which this model does not fit",
        )
        out = self.out_path
        fail_if(out.is_dir(), f"--out {out} is a folder: give the .gguf file to write")
        fail_if(
            any(out.resolve() == f.resolve() for f in checkpoint_files(self.ckpt)),
            f"--out {out} is a file of the checkpoint being exported: give another file",
        )
        fail_if(
            out.exists() and not self.overwrite, f"{out} exists: add --overwrite to replace it, or give another --out"
        )

    @property
    def out_path(self) -> Path:
        return Path(self.out) if self.out is not None else beside(self.ckpt, f"-{self.type}.gguf")
