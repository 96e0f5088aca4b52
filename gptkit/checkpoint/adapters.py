"""A LoRA run's adapters in PEFT's format, as its save_pretrained writes them for GPT-2: adapter_config.json (the
settings and the base checkpoint) and adapter_model.safetensors (each adapted layer's lora_A and lora_B, named after
GPT2LMHeadModel's modules). folder.save_adapters writes them as a folder; load_checkpoint reads them with their base.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gptkit.checkpoint.tensors import load_tensors
from gptkit.errors import GptkitError
from gptkit.files import read_json
from gptkit.model.config import LORA_TARGETS, LoraSettings

if TYPE_CHECKING:
    import torch

    from gptkit.model.gpt import GPT

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


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


def peft_config(settings: LoraSettings, base: str) -> dict:
    """adapter_config.json of adapters with settings on the checkpoint base."""
    return {
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


def adapter_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """A LoRA model's adapters under PEFT's names."""
    from gptkit.model.lora import lora_layers

    tensors = {}
    for name, layer in lora_layers(model).items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B
    return tensors


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
