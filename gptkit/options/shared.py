"""What several commands' options share: the --dtype, --device and --quantize of sample, serve and eval (declared
once here, each a function that makes the field), and the checks, none needing torch: dtype and device names, files
that must exist, a checkpoint that must be one (and not int8 where float weights are needed), an --out folder, eval's
windows, a loopback address."""

import ipaddress
import re
from pathlib import Path

from gptkit.errors import GptkitError
from gptkit.options.declare import HARDWARE, fail_if, option

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
HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
QUANTIZATIONS = ("int8", "int4")  # model/quantization.py quantizes by these names


def check_dtype(name: str):
    fail_if(
        name != "auto" and name not in DTYPE_NAMES, f"unknown dtype '{name}': use auto, float32, bfloat16 or float16"
    )


def check_device(name: str):
    fail_if(not DEVICE_NAME.fullmatch(name), f"unknown device '{name}': use auto, cpu, cuda, cuda:N or mps")


def check_checkpoint(path: Path):
    """A checkpoint to read: a folder or file that holds one (checkpoint.locate.resolve says what is wrong)."""
    from gptkit.checkpoint.locate import (
        resolve,
    )  # imported here: `gptkit --help` builds every command's options, and needs none of the checkpoint code

    resolve(path)


def check_text(path: Path):
    """A text or token folder to read must exist (prepare.input_files and data.open_data check what it holds)."""
    fail_if(
        not Path(path).exists(),
        f"{path} does not exist: give a text, .jsonl, .jsonl.gz or .parquet file, or a folder of them or of tokens",
    )


def check_hellaswag_file(path: Path):
    """eval's and train's --hellaswag must be a file (eval.read_hellaswag checks what it holds)."""
    path = Path(path)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise GptkitError(f"{path} {problem}: get hellaswag_val.jsonl from {HELLASWAG_URL}")


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


def check_not_int8(ckpt: Path, what: str, remedy: str):
    """Refuse an int8 checkpoint (gptkit quantize's) for what needs float weights, naming the float one it came from."""
    from gptkit.checkpoint.folder import read_metadata
    from gptkit.checkpoint.locate import quantization_of

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


def is_loopback(host: str) -> bool:
    """Whether host is this machine only (localhost, 127.0.0.1, ::1): no other machine reaches a server there."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dtype_option(panel: str = HARDWARE):
    """sample's, serve's and eval's --dtype (train's differs: no float16)."""
    return option("auto", "auto, float32, bfloat16 or float16.", panel=panel, check=check_dtype)


def device_option(panel: str = HARDWARE):
    return option("auto", "auto, cpu, cuda, cuda:N or mps.", panel=panel, check=check_device)


def quantize_option(panel: str):
    return option(
        None,
        "int8: weight-only int8 (per-channel scales); int4: 4-bit groups of 32 (CPU); quantized at load.",
        panel=panel,
        choices=QUANTIZATIONS,
        message="{flag} {value} is not supported: use --quantize int8 or int4",
    )


def check_folder(path: Path):
    fail_if(not Path(path).is_dir(), f"{path} is not a folder")
