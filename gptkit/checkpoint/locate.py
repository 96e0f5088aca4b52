"""Where a checkpoint's files are and what they hold, without torch: the files of a checkpoint folder (see folder.py),
the files a path names (a checkpoint folder, a bare .safetensors file, a nanoGPT / build-nanogpt .pt file, or a folder
of LoRA adapters: its base's), the newest checkpoint under checkpoints/, and how its weights are stored.
"""

from pathlib import Path

from gptkit.checkpoint.adapters import ADAPTER_CONFIG_FILE, lora_settings
from gptkit.checkpoint.nanogpt import is_nanogpt_file
from gptkit.checkpoint.tensors import FLOAT_DTYPES, read_safetensors_header
from gptkit.errors import GptkitError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "gptkit.json"


def resolve(path: str | Path) -> tuple[Path, Path | None]:
    """(weights file, config file or None) for a checkpoint directory or a bare .safetensors file; for a folder of
    LoRA adapters, those of the base checkpoint they name."""
    path = Path(path)
    if path.is_dir():
        weights = path / WEIGHTS_FILE
        if is_adapter_folder(path):  # LoRA adapters: their base's files
            base = Path(lora_settings(path)[1])
            if is_adapter_folder(base):
                raise GptkitError(f"{path}: the base of LoRA adapters must be a checkpoint, not more adapters ({base})")
            return resolve(base)
        if not weights.is_file():
            if (path / "pytorch_model.bin").is_file():
                raise GptkitError(
                    f"{path} holds pytorch_model.bin, not {WEIGHTS_FILE}: convert it with gptkit download"
                )
            raise GptkitError(f"{path} is not a checkpoint: it has no {WEIGHTS_FILE}")
        config = path / CONFIG_FILE
        return weights, config if config.is_file() else None
    if path.is_file():
        if is_nanogpt_file(path):  # nanoGPT's ckpt.pt, build-nanogpt's model_XXXXX.pt: read through nanogpt.py
            return path, None
        if path.suffix != ".safetensors":
            raise GptkitError(
                f"{path} is not a checkpoint: give a checkpoint directory, a .safetensors file, or a nanoGPT / "
                "build-nanogpt .pt file"
            )
        config = path.parent / CONFIG_FILE
        return path, config if config.is_file() else None
    raise GptkitError(f"checkpoint {path} does not exist")


def checkpoint_files(path: str | Path) -> list[Path]:
    """The files that make the checkpoint at path (weights, config.json, gptkit.json: those present)."""
    weights, config = resolve(path)
    metadata = Path(path) / METADATA_FILE if Path(path).is_dir() else None
    return [p for p in (weights, config, metadata) if p is not None and p.is_file()]


def is_int8(header: dict) -> bool:
    """Whether a safetensors header is that of an int8 checkpoint (gptkit quantize's variant of the format)."""
    return any(isinstance(info, dict) and info.get("dtype") == "I8" for info in header.values())


def quantization_of(path: str | Path) -> str | None:
    """The quantization of a checkpoint's weights: "int8" (written by gptkit quantize) or None; needs no torch."""
    if is_nanogpt_file(resolve(path)[0]):  # nanoGPT's and build-nanogpt's weights are float
        return None
    return "int8" if is_int8(read_safetensors_header(resolve(path)[0])) else None


def stored_float_dtype(path: str | Path) -> str:
    """The float dtype a checkpoint stores its token embedding in (float32, float16 or bfloat16); needs no torch."""
    header = read_safetensors_header(resolve(path)[0])
    wte = header.get("transformer.wte.weight", header.get("wte.weight", {}))
    return FLOAT_DTYPES.get(wte.get("dtype"), "float32")


def is_checkpoint(path: Path) -> bool:
    return (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file()


def find_latest_checkpoint(root: str | Path = "checkpoints") -> Path | None:
    """The most recently written checkpoint directory under root (searched two levels deep), if any."""
    root = Path(root)
    if not root.is_dir():
        return None
    candidates = [p for p in [root, *root.glob("*"), *root.glob("*/*")] if p.is_dir() and is_checkpoint(p)]
    return max(candidates, key=lambda p: (p / WEIGHTS_FILE).stat().st_mtime, default=None)


def checkpoint_or_latest(ckpt: Path | None, give: str) -> Path:
    """ckpt, else the newest checkpoint under checkpoints/; with neither, an error that says how to get one (give:
    how the command is given a checkpoint, as "CKPT" or "--ckpt DIR")."""
    if ckpt is not None:
        return ckpt
    latest = find_latest_checkpoint()
    if latest is None:
        raise GptkitError(
            "no checkpoint under checkpoints/: train one (gptkit train data/input.txt) "
            f"or download one (gptkit download gpt2), or give {give}"
        )
    return latest


def is_adapter_folder(path: str | Path) -> bool:
    """Whether path is a folder of LoRA adapters (a LoRA run, or one of its saves), not a whole checkpoint."""
    path = Path(path)
    return path.is_dir() and (path / ADAPTER_CONFIG_FILE).is_file() and not (path / WEIGHTS_FILE).is_file()
