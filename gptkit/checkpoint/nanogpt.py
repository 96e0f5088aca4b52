"""nanoGPT's and build-nanogpt's checkpoint files (.pt), read as a GPTConfig and gptkit's state dict: the projects in
gptkit's lineage, whose checkpoints their users already have. The checkpoint package reads them through here, so every
command that takes a checkpoint takes one; `gptkit convert` writes one as a checkpoint folder.

The two formats, as their training scripts save them with torch.save:
- nanoGPT's train.py, `out_dir/ckpt.pt`: {'model': the model's state dict, 'optimizer': AdamW's state, 'model_args':
  dict(n_layer, n_head, n_embd, block_size, bias, vocab_size, dropout), 'iter_num', 'best_val_loss', 'config': the
  run's settings (plain values)};
- build-nanogpt's train_gpt2.py, `log/model_XXXXX.pt`: {'model': the state dict, 'config': its GPTConfig dataclass
  (block_size, vocab_size, n_layer, n_head, n_embd), 'step', 'val_loss'}; the dataclass is pickled by reference, as
  `__main__.GPTConfig` (the script run as itself), or `train_gpt2.GPTConfig` / `model.GPTConfig` where imported. A
  pickled GPTConfig with nanoGPT's fields (bias, dropout too: model.py's) is taken as nanoGPT's model.
Both state dicts use GPT-2's module names (transformer.wte, transformer.h.0.attn.c_attn, ..., lm_head tied to wte) and
nn.Linear's (out, in) weights: gptkit's own state dict. A model trained under torch.compile saves its names with the
prefix `_orig_mod.`. What differs from a gptkit model, and what is made of it:
- nanoGPT's MLP uses the exact GELU (erf), build-nanogpt's and GPT-2's the tanh approximation: the config says which
  (GPTConfig.activation "gelu" or "gelu_new"), so the model computes what it was trained with.
- nanoGPT's bias=False leaves out every Linear's and LayerNorm's bias: they become zeros, which compute the same
  (x @ W.T + 0; a LayerNorm shifted by 0). Fine-tuning in gptkit then trains them.
- the vocabulary is padded to 50304 rows (a multiple of 64, for speed): the rows are kept, so the loss is the one the
  original model computed (its softmax runs over them too); sampling cuts them off
  (inference.decode.drop_padded_vocabulary).
- nanoGPT's attention keeps a causal mask as a buffer, `attn.bias`, where torch has no scaled_dot_product_attention:
  dropped.
A vocabulary smaller than GPT-2's (nanoGPT's character-level models, their meta.pkl's) is refused: gptkit reads and
writes text with GPT-2's tokenizer only.

No pickled code runs: torch.load(weights_only=True) builds tensors and plain values only, and the one class allowed
besides, build-nanogpt's GPTConfig, is PickledGPTConfig here, which keeps the values it is given and nothing else. Any
other class or function named in the pickle is refused before anything is called. torch is imported inside the
functions, as in the checkpoint package, so that importing this module costs nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gptkit.model.config import GPTConfig
from gptkit.errors import GptkitError
from gptkit.data.tokenizer import VOCAB_SIZE

if TYPE_CHECKING:
    import torch

NANOGPT_SUFFIXES = (".pt", ".pth")
# Where build-nanogpt's GPTConfig is found when its checkpoint is unpickled (see the module's docstring).
GPTCONFIG_NAMES = ("__main__.GPTConfig", "train_gpt2.GPTConfig", "model.GPTConfig")
COMPILED_PREFIX = "_orig_mod."
# The model's shape in nanoGPT's model_args and build-nanogpt's GPTConfig: each field and the types it may have.
SHAPE_FIELDS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd")
OPTIONAL_FIELDS = {"bias": (bool,), "dropout": (int, float)}
# nanoGPT's causal-mask buffer (an attention layer's `bias` of shape (1, 1, T, T)), not a weight.
MASK_BUFFER = re.compile(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)")
# The modules whose bias nanoGPT's bias=False leaves out (every Linear but lm_head, every LayerNorm).
BIASED = re.compile(r"transformer\.(h\.\d+\.(ln_1|ln_2|attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)|ln_f)")
TOOLS = "nanoGPT's out/ckpt.pt or build-nanogpt's log/model_XXXXX.pt"


def is_nanogpt_file(path: str | Path) -> bool:
    """Whether path names a .pt file (nanoGPT's, build-nanogpt's: read_nanogpt_file says whether it is one); no
    torch."""
    return Path(path).suffix in NANOGPT_SUFFIXES


class PickledGPTConfig:
    """What build-nanogpt's GPTConfig becomes when its checkpoint is unpickled: the pickle's values, kept as they are
    (`state`), with nothing of the original class run; read_nanogpt_file checks them."""

    def __setstate__(self, state):
        self.state = state


@dataclass
class NanoGPTCheckpoint:
    """A nanoGPT / build-nanogpt checkpoint as read_nanogpt_file found it."""

    format: str
    """nanoGPT or build-nanogpt."""
    config: GPTConfig
    bias: bool
    """Whether its Linears and LayerNorms have biases (nanoGPT's bias=False: they have none)."""
    tensors: dict[str, torch.Tensor]
    """Its state dict as stored (names without `_orig_mod.`), memory-mapped from the file: read as they are used."""
    step: int | None
    """Training steps done (nanoGPT's iter_num, build-nanogpt's step), where recorded."""
    val_loss: float | None
    """The validation loss it recorded (nanoGPT's best_val_loss, build-nanogpt's val_loss)."""


def load_pickle(path: Path) -> object:
    """What torch.save wrote to path, unpickled with weights_only (tensors memory-mapped, not read): only tensors,
    plain values and build-nanogpt's GPTConfig (as PickledGPTConfig); anything else is refused in one line, before any
    of it runs. A file that is not torch.save's zip (a truncated one among them) is refused before torch reads it."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise GptkitError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save's format since torch 1.6; its index is at the end of the file
        raise GptkitError(
            f"{path} is not a PyTorch checkpoint, or it is truncated or damaged: torch.save writes a zip file, and "
            "this is not one (or its end is missing)"
        )
    allowed = [(PickledGPTConfig, name) for name in GPTCONFIG_NAMES]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise GptkitError(unpickling_error(path, str(e))) from None
    except OSError:
        raise
    except Exception as e:  # torch's reader on a damaged zip: RuntimeError, KeyError, EOFError, ...
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GptkitError(f"{path} is damaged or not a PyTorch checkpoint ({detail})") from None


def unpickling_error(path: Path, message: str) -> str:
    """The one line for torch's weights_only refusal (a long message of several paragraphs)."""
    name = re.search(r"GLOBAL (\S+) was not an allowed global", message) or re.search(
        r"unsupported GLOBAL (\S+) whose module", message
    )
    if name:
        return (
            f"{path}: refused: its pickle names {name[1]}, which gptkit does not load (it loads tensors, plain values "
            "and build-nanogpt's GPTConfig only); nothing in it was run"
        )
    detail = message.split("WeightsUnpickler error:")[-1].strip().split("\n\n")[0].strip().splitlines()
    detail = detail[0] if detail else "unknown"
    if re.search(r"reduce for unrecognized function|Can only (create|build)|blocked", message):
        return f"{path}: refused: its pickle holds an object gptkit does not load ({detail}); nothing in it was run"
    return f"{path} is damaged or not a PyTorch checkpoint ({detail})"


def read_nanogpt_file(path: str | Path) -> NanoGPTCheckpoint:
    """The nanoGPT or build-nanogpt checkpoint at path (a .pt file), checked: its format, config and state dict; the
    tensors are left in the file (memory-mapped) until nanogpt_state_dict reads them."""
    import torch

    path = Path(path)
    saved = load_pickle(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise GptkitError(f"{path} is not a nanoGPT or build-nanogpt checkpoint: it holds no 'model' ({TOOLS})")
    form, args, activation, where = saved_format(path, saved)
    config = checked_config(path, args, where, activation)
    tensors = {}
    for name, tensor in saved["model"].items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise GptkitError(f"{path}: its state dict holds {name!r}, which is not a named tensor")
        tensors[name.removeprefix(COMPILED_PREFIX)] = tensor
    if "model_args" in saved:  # nanoGPT's train.py
        step, val_loss = saved.get("iter_num"), saved.get("best_val_loss")
    else:  # build-nanogpt's names, else nanoGPT's (its GPTConfig pickled by a script of one's own)
        step, val_loss = saved.get("step", saved.get("iter_num")), saved.get("val_loss", saved.get("best_val_loss"))
    return NanoGPTCheckpoint(
        format=form,
        config=config,
        bias=bool(args.get("bias", True)),
        tensors=tensors,
        step=int(step) if isinstance(step, int) else None,
        val_loss=plain_float(val_loss),
    )


def saved_format(path: Path, saved: dict) -> tuple[str, object, str, str]:
    """(format, the model's settings as saved, the activation it computes, where the settings are) of what
    nanoGPT's or build-nanogpt's training script saved."""
    if "model_args" in saved:
        return "nanoGPT", saved["model_args"], "gelu", "model_args"
    if isinstance(saved.get("config"), PickledGPTConfig):
        args = saved["config"].state
        # build-nanogpt's GPTConfig has the five shape fields; nanoGPT's (model.py's, pickled by a script of one's
        # own) has bias and dropout too, and goes with nanoGPT's model and its exact GELU
        if isinstance(args, dict) and set(OPTIONAL_FIELDS) & set(args):
            return "nanoGPT", args, "gelu", "its GPTConfig"
        return "build-nanogpt", args, "gelu_new", "its GPTConfig"
    raise GptkitError(
        f"{path} is not a nanoGPT or build-nanogpt checkpoint: it has neither nanoGPT's 'model_args' nor "
        f"build-nanogpt's pickled GPTConfig ({TOOLS})"
    )


def checked_config(path: Path, args, where: str, activation: str) -> GPTConfig:
    """The GPTConfig of a checkpoint's settings (args, found in where), each checked."""
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise GptkitError(f"{path}: {where} is not a set of named values")
    unknown = sorted(set(args) - set(SHAPE_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise GptkitError(f"{path}: {where} has {', '.join(unknown)}, which gptkit's GPT-2 does not have")
    for field in SHAPE_FIELDS:
        value = args.get(field)
        if type(value) is not int or value < 1:
            problem = "is missing" if field not in args else f"is {value!r}, not a positive whole number"
            raise GptkitError(f"{path}: {where}'s {field} {problem}")
    for field, types in OPTIONAL_FIELDS.items():
        if field in args and type(args[field]) not in types:
            raise GptkitError(f"{path}: {where}'s {field} is {args[field]!r}, not a {types[0].__name__}")
    if args["vocab_size"] < VOCAB_SIZE:
        raise GptkitError(
            f"{path} has a vocabulary of {args['vocab_size']} tokens, not GPT-2's {VOCAB_SIZE} (nanoGPT's "
            "character-level data has its own, in meta.pkl): gptkit reads and writes text with GPT-2's tokenizer only"
        )
    dropout = float(args.get("dropout", 0.0))
    if not 0 <= dropout < 1:
        raise GptkitError(f"{path}: {where}'s dropout is {dropout}, not a probability below 1")
    try:
        return GPTConfig(**{f: args[f] for f in SHAPE_FIELDS}, dropout=dropout, activation=activation)
    except ValueError as e:
        raise GptkitError(f"{path}: {e}") from None


def plain_float(value) -> float | None:
    """A recorded loss as a float: a Python number, or a one-element tensor (nanoGPT's best_val_loss)."""
    import torch

    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        return float(value)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def nanogpt_state_dict(checkpoint: NanoGPTCheckpoint) -> dict[str, torch.Tensor]:
    """The checkpoint's weights as gptkit's state dict (nn.Linear's orientation, lm_head.weight as stored: tied to
    wte), read from the file into fresh memory; the causal-mask buffers left out, the biases a bias=False model lacks
    added as zeros. load_checkpoint checks every name and shape."""
    import torch

    copies = {}  # by where the tensor's data is: lm_head.weight, which is wte's, read once
    out = {}
    for name, tensor in checkpoint.tensors.items():
        if not MASK_BUFFER.fullmatch(name):
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape, tensor.dtype)
            out[name] = copies[key] = copies[key] if key in copies else tensor.clone()
    if not checkpoint.bias:
        for name, weight in list(out.items()):
            module = name.removesuffix(".weight")
            if name.endswith(".weight") and BIASED.fullmatch(module) and f"{module}.bias" not in out:
                out[f"{module}.bias"] = torch.zeros(weight.size(0), dtype=weight.dtype)
    return out
