"""LoRA: low-rank adapters on a frozen model's Linear layers (their files: checkpoint/adapters.py, in PEFT's format).

A LoRA layer computes base(x) + scaling * B(A(dropout(x))), with A (rank, in) drawn as PEFT draws it and B (out, rank)
zero, so that training starts from the base model exactly; scaling = alpha / rank. Only A and B train.
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from gptkit.model.config import LoraSettings


class LoRALinear(nn.Linear):
    """An nn.Linear (its weight and bias frozen) with a low-rank adapter beside it."""

    def __init__(self, base: nn.Linear, settings: LoraSettings):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(settings.rank, self.in_features, device=self.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, settings.rank, device=self.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's (and nn.Linear's) draw
        self.scaling = settings.alpha / settings.rank
        self.lora_dropout = nn.Dropout(settings.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling
        return F.linear(x, self.weight, self.bias) + update

    def merged(self) -> nn.Linear:
        """A plain nn.Linear with the adapter added into its weight."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling
        linear.weight = nn.Parameter((self.weight.float() + delta).to(self.weight.dtype).detach())
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach())
        return linear


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def add_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Freeze model and put adapters on the Linear layers settings.targets names (in every block)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.transformer.h:
        for module in settings.modules:
            parent_name, _, child = module.rpartition(".")
            parent = block.get_submodule(parent_name)
            setattr(parent, child, LoRALinear(getattr(parent, child), settings))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRA layer by a plain Linear holding base + adapter (the model then trains as a whole)."""
    for name, layer in lora_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model
