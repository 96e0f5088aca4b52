"""The int4 layer of weight-only quantization (`--quantize int4`, at load, on the CPU): every Linear and the output head
keep their weights as 4-bit integers in groups of GROUP_SIZE along the input, each group with a bf16 scale and
offset (llama.cpp's q4_1 in spirit). A decoding step reads an eighth of fp32's bytes; activations stay in floating
point, multiplied by torch's int4 CPU kernel (aten._weight_int4pack_mm_for_cpu, as gpt-fast and torchao use it).
"""

import torch
from torch import nn

from gptkit.errors import GptkitError
from gptkit.model.int8 import replace_linears

GROUP_SIZE = 32  # inputs sharing a scale and an offset: llama.cpp's 4-bit block
ROW_MULTIPLE = 16  # the kernel's packed layout holds outputs in blocks of 16: others are padded with zero rows


def has_int4_kernel(device: torch.device) -> bool:
    return device.type == "cpu" and torch._C._dispatch_has_kernel_for_dispatch_key(
        "aten::_weight_int4pack_mm_for_cpu", "CPU"
    )


class Int4Linear(nn.Module):
    """A Linear whose weight is int4 in groups of GROUP_SIZE inputs: weight ~= (q - 8) * scale + offset, q in 0..15,
    packed two to a byte in the kernel's layout; products in bf16 (the kernel's dtype), returned in x's dtype."""

    def __init__(self, packed: torch.Tensor, scales_and_offsets: torch.Tensor, out_features: int, bias=None):
        """packed: the kernel's uint8 layout of (out rounded up to ROW_MULTIPLE, in) 4-bit values;
        scales_and_offsets: bf16 (in / GROUP_SIZE, out rounded up, 2)."""
        super().__init__()
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_offsets", scales_and_offsets)
        self.out_features = out_features
        self.in_features = scales_and_offsets.size(0) * GROUP_SIZE
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def quantize(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "Int4Linear":
        """An Int4Linear of a float weight (out, in): each group's 16 levels span its minimum to its maximum."""
        out_features, in_features = weight.shape
        padded = -(-out_features // ROW_MULTIPLE) * ROW_MULTIPLE
        w = torch.zeros(padded, in_features, device=weight.device)
        w[:out_features] = weight.detach().float()
        groups = w.view(padded, in_features // GROUP_SIZE, GROUP_SIZE)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)
        scales = ((high - low) / 15).clamp(min=1e-12)
        q = ((groups - low[..., None]) / scales[..., None]).round().clamp(0, 15).to(torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.view(padded, in_features), 1)
        offsets = low + 8 * scales  # the value of q = 8, the kernel's zero point
        scales_and_offsets = torch.stack([scales, offsets], dim=-1).transpose(0, 1).contiguous().bfloat16()
        return cls(packed, scales_and_offsets, out_features, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.size(-1)).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP_SIZE, self.scales_and_offsets)
        y = y[:, : self.out_features].to(x.dtype).view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)


def quantize_int4(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of model (the output head included, the token embedding staying float), in place, by
    an Int4Linear; for inference on the CPU."""
    weight = next(model.parameters())
    if not has_int4_kernel(weight.device):
        raise GptkitError(
            f"--quantize int4 runs on the CPU (torch's int4 CPU kernel), not on {weight.device.type}: "
            "use --device cpu, or --quantize int8"
        )
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.in_features % GROUP_SIZE:
            raise GptkitError(
                f"--quantize int4 needs layers {GROUP_SIZE} inputs wide or a multiple of it; {name} has "
                f"{module.in_features}: use --quantize int8"
            )
    return replace_linears(model, lambda _, linear: Int4Linear.quantize(linear.weight, linear.bias))
