"""GPT-2 as Hugging Face's transformers stores it, and gptkit's int8 variant of it: config.json as GPT2Config, and the
tensors under GPT2LMHeadModel's names and orientation, mapped to and from gptkit's state dict and checked name by
name, shape by shape; a pytorch_model.bin converted to a checked model.safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gptkit.checkpoint.tensors import save_tensors
from gptkit.data.tokenizer import EOT_TOKEN, VOCAB_SIZE
from gptkit.errors import GptkitError
from gptkit.model.config import GPTConfig

if TYPE_CHECKING:
    import torch

    from gptkit.model.gpt import GPT

# Hugging Face's GPT-2 uses Conv1D layers, whose weights are the transpose of nn.Linear's.
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Causal-mask buffers some repos (openai-community/gpt2) store alongside the weights.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# config.json's activation_function -> GPTConfig.activation: the tanh approximation by either name, or the exact GELU.
SUPPORTED_ACTIVATIONS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu"}
SCALES_SUFFIX = ".scales"
INT8_QUANTIZATION = {
    "quant_method": "gptkit_int8",
    "bits": 8,
    "granularity": "per_output_channel",
    "modules": "every Linear and lm_head; embeddings, layer norms and biases stay float",
    "weight_layout": "(out_features, in_features), scales in <module>.scales",
}


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

    def int8_layer(_, linear):  # the shapes only: quantizing meta weights would import torch._dynamo (see model/gpt.py)
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
