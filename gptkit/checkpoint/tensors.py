"""safetensors files, read and written here only: tensors read into memory from torch's allocator (64-byte aligned,
never views into a memory map of the file), written atomically; a file's header read and checked without torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from gptkit.checkpoint.nanogpt import is_nanogpt_file
from gptkit.errors import GptkitError
from gptkit.files import atomic_path

if TYPE_CHECKING:
    import torch

MAX_HEADER_BYTES = 100 * 1024 * 1024
# safetensors' names of the float dtypes a checkpoint may store.
FLOAT_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# torch's names of every dtype a checkpoint, a converted .bin or a run's state may hold.
TENSOR_DTYPES = {
    **FLOAT_DTYPES,
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    """Write a safetensors file atomically (tensors made contiguous and unshared)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})


def load_tensors(path: Path, device="cpu", metadata: dict | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file into freshly allocated tensors, with a clear error for anything that is not one; the
    file's metadata (header and tensors from the one open file, even if it is replaced meanwhile) into metadata.

    The bytes are read into memory from torch's allocator, never viewed in place in a memory map of the file: a
    view sits wherever its bytes are in the file (8-byte aligned at best), and torch's AVX-512 kernels load 64 bytes
    at a time from aligned addresses. Reading costs one copy, the same as a memory map's pages once touched."""
    import torch

    tensors = {}
    try:
        f = open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise GptkitError(f"{path} does not exist") from None
    with f:
        header, data_start = read_safetensors_header_at(path, f)
        if metadata is not None:
            metadata.update(header.get("__metadata__", {}))
        header.pop("__metadata__", None)
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            if info["dtype"] not in TENSOR_DTYPES:
                raise GptkitError(f"cannot read {path}: tensor '{name}' has dtype {info['dtype']}, not a model's")
            dtype = getattr(torch, TENSOR_DTYPES[info["dtype"]])
            begin, end = info["data_offsets"]
            tensor = torch.empty(info["shape"], dtype=dtype)
            if end - begin != tensor.numel() * tensor.element_size():
                raise GptkitError(f"cannot read {path}: tensor '{name}' holds {end - begin} bytes, not its shape's")
            f.seek(data_start + begin)
            buffer = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
            while buffer:
                read = f.readinto(buffer)
                if not read:
                    raise GptkitError(f"{path} is truncated")
                buffer = buffer[read:]
            tensors[name] = tensor if torch.device(device).type == "cpu" else tensor.to(device)
    return tensors


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, checked against the file's size. Needs no torch."""
    return read_safetensors_header_at(path)[0]


def read_safetensors_header_at(path: Path, file=None) -> tuple[dict, int]:
    """read_safetensors_header's header, and the offset in the file where the tensors' data starts; from file (path
    open for reading) where given."""
    path = Path(path)
    if is_nanogpt_file(path):
        raise GptkitError(
            f"{path} is a nanoGPT / build-nanogpt checkpoint, not a safetensors file: make it a checkpoint folder with "
            f"gptkit convert {path} (sample, eval and train --model read it as it is)"
        )
    try:
        with open(path, "rb") if file is None else contextlib.nullcontext(file) as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(0)
            head = f.read(8)
            if len(head) < 8:
                raise GptkitError(f"{path} is not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, MAX_HEADER_BYTES):
                raise GptkitError(f"{path} is not a safetensors file (or its header is truncated)")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise GptkitError(f"{path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise GptkitError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise GptkitError(f"{path} is not a safetensors file (its header is not a JSON object)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise GptkitError(f"{path} is not a valid safetensors file (bad entry for tensor '{name}')")
        end = max(end, info["data_offsets"][1])
    if 8 + n + end > size:
        raise GptkitError(f"{path} is truncated: {size} bytes, but its header describes {8 + n + end}")
    return header, 8 + n
