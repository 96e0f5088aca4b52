"""The checkpoint format, read and written by this package only; here, whole checkpoint folders.

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

Here: whole folders written and read (a checkpoint; a LoRA run's adapters), a checkpoint's config and its gptkit.json.
The rest of the format: locate.py (which files), tensors.py (safetensors), huggingface.py (config.json and the tensors'
names), adapters.py (PEFT's format), nanogpt.py (.pt files). torch is imported inside the functions that need it, so
that `gptkit inspect` can read headers without it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from gptkit import __version__
from gptkit.checkpoint.adapters import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    adapter_tensors,
    load_adapters,
    lora_settings,
    peft_config,
)
from gptkit.checkpoint.huggingface import (
    SCALES_SUFFIX,
    TRANSPOSED,
    config_from_hf,
    config_from_shapes,
    expected_tensors,
    from_hf_tensors,
    hf_config,
    to_hf_tensors,
)
from gptkit.checkpoint.locate import CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE, is_adapter_folder, resolve
from gptkit.checkpoint.nanogpt import NanoGPTCheckpoint, is_nanogpt_file
from gptkit.checkpoint.tensors import load_tensors, read_safetensors_header, save_tensors
from gptkit.checkpoint.tokenizer_files import write_tokenizer_files
from gptkit.errors import GptkitError
from gptkit.files import atomic_dir, read_json, write_json
from gptkit.model.config import GPTConfig, LoraSettings

if TYPE_CHECKING:
    import torch

    from gptkit.model.gpt import GPT


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


def save_adapters(model: GPT, folder: Path, settings: LoraSettings, base: str, metadata: dict | None = None):
    """A LoRA model's adapters as PEFT's save_pretrained writes them for GPT-2 (adapters.py), and gptkit.json with
    metadata, in one step (atomic_dir)."""
    import torch

    info = {"gptkit_version": __version__, "torch_version": torch.__version__, **(metadata or {})}
    step = {"step": str(metadata["step"])} if metadata and "step" in metadata else {}
    with atomic_dir(folder) as tmp:
        save_tensors(tmp / ADAPTER_WEIGHTS_FILE, adapter_tensors(model), step)
        write_json(tmp / ADAPTER_CONFIG_FILE, peft_config(settings, base))
        write_json(tmp / METADATA_FILE, info)
        write_tokenizer_files(tmp)
