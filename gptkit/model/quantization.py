"""The weight-only quantizations a model can be loaded with (--quantize), by the names options/shared.py lists."""

from torch import nn

from gptkit.model.int4 import quantize_int4
from gptkit.model.int8 import quantize_int8

QUANTIZERS = {"int8": quantize_int8, "int4": quantize_int4}


def quantize_weights(model: nn.Module, method: str | None) -> nn.Module:
    """model with its Linears quantized (in place) by method, or as it is for None."""
    return model if method is None else QUANTIZERS[method](model)
