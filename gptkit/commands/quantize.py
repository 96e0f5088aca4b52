"""`gptkit quantize`: a float checkpoint written once as an int8 checkpoint (the format's int8 variant, see
checkpoint.py), which loads straight into int8.Int8Linear layers.
"""

from pathlib import Path

import torch
from torch import nn

from gptkit.model.int8 import quantize_int8
from gptkit.options import QuantizeOptions


def quantize(options: QuantizeOptions) -> Path:
    """`gptkit quantize`: write options.ckpt as an int8 checkpoint in options.out_path, all at once.

    The weights are quantized from float32 (as `--quantize int8` does with a float32 load), so loading the result
    gives the same Int8Linear weights and scales; the float tensors keep the dtype ckpt stores them in."""
    from rich.console import Console

    from gptkit.checkpoint.folder import load_checkpoint, read_metadata, save_checkpoint
    from gptkit.checkpoint.locate import WEIGHTS_FILE, checkpoint_files, stored_float_dtype
    from gptkit.files import atomic_dir
    from gptkit.units import human_bytes

    ckpt, out = options.ckpt, options.out_path
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    float_dtype = stored_float_dtype(ckpt)
    with console.status(f"quantizing {ckpt}"):
        model = quantize_int8(load_checkpoint(ckpt))
        for module in model.modules():  # the float tensors back to the dtype they were stored in (exact)
            for name, param in module.named_parameters(recurse=False):
                setattr(module, name, nn.Parameter(param.detach().to(getattr(torch, float_dtype)), requires_grad=False))
        source = read_metadata(ckpt)
        metadata = {k: v for k, v in source.items() if k not in ("gptkit_version", "created", "torch_version")}
        metadata["quantization"] = {
            "method": "int8",
            "granularity": "per output channel",
            "source": str(Path(ckpt).resolve()),
        }
        with atomic_dir(out, first=WEIGHTS_FILE) as tmp:  # as save_checkpoint writes them
            save_checkpoint(model, tmp, metadata)
    before, after = (sum(f.stat().st_size for f in checkpoint_files(p)) for p in (ckpt, out))
    console.print(
        f"wrote {out}: {human_bytes(after)}, {after / before:.0%} of {ckpt}'s {human_bytes(before)} "
        f"(int8 weights; embeddings, layer norms and biases {float_dtype})"
    )
    return out
