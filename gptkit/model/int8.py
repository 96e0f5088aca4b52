"""The int8 layer of weight-only quantization (`--quantize int8`): every Linear and the output head keep their
weights as int8, one scale per output channel. A decoding step reads every weight once, so a quarter of fp32's bytes
(half of bf16's) is that much less memory traffic; activations stay in floating point.

The layer only: it knows no checkpoint, option or command. checkpoint/folder.py loads an int8 checkpoint into these
layers, and commands/quantize.py is `gptkit quantize`, which writes one.
"""

import torch
from torch import nn
from torch.nn import functional as F

from gptkit.machine.cpu import cpu_level

# Rows of input above which the weight is dequantized for a plain matmul (prefill, eval): there the product is
# compute-bound and the float matmul is faster than the int8 kernels, and dequantizing costs little per row.
DEQUANTIZE_ABOVE_ROWS = 32


def has_int8_kernel(device: torch.device) -> bool:
    """Whether Int8Linear uses torch's int8 weight-only kernel (aten._weight_int8pack_mm) on the device: on the CPU,
    where it is tested here; CUDA and MPS dequantize (which torch.compile fuses into the matmul, as gpt-fast does)."""
    return device.type == "cpu" and torch._C._dispatch_has_kernel_for_dispatch_key("aten::_weight_int8pack_mm", "CPU")


def kernel_dtype_for_level(level: str) -> torch.dtype:
    """The activations' dtype for torch's int8 CPU kernel at a CPU level (cpu.cpu_level): its bf16 path is
    vectorized at AVX2 and above, where it runs several times faster than its fp32 path; at the DEFAULT level both
    are scalar loops and fp32 saves the conversions (bench/choices_bench.py measures both on each level)."""
    return torch.float32 if level == "DEFAULT" else torch.bfloat16


class Int8Linear(nn.Module):
    """A Linear whose weight is int8, with one scale per output channel: weight ~= int8_weight * scales[:, None].

    Few rows (a decoding step) go through torch's int8 weight-only kernel, which reads the int8 weight directly, with
    activations in kernel_dtype_for_level's dtype. Elsewhere, or for many rows, the weight is dequantized and
    multiplied as usual (under torch.compile the two fuse).
    """

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None):
        """weight: int8, (out, in); scales: (out,), float."""
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.kernel_dtype = kernel_dtype_for_level(cpu_level()) if has_int8_kernel(weight.device) else None
        if self.kernel_dtype is not None:  # converted once here: inductor cannot lower a conversion feeding the kernel
            self.register_buffer("kernel_scales", scales.to(self.kernel_dtype), persistent=False)

    @classmethod
    def quantize(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "Int8Linear":
        """An Int8Linear of a float weight (out, in): scales max |w| / 127 per output channel, weight rounded."""
        w = weight.detach().float()
        scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        return cls((w / scales[:, None]).round().clamp(-127, 127).to(torch.int8), scales.to(weight.dtype), bias)

    @property
    def in_features(self) -> int:
        return self.weight.size(1)

    @property
    def out_features(self) -> int:
        return self.weight.size(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[:-1].numel()
        if self.kernel_dtype is not None and rows <= DEQUANTIZE_ABOVE_ROWS:
            flat = x.reshape(rows, x.size(-1)).to(self.kernel_dtype)
            y = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.kernel_scales)
            y = y.to(x.dtype).view(*x.shape[:-1], -1)
        else:
            y = F.linear(x, self.weight.to(x.dtype)) * self.scales.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def dequantized(self) -> torch.Tensor:
        return self.weight.to(self.scales.dtype) * self.scales[:, None]


def replace_linears(model: nn.Module, make) -> nn.Module:
    """Replace every nn.Linear of model, in place, by make(its name, it)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, make(name, module))
    return model


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of model (the output head included), in place, by an Int8Linear; for inference.

    GPT-2 ties the output head to the token embedding: the embedding stays in floating point (a step reads one row
    of it), the head becomes int8 (a step reads all of it)."""
    return replace_linears(model, lambda _, linear: Int8Linear.quantize(linear.weight, linear.bias))
