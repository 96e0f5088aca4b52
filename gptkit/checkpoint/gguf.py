"""`gptkit export --format gguf`: a checkpoint as one GGUF file, the format of llama.cpp (and of Ollama, LM Studio
and the other programs built on it), written with the gguf package, llama.cpp's own Python writer.

The file holds what llama.cpp's converter (convert_hf_to_gguf.py) makes of a Hugging Face GPT-2:
- architecture gpt2 and its hyperparameters (context, width, layers, heads, MLP width, layer norm epsilon);
- the tensors under the names llama.cpp's gpt2 architecture reads (gguf.MODEL_TENSORS), in nn.Linear's (out, in)
  layout, which is gptkit's own. Biases, layer norms and the position embedding stay f32; the other matrices take
  --type, except that a q8_0 matrix whose rows are not a multiple of 32 (Q8_0's block) is f16, as there;
- the output head only where it is not the token embedding: a float model's head is tied, and llama.cpp then uses
  token_embd; an int8 checkpoint's head is quantized apart, so it is stored. int8 weights are dequantized first;
- GPT-2's tokenizer: the 50,257 tokens, their types, the 50,000 merges, the "gpt-2" pre-tokenizer, <|endoftext|>
  as BOS and EOS, no BOS added to a prompt. A padded vocabulary (nanoGPT's 50,304 rows) is cut to those tokens;
- the checkpoint's chat template as Jinja (tokenizer.chat_template), which llama.cpp's chat uses with --jinja.
The tensors are converted and written one at a time (a bar shows the bytes), into a temporary file renamed at the end.
"""

import time
from pathlib import Path

import numpy as np
import torch

from gptkit.checkpoint.folder import load_checkpoint, read_metadata
from gptkit.checkpoint.locate import resolve
from gptkit.errors import GptkitError
from gptkit.options import ExportOptions
from gptkit.data.tokenizer import EOT_TOKEN, VOCAB_SIZE
from gptkit.checkpoint.tokenizer_files import merges, tokens
from gptkit.inference.chat_template import jinja_template, recorded_template

# gptkit's module names in a block, and the tensor of llama.cpp's gpt2 architecture (gguf.MODEL_TENSOR) each is.
BLOCK_TENSORS = {
    "ln_1": "ATTN_NORM",
    "attn.c_attn": "ATTN_QKV",
    "attn.c_proj": "ATTN_OUT",
    "ln_2": "FFN_NORM",
    "mlp.c_fc": "FFN_UP",
    "mlp.c_proj": "FFN_DOWN",
}
OTHER_TENSORS = {
    "transformer.wte": "TOKEN_EMBD",
    "transformer.wpe": "POS_EMBD",
    "transformer.ln_f": "OUTPUT_NORM",
    "lm_head": "OUTPUT",
}
PADDED_TENSORS = ("transformer.wte.weight", "lm_head.weight")  # a row per token: a padded vocabulary is cut
F16_MAX = 65504.0


def gguf_names(n_layer: int) -> dict[str, str]:
    """gptkit's module names -> llama.cpp's tensor names (without .weight / .bias), from the gguf package's tables."""
    import gguf

    def name(tensor: str, bid: int | None = None) -> str:
        return gguf.TENSOR_NAMES[gguf.MODEL_TENSOR[tensor]].format(bid=bid)

    names = {ours: name(theirs) for ours, theirs in OTHER_TENSORS.items()}
    for i in range(n_layer):
        names.update({f"transformer.h.{i}.{ours}": name(theirs, i) for ours, theirs in BLOCK_TENSORS.items()})
    return names


def float_tensors(model) -> dict[str, torch.Tensor]:
    """The model's tensors under gptkit's names, float32, int8 weights dequantized, a tied output head left out."""
    state = dict(model.state_dict())
    for name in [k for k in state if k.endswith(".scales")]:
        weight = name.removesuffix(".scales") + ".weight"
        state[weight] = state[weight].float() * state.pop(name).float()[:, None]
    if model.lm_head.weight is model.transformer.wte.weight:
        del state["lm_head.weight"]
    return {k: v.float()[:VOCAB_SIZE] if k in PADDED_TENSORS else v.float() for k, v in state.items()}


def tensor_type(name: str, shape: tuple, wanted):
    """A tensor's type in the file: convert_hf_to_gguf's rules (see the module's docstring)."""
    import gguf

    position = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD] + ".weight"
    if len(shape) == 1 or name == position or wanted == gguf.GGMLQuantizationType.F32:
        return gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    if shape[-1] % block:
        return gguf.GGMLQuantizationType.F16
    return wanted


def to_type(name: str, tensor: torch.Tensor, qtype) -> np.ndarray:
    """A float32 tensor as the bytes of qtype (gguf.quants: bit for bit what llama.cpp's own quantizer writes)."""
    import gguf

    array = tensor.detach().contiguous().numpy()
    if qtype == gguf.GGMLQuantizationType.F16 and np.abs(array).max(initial=0) > F16_MAX:
        raise GptkitError(
            f"{name} holds values beyond f16's range (±{F16_MAX:.0f}): export with --type bf16 or f32 instead"
        )
    return gguf.quants.quantize(array, qtype)


def tensor_plan(model, ckpt, wanted) -> list[tuple]:
    """(name in the file, gptkit's name, float32 tensor, its type in the file) of each tensor, in the order written."""
    names = gguf_names(model.config.n_layer)
    plan = []
    for name, tensor in float_tensors(model).items():
        module, _, kind = name.rpartition(".")
        if module not in names:
            raise GptkitError(f"{ckpt}: tensor {name} has no place in llama.cpp's gpt2 architecture")
        gguf_name = f"{names[module]}.{kind}"
        plan.append((gguf_name, name, tensor, tensor_type(gguf_name, tuple(tensor.shape), wanted)))
    return plan


def add_metadata(writer, config, name: str, file_type, chat_template: str):
    """The file's keys: its name and type, the gpt2 hyperparameters, GPT-2's tokenizer and the chat template."""
    import gguf

    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(4 * config.n_embd)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    token_types = [gguf.TokenType.NORMAL] * VOCAB_SIZE
    token_types[EOT_TOKEN] = gguf.TokenType.CONTROL
    writer.add_token_list(tokens())
    writer.add_token_types(token_types)
    writer.add_token_merges(merges())
    writer.add_bos_token_id(EOT_TOKEN)
    writer.add_eos_token_id(EOT_TOKEN)
    writer.add_add_bos_token(False)
    writer.add_chat_template(chat_template)


def write_tensors(writer, path: Path, plan: list[tuple], console):
    """The header, the keys, the tensor table and then each tensor's bytes (a bar shows them) into path."""
    import gguf
    from rich.progress import DownloadColumn, TransferSpeedColumn

    from gptkit.progress import progress_bar

    total = 0
    for name, _, tensor, qtype in plan:
        shape = tuple(tensor.shape)
        nbytes = int(np.prod(gguf.quant_shape_to_byte_shape(shape, qtype)))
        writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        total += nbytes
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    bar = progress_bar(  # a bar is for people: in a log or a pipe its stop would leave a blank line
        DownloadColumn(), TransferSpeedColumn(), console=console, transient=True, enabled=console.is_terminal
    )
    with bar:
        task = bar.add_task(f"writing {path.name}", total=total)
        for _, name, tensor, qtype in plan:
            data = to_type(name, tensor, qtype)
            writer.write_tensor_data(data)
            bar.advance(task, data.nbytes)


def export_notes(config, plan: list[tuple], file_type: str) -> list[str]:
    """What the file holds differently from the checkpoint."""
    import gguf

    notes = []
    if config.vocab_size > VOCAB_SIZE:
        notes.append(f"vocabulary cut from {config.vocab_size} to GPT-2's {VOCAB_SIZE} tokens")
    if config.activation == "gelu":  # a model converted from nanoGPT (gptkit convert)
        notes.append("llama.cpp's gpt2 runs GELU's tanh approximation, not the exact GELU this model was trained with")
    if file_type == "q8_0":
        fallback = sum(1 for *_, qtype in plan if qtype == gguf.GGMLQuantizationType.F16)
        if fallback:
            notes.append(f"{fallback} matrices f16 (rows not a multiple of 32)")
    return notes


def export(opts: ExportOptions) -> Path:
    """`gptkit export --format gguf`: write opts.ckpt as a GGUF file (opts.out_path), atomically, with the chat
    template its gptkit.json records (else the default) as Jinja."""
    import gguf
    from rich.console import Console

    from gptkit.files import atomic_path
    from gptkit.units import human_bytes

    out = opts.out_path
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    qtypes = gguf.GGMLQuantizationType
    wanted, file_type = {
        "f32": (qtypes.F32, gguf.LlamaFileType.ALL_F32),
        "f16": (qtypes.F16, gguf.LlamaFileType.MOSTLY_F16),
        "bf16": (qtypes.BF16, gguf.LlamaFileType.MOSTLY_BF16),
        "q8_0": (qtypes.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    }[opts.type]
    start = time.perf_counter()
    template = recorded_template(read_metadata(opts.ckpt), f"{opts.ckpt}'s gptkit.json")
    with console.status(f"loading {opts.ckpt}"):
        model = load_checkpoint(opts.ckpt)
    config = model.config
    plan = tensor_plan(model, opts.ckpt, wanted)
    del model

    folder = Path(opts.ckpt) if Path(opts.ckpt).is_dir() else Path(opts.ckpt).parent
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])
        try:
            add_metadata(writer, config, folder.resolve().name, file_type, jinja_template(template))
            write_tensors(writer, tmp, plan, console)
        finally:
            writer.close()
    size = out.stat().st_size
    source = resolve(opts.ckpt)[0].stat().st_size
    console.print(
        f"wrote {out}: {human_bytes(size)} ({opts.type}), {size / source:.0%} of the checkpoint's "
        f"{human_bytes(source)} of safetensors, in {time.perf_counter() - start:.1f} s"
        + "".join(f"; {note}" for note in export_notes(config, plan, opts.type))
        + f" | run it with: llama-cli -m {out}"
    )
    return out
