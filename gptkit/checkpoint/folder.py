"""The checkpoint format, read and written here only.

A gptkit checkpoint is a directory that is also a Hugging Face GPT-2 model directory:
    config.json         transformers' GPT2Config
    model.safetensors   GPT2LMHeadModel's tensors (Conv1D weights stored (in, out), lm_head tied to wte)
    gptkit.json         how it was made (steps, tokens, losses, data, date, version); optional
Other files (a training run's state) may sit beside them. Every file is written atomically: to a temporary
file in the same directory, then renamed over the old one.

The int8 variant (written by `gptkit quantize`): every Linear's weight, the output head's included, is int8 in
nn.Linear's (out, in) layout (Int8Linear's, which torch's int8 kernel reads as it is), with `<module>.scales` beside
it, one float32 per output channel (weight ~= int8 * scale). The embeddings, layer norms and biases stay float, so the
output head (int8) is stored apart from the token embedding. config.json's quantization_config says so;
transformers, which does not know it, refuses the file (the (out, in) shapes do not fit Conv1D's) rather than read
int8 numbers as weights.

torch is imported inside the functions that need it, so that `gptkit inspect` can read headers without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from gptkit import __version__
from gptkit.model.config import LORA_TARGETS, GPTConfig, LoraSettings
from gptkit.errors import GptkitError
from gptkit.files import atomic_dir, atomic_path, read_json, write_json
from gptkit.checkpoint.nanogpt import NanoGPTCheckpoint, is_nanogpt_file
from gptkit.data.tokenizer import EOT_TOKEN, VOCAB_SIZE
from gptkit.checkpoint.tokenizer_files import write_tokenizer_files

if TYPE_CHECKING:
    import torch

    from gptkit.model.gpt import GPT

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "gptkit.json"
# A LoRA run's adapters, as PEFT's save_pretrained writes them for GPT-2 (see save_adapters).
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."

# Hugging Face's GPT-2 uses Conv1D layers, whose weights are the transpose of nn.Linear's.
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Causal-mask buffers some repos (openai-community/gpt2) store alongside the weights.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# config.json's activation_function -> GPTConfig.activation: the tanh approximation by either name, or the exact GELU.
SUPPORTED_ACTIVATIONS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu"}
MAX_HEADER_BYTES = 100 * 1024 * 1024
SCALES_SUFFIX = ".scales"
INT8_QUANTIZATION = {
    "quant_method": "gptkit_int8",
    "bits": 8,
    "granularity": "per_output_channel",
    "modules": "every Linear and lm_head; embeddings, layer norms and biases stay float",
    "weight_layout": "(out_features, in_features), scales in <module>.scales",
}
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


# --- safetensors files ---------------------------------------------------------------------------------------------


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


# --- safetensors header (no torch) ---------------------------------------------------------------------------------


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


# --- locating checkpoints ------------------------------------------------------------------------------------------


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


# --- config --------------------------------------------------------------------------------------------------------


def hf_config(config: GPTConfig, dtype: str = "float32", int8: bool = False) -> dict:
    """config.json in the form of transformers' GPT2Config (with a quantization_config for int8 weights)."""
    quantization = {"quantization_config": INT8_QUANTIZATION} if int8 else {}
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": config.activation,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": EOT_TOKEN if config.vocab_size > EOT_TOKEN else None,
        "eos_token_id": EOT_TOKEN if config.vocab_size > EOT_TOKEN else None,
        "dtype": dtype,
        **quantization,
    }


def config_from_hf(cfg: dict, source: str | Path = "config.json") -> GPTConfig:
    """GPTConfig from a GPT2Config dict, refusing the variants this model does not implement."""
    if cfg.get("model_type") != "gpt2":
        raise GptkitError(f"{source}: this is a '{cfg.get('model_type', 'unknown')}' model, not GPT-2")
    unsupported = []
    if cfg.get("activation_function", "gelu_new") not in SUPPORTED_ACTIVATIONS:
        unsupported.append(f"activation_function={cfg['activation_function']}")
    if cfg.get("n_inner") not in (None, 4 * cfg.get("n_embd", 0)):
        unsupported.append(f"n_inner={cfg['n_inner']}")
    for flag, default in (("scale_attn_weights", True), ("tie_word_embeddings", True)):
        if cfg.get(flag, default) is not default:
            unsupported.append(f"{flag}={cfg[flag]}")
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if cfg.get(flag):
            unsupported.append(f"{flag}=true")
    if unsupported:
        raise GptkitError(f"{source}: GPT-2 variant not supported by gptkit ({', '.join(unsupported)})")
    try:
        return GPTConfig(
            block_size=int(cfg.get("n_positions", cfg.get("n_ctx", 1024))),
            vocab_size=int(cfg.get("vocab_size", VOCAB_SIZE)),
            n_layer=int(cfg["n_layer"]),
            n_head=int(cfg["n_head"]),
            n_embd=int(cfg["n_embd"]),
            dropout=float(cfg.get("resid_pdrop", 0.0)),
            layer_norm_epsilon=float(cfg.get("layer_norm_epsilon", 1e-5)),
            activation=SUPPORTED_ACTIVATIONS[cfg.get("activation_function", "gelu_new")],
        )
    except KeyError as e:
        raise GptkitError(f"{source}: missing {e.args[0]}") from None
    except (TypeError, ValueError) as e:
        raise GptkitError(f"{source}: {e}") from None


def config_from_shapes(header: dict, source: Path) -> GPTConfig:
    """Infer the config of a bare .safetensors file (GPT-2's head size is always 64)."""
    shapes = {strip_prefix(k): v["shape"] for k, v in header.items() if k != "__metadata__"}
    if "wte.weight" not in shapes or "wpe.weight" not in shapes:
        raise GptkitError(f"{source} holds no GPT-2 weights (no wte.weight / wpe.weight) and has no config.json")
    vocab_size, n_embd = shapes["wte.weight"]
    n_layer = len({k.split(".")[1] for k in shapes if k.startswith("h.")})
    return GPTConfig(
        block_size=shapes["wpe.weight"][0],
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_head=max(1, n_embd // 64),
        n_embd=n_embd,
    )


def read_config(path: str | Path) -> GPTConfig:
    weights, config_file = resolve(path)
    if is_nanogpt_file(weights):  # a nanoGPT / build-nanogpt .pt: its config is pickled (reading it imports torch)
        from gptkit.checkpoint.nanogpt import read_nanogpt_file

        return read_nanogpt_file(weights).config
    meta = read_safetensors_header(weights).get("__metadata__", {})
    if config_file is not None:
        return config_from_hf(read_json(config_file, "copy or download the checkpoint again"), config_file)
    if "gptkit_config" in meta:
        return config_from_hf(json.loads(meta["gptkit_config"]), weights)
    return config_from_shapes(read_safetensors_header(weights), weights)


# --- tensors: gptkit <-> Hugging Face -------------------------------------------------------------------------------


def strip_prefix(name: str) -> str:
    return name.removeprefix("transformer.")


def to_hf_tensors(model: GPT, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The model's weights (or state, its state dict gathered elsewhere) under GPT2LMHeadModel's names and orientation
    (a float lm_head left out: it is tied). An int8 model's int8 weights keep Int8Linear's (out, in) layout, and its
    int8 output head is kept."""
    out = {}
    for name, tensor in (model.state_dict() if state is None else state).items():
        if name == "lm_head.weight" and tensor.is_floating_point():
            continue
        out[name] = tensor.t() if name.endswith(TRANSPOSED) and tensor.is_floating_point() else tensor
    return out


def expected_tensors(config: GPTConfig, int8: bool) -> dict[str, tuple[torch.Size, bool]]:
    """gptkit's state-dict names of a model of config, each with its shape and whether it is int8."""
    import torch

    from gptkit.model.int8 import Int8Linear, replace_linears
    from gptkit.model.gpt import GPT

    def int8_layer(_, linear):  # the shapes only: quantizing meta weights would import torch._dynamo (see model.py)
        weight = torch.empty(linear.weight.shape, dtype=torch.int8)
        return Int8Linear(weight, torch.empty(linear.out_features), linear.bias)

    with torch.device("meta"):
        model = replace_linears(GPT(config), int8_layer) if int8 else GPT(config)
        return {k: (v.shape, v.dtype == torch.int8) for k, v in model.state_dict().items()}


def from_hf_tensors(
    tensors: dict[str, torch.Tensor], config: GPTConfig, source, int8: bool = False
) -> dict[str, torch.Tensor]:
    """Map a GPT-2 checkpoint's tensors (of the int8 variant with int8) onto gptkit's state-dict names, checking
    every name, shape and, for int8, which tensors are int8."""
    import torch

    expected = expected_tensors(config, int8)
    out = {}
    for name, tensor in tensors.items():
        short = strip_prefix(name)
        if short.endswith(IGNORED_SUFFIXES):
            continue
        if short == "lm_head.weight" and not int8:
            wte = tensors.get("transformer.wte.weight", tensors.get("wte.weight"))
            if wte is not None and not torch.equal(tensor, wte):
                raise GptkitError(f"{source}: lm_head.weight is not tied to wte.weight, which gptkit requires")
            continue
        key = short if short.startswith("lm_head.") else "transformer." + short
        if key not in expected:
            raise GptkitError(f"{source}: unexpected tensor '{name}' for a GPT-2 of this config")
        shape, want_int8 = expected[key]
        if int8 and (tensor.dtype == torch.int8) != want_int8:
            kind = "int8" if want_int8 else "float"
            raise GptkitError(f"{source}: tensor '{name}' is {tensor.dtype}, expected {kind} in an int8 checkpoint")
        out[key] = tensor.t().contiguous() if short.endswith(TRANSPOSED) and not int8 else tensor
        if out[key].shape != shape:
            raise GptkitError(
                f"{source}: tensor '{name}' has shape {tuple(tensor.shape)}, expected {tuple(shape)} for this config"
            )
    missing = sorted(k for k in expected if k not in out and (int8 or k != "lm_head.weight"))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise GptkitError(f"{source}: missing tensors {', '.join(missing[:3])}{more}")
    if not int8:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def convert_bin(bin_path: Path, out_path: Path, config: GPTConfig):
    """A GPT-2 pytorch_model.bin (loaded with weights_only: no pickled code runs) as a checked model.safetensors."""
    import torch

    try:
        tensors = torch.load(bin_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GptkitError(f"cannot read {bin_path}: {str(e).splitlines()[0]}") from None
    if not isinstance(tensors, dict):
        raise GptkitError(f"{bin_path} does not hold a state dict")
    from_hf_tensors(tensors, config, bin_path)
    keep = {k: v for k, v in tensors.items() if not strip_prefix(k).endswith(IGNORED_SUFFIXES + ("lm_head.weight",))}
    save_tensors(out_path, keep)


def read_nanogpt_tensors(
    path: Path, device="cpu", metadata: dict | None = None, nanogpt_file: NanoGPTCheckpoint | None = None
) -> tuple[GPTConfig, dict]:
    """A nanoGPT / build-nanogpt .pt file (see nanogpt.py) as (its config, its tensors under GPT2LMHeadModel's names
    and orientation, views of nn.Linear's), to be loaded as any checkpoint's; its step into metadata. nanogpt_file:
    the file as nanogpt.read_nanogpt_file read it already (None: read it here)."""
    from gptkit.checkpoint.nanogpt import nanogpt_state_dict, read_nanogpt_file

    nanogpt_file = nanogpt_file if nanogpt_file is not None else read_nanogpt_file(path)
    if metadata is not None and nanogpt_file.step is not None:
        metadata["step"] = str(nanogpt_file.step)
    tensors = nanogpt_state_dict(nanogpt_file)
    for name, (shape, _) in expected_tensors(nanogpt_file.config, int8=False).items():  # named as the file saved them
        if name in tensors and tensors[name].shape != shape:
            raise GptkitError(
                f"{path}: tensor '{name}' has shape {tuple(tensors[name].shape)}, expected {tuple(shape)} for its "
                "model_args / GPTConfig"
            )
    tensors = {k: v.t() if k.endswith(TRANSPOSED) else v for k, v in tensors.items()}
    return nanogpt_file.config, {k: v.to(device) for k, v in tensors.items()}


# --- whole checkpoints ---------------------------------------------------------------------------------------------


def save_checkpoint(
    model: GPT,
    out_dir: str | Path,
    metadata: dict | None = None,
    extra_positions: torch.Tensor | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write model (and gptkit.json with metadata) as a checkpoint directory: every file into a temporary folder
    first, so that a failed write leaves the directory as it was (files.atomic_dir). state: the model's state dict
    when the model does not hold it whole (the weights of a sharded model, gathered: fsdp.full_model_state).
    extra_positions: position embeddings past the model's context (those a fine-tuning run at a shorter window set
    aside, see GPT.crop_block_size), saved after the model's own so that the checkpoint keeps its whole context."""
    import torch

    out_dir = Path(out_dir)
    dtype = str(model.transformer.wte.weight.dtype).removeprefix("torch.")
    tensors, model_config = to_hf_tensors(model, state), model.config
    int8 = any(t.dtype == torch.int8 for t in tensors.values())
    if extra_positions is not None and len(extra_positions):
        wpe = tensors["transformer.wpe.weight"]
        tensors["transformer.wpe.weight"] = torch.cat([wpe, extra_positions.to(wpe.device, wpe.dtype)])
        model_config = replace(model_config, block_size=model_config.block_size + len(extra_positions))
    config = hf_config(model_config, dtype, int8)
    step = {"step": str(metadata["step"])} if metadata and "step" in metadata else {}  # eval's record of what it read
    info = {
        "gptkit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        **(metadata or {}),
    }
    with atomic_dir(out_dir, first=WEIGHTS_FILE) as folder:
        save_tensors(folder / WEIGHTS_FILE, tensors, {"gptkit_config": json.dumps(config), **step})
        write_json(folder / CONFIG_FILE, config)
        write_json(folder / METADATA_FILE, info)
        write_tokenizer_files(folder)  # for transformers' AutoTokenizer and pipeline
    return out_dir


def load_checkpoint(
    path: str | Path,
    device="cpu",
    dtype=None,
    metadata: dict | None = None,
    merge_adapters: bool = True,
    nanogpt_file: NanoGPTCheckpoint | None = None,
) -> GPT:
    """A GPT (eval mode) from a checkpoint directory or a bare .safetensors file; dtype defaults to float32. An int8
    checkpoint's Linears (and output head) become Int8Linear, from the stored int8 weights and scales; dtype is then
    that of the activations, the scales and the float tensors. metadata: filled with the weights file's metadata
    (its "step" where gptkit train saved it). A folder of LoRA adapters gives its base with the adapters, merged
    into the weights (or, without merge_adapters, as trainable LoRA layers beside the frozen weights). nanogpt_file:
    the nanoGPT / build-nanogpt .pt file at path as nanogpt.read_nanogpt_file read it already (None: read it here)."""
    import torch

    from gptkit.model.int8 import Int8Linear, replace_linears
    from gptkit.model.gpt import GPT

    weights, _ = resolve(path)
    if is_nanogpt_file(weights):  # converted on the fly, then checked as any checkpoint's tensors are
        config, stored = read_nanogpt_tensors(weights, device, metadata, nanogpt_file)
    else:
        config = read_config(path)
        stored = load_tensors(weights, device, metadata)
    int8 = any(t.dtype == torch.int8 for t in stored.values())
    tensors = from_hf_tensors(stored, config, weights, int8)
    dtype = dtype or torch.float32
    with torch.device("meta"):
        model = GPT(config)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    if int8:
        replace_linears(
            model,
            lambda name, _: Int8Linear(
                state[f"{name}.weight"], state[f"{name}{SCALES_SUFFIX}"], state.get(f"{name}.bias")
            ),
        )
    model.load_state_dict(state, assign=True)
    if not int8:
        model.lm_head.weight = model.transformer.wte.weight  # assign=True replaced the tied parameter
    if is_adapter_folder(path):
        from gptkit.model.lora import add_lora, merge_lora

        if int8:
            raise GptkitError(
                f"{path}: LoRA adapters on an int8 base are not supported: train them on a float checkpoint"
            )
        add_lora(model, lora_settings(path)[0])
        load_adapters(model, path)
        if merge_adapters:
            merge_lora(model)
    return model.eval()


def read_metadata(path: str | Path) -> dict:
    """gptkit.json of a checkpoint directory (or of the directory of a .safetensors file); {} when absent."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    meta = folder / METADATA_FILE
    remedy = "it only records how the checkpoint was made: restore it, or delete it to use the weights without it"
    return read_json(meta, remedy) if meta.is_file() else {}


# --- LoRA adapters (PEFT's format) -----------------------------------------------------------------------------------


def is_adapter_folder(path: str | Path) -> bool:
    """Whether path is a folder of LoRA adapters (a LoRA run, or one of its saves), not a whole checkpoint."""
    path = Path(path)
    return path.is_dir() and (path / ADAPTER_CONFIG_FILE).is_file() and not (path / WEIGHTS_FILE).is_file()


def lora_settings(folder: Path) -> tuple[LoraSettings, str]:
    """(the LoRA settings, the base checkpoint) of a folder of adapters, from its adapter_config.json."""
    path = Path(folder) / ADAPTER_CONFIG_FILE
    config = read_json(path, "restore it, or train the adapters again")
    by_module = {module: target for target, modules in LORA_TARGETS.items() for module in modules}
    modules = config.get("target_modules") or []
    targets = tuple(dict.fromkeys(by_module.get(m, by_module.get(f"attn.{m}")) for m in modules))
    if config.get("peft_type") != "LORA" or not modules or None in targets or not config.get("fan_in_fan_out"):
        raise GptkitError(f"{path}: not LoRA adapters of GPT-2's layers that gptkit reads")
    if not config.get("base_model_name_or_path"):
        raise GptkitError(f"{path} names no base model (base_model_name_or_path)")
    rank = int(config["r"])
    alpha, dropout = float(config.get("lora_alpha", rank)), float(config.get("lora_dropout") or 0.0)
    return LoraSettings(rank, alpha, dropout, targets), config["base_model_name_or_path"]


def save_adapters(model: GPT, folder: Path, settings: LoraSettings, base: str, metadata: dict | None = None):
    """A LoRA model's adapters as PEFT's save_pretrained writes them for GPT-2 (adapter_config.json,
    adapter_model.safetensors), and gptkit.json with metadata, in one step (atomic_dir)."""
    import torch

    from gptkit.model.lora import lora_layers

    tensors = {}
    for name, layer in lora_layers(model).items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": settings.rank,
        "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout,
        "target_modules": settings.modules,
        "fan_in_fan_out": True,  # GPT-2's Conv1D layers store (in, out)
        "bias": "none",
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
    }
    info = {"gptkit_version": __version__, "torch_version": torch.__version__, **(metadata or {})}
    step = {"step": str(metadata["step"])} if metadata and "step" in metadata else {}
    with atomic_dir(folder) as tmp:
        save_tensors(tmp / ADAPTER_WEIGHTS_FILE, tensors, step)
        write_json(tmp / ADAPTER_CONFIG_FILE, config)
        write_json(tmp / METADATA_FILE, info)
        write_tokenizer_files(tmp)


def load_adapters(model: GPT, folder: Path):
    """Set the adapters of a model add_lora prepared from folder's adapter_model.safetensors."""
    import torch

    from gptkit.model.lora import lora_layers

    path = Path(folder) / ADAPTER_WEIGHTS_FILE
    tensors = load_tensors(path)
    layers = lora_layers(model)
    expected = {f"{PEFT_PREFIX}{name}.lora_{ab}.weight" for name in layers for ab in "AB"}
    if missing := sorted(expected - tensors.keys()):
        raise GptkitError(f"{path} lacks {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    with torch.no_grad():
        for name, layer in layers.items():
            for ab, param in (("A", layer.lora_A), ("B", layer.lora_B)):
                tensor = tensors[f"{PEFT_PREFIX}{name}.lora_{ab}.weight"]
                if tensor.shape != param.shape:
                    raise GptkitError(
                        f"{path}: {name}.lora_{ab} has shape {tuple(tensor.shape)}, not {tuple(param.shape)}: "
                        "the adapters do not fit their base model"
                    )
                param.copy_(tensor)
