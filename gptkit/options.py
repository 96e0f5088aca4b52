"""The commands' options (SampleOptions, EvalOptions: one object a command) and their checks that need neither torch
nor a model: ranges, choices, files that must exist.

An options object checks itself when it is made, so the commands' Python functions take one as checked; cli.py makes
it before it imports a command's module (and so torch), so that a bad option is answered at once. What needs the
device or the model (does CUDA exist, is --block-size within the model's context) is checked later, where those are
known. train's options and checks are in train_config.py.
"""

import importlib.util
import ipaddress
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from gptkit.inference.chat_template import read_template
from gptkit.checkpoint.adapters import ADAPTER_CONFIG_FILE
from gptkit.checkpoint.folder import read_config, read_metadata
from gptkit.checkpoint.locate import checkpoint_files, is_adapter_folder, quantization_of, resolve
from gptkit.errors import GptkitError
from gptkit.checkpoint.nanogpt import is_nanogpt_file
from gptkit.data.tokenizer import VOCAB_SIZE

# --dtype names and what they stand for (runtime.DTYPES maps them to torch dtypes).
DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
DEVICE_NAME = re.compile(r"auto|cpu|(cuda|mps)(:\d+)?")
QUANTIZATIONS = ("int8",)
HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
EXPORT_FORMATS = ("gguf",)
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")  # export's --type: llama.cpp's names of the weight matrices' types


def fail_if(failed: bool, message: str):
    if failed:
        raise GptkitError(message)


def check_dtype(name: str):
    fail_if(
        name != "auto" and name not in DTYPE_NAMES, f"unknown dtype '{name}': use auto, float32, bfloat16 or float16"
    )


def check_device(name: str):
    fail_if(not DEVICE_NAME.fullmatch(name), f"unknown device '{name}': use auto, cpu, cuda, cuda:N or mps")


def check_text(path: Path):
    """A text or token folder to read must exist (prepare.input_files and data.open_data check what it holds)."""
    fail_if(
        not Path(path).exists(),
        f"{path} does not exist: give a text, .jsonl, .jsonl.gz or .parquet file, or a folder of them or of tokens",
    )


def check_prepare(data: Path, val_fraction: float, shard_tokens: int):
    check_text(data)
    fail_if(not 0 <= val_fraction < 1, f"--val-fraction must be in [0, 1), not {val_fraction}")
    fail_if(shard_tokens < 1, f"--shard-tokens must be at least 1, not {shard_tokens}")


def check_window(block_size: int | None, stride: int | None, context: int | None = None):
    """Eval's windows: 1 <= stride <= block_size <= the model's context; None where not known (yet)."""
    if block_size is not None:
        fail_if(
            context is not None and not 1 <= block_size <= context,
            f"--block-size must be between 1 and the model's context of {context}, got {block_size}",
        )
        fail_if(block_size < 1, f"--block-size must be at least 1, got {block_size}")
    if stride is not None:
        fail_if(stride < 1, f"--stride must be at least 1, got {stride}")
        fail_if(
            block_size is not None and stride > block_size,
            f"--stride must be between 1 and the block size ({block_size}), got {stride}",
        )


def check_quantize(name: str | None):
    fail_if(
        name is not None and name not in QUANTIZATIONS,
        f"--quantize {name} is not supported: use --quantize int8 (weight-only, per channel)",
    )


def default_quantized_out(ckpt: Path) -> Path:
    """`gptkit quantize`'s default output: `<name>-int8` beside the checkpoint folder (or .safetensors file)."""
    path = Path(ckpt)
    path = path.resolve() if path.name in ("", ".", "..") else path
    return path.parent / f"{path.stem if path.is_file() else path.name}-int8"


def check_not_int8(ckpt: Path, what: str, remedy: str):
    """Refuse an int8 checkpoint (gptkit quantize's) for what needs float weights, naming the float one it came from."""
    if quantization_of(ckpt) != "int8":
        return
    source = (read_metadata(ckpt).get("quantization") or {}).get("source")
    made_from = f" ({source})" if source else ""
    raise GptkitError(f"{ckpt} holds int8 weights (written by gptkit quantize), which {what}: {remedy}{made_from}")


def check_out_folder(out: Path, overwrite: bool):
    """A command's --out checkpoint folder: not a file, and one that holds files only with --overwrite."""
    fail_if(out.exists() and not out.is_dir(), f"--out {out} is a file: give a folder")
    fail_if(
        out.is_dir() and any(out.iterdir()) and not overwrite,
        f"{out} exists: add --overwrite to replace the checkpoint in it, or give another --out",
    )


def check_quantize_command(ckpt: Path, out: Path | None, overwrite: bool):
    """gptkit quantize's input (a float checkpoint) and output (a folder that is not the input, and that exists only
    with --overwrite)."""
    resolve(ckpt)
    check_not_int8(ckpt, "are quantized already", "quantize the float checkpoint it was made from")
    out = Path(out) if out is not None else default_quantized_out(ckpt)
    folder = Path(ckpt) if Path(ckpt).is_dir() else Path(ckpt).parent
    fail_if(
        out.resolve() == folder.resolve(),
        f"--out {out} is the checkpoint being quantized: give another folder, the float weights stay where they are",
    )
    check_out_folder(out, overwrite)


def default_merged_out(run: Path) -> Path:
    """`gptkit merge`'s default output: `<run>-merged` beside the run folder."""
    run = Path(run).resolve()
    return run.parent / f"{run.name}-merged"


def check_merge_command(run: Path, out: Path | None, overwrite: bool):
    """gptkit merge's input (a folder of LoRA adapters whose base exists) and output (a folder that is not the input,
    and that exists only with --overwrite)."""
    run = Path(run)
    fail_if(not run.exists(), f"{run} does not exist")
    fail_if(
        not is_adapter_folder(run),
        f"{run} holds no LoRA adapters ({ADAPTER_CONFIG_FILE}): gptkit merge takes the folder of a run trained with "
        "--lora-rank",
    )
    resolve(run)  # the base checkpoint it names
    out = Path(out) if out is not None else default_merged_out(run)
    fail_if(out.resolve() == run.resolve(), f"--out {out} is the run folder: give another folder")
    check_out_folder(out, overwrite)


def default_converted_out(src: Path) -> Path:
    """`gptkit convert`'s default output: SRC without its suffix, beside it (out/ckpt.pt -> out/ckpt)."""
    return Path(src).with_suffix("")


def check_convert_command(src: Path, out: Path | None, overwrite: bool):
    """gptkit convert's input (a .pt file: what it holds, nanogpt.read_nanogpt_file checks) and output (a folder that
    exists only with --overwrite)."""
    src = Path(src)
    fail_if(not src.exists(), f"{src} does not exist")
    fail_if(
        not src.is_file() or not is_nanogpt_file(src),
        f"{src} is not a nanoGPT or build-nanogpt checkpoint: give its .pt file (nanoGPT's out/ckpt.pt, "
        "build-nanogpt's log/model_XXXXX.pt)",
    )
    out = Path(out) if out is not None else default_converted_out(src)
    check_out_folder(out, overwrite)


def check_hellaswag_file(path: Path):
    """eval's and train's --hellaswag must be a file (eval.read_hellaswag checks what it holds)."""
    path = Path(path)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise GptkitError(f"{path} {problem}: get hellaswag_val.jsonl from {HELLASWAG_URL}")


@dataclass(frozen=True)
class SampleOptions:
    """`gptkit sample`'s options, checked when made (no torch needed): a SampleOptions is one sample() can run."""

    prompt: str = ""
    """The text to continue; '-' reads standard input; empty: start from <|endoftext|>."""
    ckpt: Path | None = None
    """Checkpoint directory or .safetensors file; None: the newest checkpoint under checkpoints/."""
    max_new_tokens: int = 200
    """Tokens to generate per sample, at most."""
    temperature: float = 1.0
    """Softmax temperature; 0 is greedy."""
    top_k: int = 50
    """Sample among the k most likely tokens; 0 turns it off."""
    top_p: float | None = None
    """Nucleus sampling: the most likely tokens holding this probability; None turns it off."""
    num_samples: int = 1
    """Samples to generate (as one batch), printed one after another."""
    seed: int | None = None
    """Random seed, for reproducible samples."""
    stop: str | None = None
    """Stop a sample at this text (as well as at <|endoftext|>)."""
    dtype: str = "auto"
    """auto, float32, bfloat16 or float16 (or their short names, see DTYPE_NAMES)."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps."""
    quantize: str | None = None
    """int8: weight-only int8 (per-channel scales), quantized at load."""
    compile: bool = False
    """torch.compile the one-token decoding step."""
    draft: Path | None = None
    """Speculative decoding: a smaller checkpoint with the same tokenizer that proposes tokens."""
    draft_tokens: int = 4
    """Tokens the draft proposes per step."""

    def __post_init__(self):
        fail_if(self.max_new_tokens < 1, f"--max-new-tokens must be at least 1, not {self.max_new_tokens}")
        fail_if(self.temperature < 0, f"--temperature must be 0 (greedy) or more, not {self.temperature}")
        fail_if(self.top_k < 0, f"--top-k must be 0 (off) or more, not {self.top_k}")
        fail_if(self.top_p is not None and not 0 < self.top_p <= 1, f"--top-p must be in (0, 1], not {self.top_p}")
        fail_if(self.num_samples < 1, f"--num-samples must be at least 1, not {self.num_samples}")
        fail_if(self.draft_tokens < 1, f"--draft-tokens must be at least 1, not {self.draft_tokens}")
        check_quantize(self.quantize)
        check_dtype(self.dtype)
        check_device(self.device)
        if self.ckpt is not None:
            resolve(self.ckpt)
        if self.draft is not None:
            resolve(self.draft)


def is_loopback(host: str) -> bool:
    """Whether host is this machine only (localhost, 127.0.0.1, ::1): no other machine reaches a server there."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeOptions:
    """`gptkit serve`'s options, checked when made (no torch needed): FastAPI and uvicorn are installed, the address
    is safe to listen on (loopback, else with an API key or --no-api-key), the limits make sense."""

    ckpt: Path | None = None
    """Checkpoint directory or .safetensors file; None: the newest checkpoint under checkpoints/."""
    host: str = "127.0.0.1"
    """The address to listen on."""
    port: int = 8000
    """The port to listen on; 0: any free one."""
    api_key: str | None = None
    """The key every request but /health must carry (Authorization: Bearer KEY)."""
    no_api_key: bool = False
    """Serve an address other than loopback without a key, on purpose."""
    max_batch: int = 16
    """Sequences decoded at once; more wait for a free row."""
    max_body_mb: float = 1.0
    """The largest request body accepted, in MB."""
    grace_period: float = 30.0
    """Seconds SIGTERM or Ctrl-C give the requests in flight before cancelling them."""
    chat_template: Path | None = None
    """A JSON file of chat template keys (gptkit.inference.chat_template); None: the checkpoint's, else the default."""
    dtype: str = "auto"
    """auto, float32, bfloat16 or float16 (or their short names, see DTYPE_NAMES)."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps."""
    quantize: str | None = None
    """int8: weight-only int8 (per-channel scales), quantized at load."""
    compile: bool = False
    """torch.compile the decoding step (at start-up)."""

    def __post_init__(self):
        fail_if(
            importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None,
            "gptkit serve needs FastAPI and uvicorn: pip install 'gptkit[serve]' (from a clone: uv sync --extra serve)",
        )
        fail_if(not 0 <= self.port <= 65535, f"--port must be between 0 and 65535, not {self.port}")
        fail_if(self.max_batch < 1, f"--max-batch must be at least 1, not {self.max_batch}")
        fail_if(self.max_body_mb <= 0, f"--max-body-mb must be positive, not {self.max_body_mb}")
        fail_if(self.grace_period < 0, f"--grace-period must be 0 or more, not {self.grace_period}")
        fail_if(self.api_key == "", "--api-key (or GPTKIT_API_KEY) is empty: give a key, or leave it out")
        fail_if(self.api_key is not None and self.no_api_key, "--api-key and --no-api-key contradict each other")
        fail_if(
            not is_loopback(self.host) and self.api_key is None and not self.no_api_key,
            f"--host {self.host} can be reached from other machines: give --api-key KEY (or set GPTKIT_API_KEY), "
            "or add --no-api-key to serve it without a key",
        )
        check_quantize(self.quantize)
        check_dtype(self.dtype)
        check_device(self.device)
        if self.ckpt is not None:
            resolve(self.ckpt)
        _ = self.template  # --chat-template read and checked now, once (the property keeps it)

    @cached_property
    def template(self) -> dict | None:
        """--chat-template's template (over the default, checked); None without one."""
        return None if self.chat_template is None else read_template(self.chat_template)


@dataclass(frozen=True)
class EvalOptions:
    """`gptkit eval`'s options, checked when made (no torch needed): an EvalOptions is one run_eval() can run. What
    needs the model (is --block-size within its context) run_eval checks."""

    ckpt: Path
    """A checkpoint directory or .safetensors file."""
    text: Path | None = None
    """A text file or folder to score; None: the validation split gptkit train recorded (none with hellaswag)."""
    block_size: int | None = None
    """Tokens per window; None: the model's context."""
    stride: int | None = None
    """Window step (overlapping windows score only their new tokens); None: the block size."""
    batch_size: int = 4
    """Windows per forward pass."""
    max_tokens: int | None = None
    """Score at most this many tokens."""
    hellaswag: Path | None = None
    """A HellaSwag jsonl file (ctx, endings, label) to score."""
    json_output: bool = False
    """Print the results as JSON only (and no progress)."""
    dtype: str = "auto"
    """auto, float32, bfloat16 or float16 (autocast over float32 weights)."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps."""
    quantize: str | None = None
    """int8: weight-only int8 (per-channel scales), quantized at load."""

    def __post_init__(self):
        fail_if(self.batch_size < 1, f"--batch-size must be at least 1, got {self.batch_size}")
        fail_if(
            self.max_tokens is not None and self.max_tokens < 1,
            f"--max-tokens must be at least 1, got {self.max_tokens}",
        )
        check_window(self.block_size, self.stride)
        check_quantize(self.quantize)
        check_dtype(self.dtype)
        check_device(self.device)
        resolve(self.ckpt)
        if self.text is not None:
            check_text(self.text)
        if self.hellaswag is not None:
            check_hellaswag_file(self.hellaswag)
        check_window(self.block_size, self.stride, read_config(self.ckpt).block_size)  # the model's context


def default_export_out(ckpt: Path, type: str) -> Path:
    """`gptkit export`'s default output: `<name>-<type>.gguf` beside the checkpoint folder (or .safetensors file)."""
    path = Path(ckpt)
    path = path.resolve() if path.name in ("", ".", "..") else path
    return path.parent / f"{path.stem if path.is_file() else path.name}-{type}.gguf"


@dataclass(frozen=True)
class ExportOptions:
    """`gptkit export`'s options, checked when made (no torch needed): the gguf package is there, the checkpoint is
    one llama.cpp can run (GPT-2's vocabulary, padded or not), --out is a file that may be written."""

    ckpt: Path
    """A checkpoint directory or .safetensors file, float or int8."""
    format: str
    """The file format: gguf."""
    type: str = "f16"
    """The weight matrices' type in the file (GGUF_TYPES); biases, layer norms and positions stay f32."""
    out: Path | None = None
    """The file to write; None: default_export_out."""
    overwrite: bool = False
    """Replace --out if it exists."""

    def __post_init__(self):
        fail_if(self.format not in EXPORT_FORMATS, f"unknown --format '{self.format}': use --format gguf")
        fail_if(self.type not in GGUF_TYPES, f"unknown --type '{self.type}': use {', '.join(GGUF_TYPES)}")
        fail_if(
            importlib.util.find_spec("gguf") is None,
            "gptkit export --format gguf needs the gguf package: pip install 'gptkit[gguf]' "
            "(from a clone: uv sync --extra gguf)",
        )
        resolve(self.ckpt)
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
        return Path(self.out) if self.out is not None else default_export_out(self.ckpt, self.type)
