"""A linear layer laid out for fp32 decoding on the CPU."""

import torch
from torch import nn
from torch.nn import functional as F


class BlockedLinear(nn.Module):
    """nn.Linear for decoding on the CPU in fp32: the output split into one block per thread, multiplied as one
    batched product (baddbmm), so that a matrix-vector product (a decoding step) reads its weight on every core.

    MKL runs a one-row product on a single core, at a fraction of the machine's read bandwidth; one block per
    thread reads the weight on every core (bench/sample_bench.py and bench/choices_bench.py measure both layouts).
    Layers wider than they are deep keep each block input-major, (in, out / blocks), which reads fastest there;
    the others keep nn.Linear's layout, as views of its weight. The output is padded to a multiple of the blocks
    (GPT-2's 50257-wide head) and a missing bias is a zero one: compiled, a one-row bmm becomes a generated loop
    several times slower than MKL's, which inductor leaves baddbmm to.
    """

    def __init__(self, linear: nn.Linear, blocks: int):
        super().__init__()
        weight = linear.weight.detach()
        self.out_features, in_features = weight.shape
        width = -(-self.out_features // blocks)  # outputs per block, the last one padded with zeros
        bias = torch.zeros_like(weight[:, 0]) if linear.bias is None else linear.bias.detach()
        self.bias = F.pad(bias, (0, blocks * width - self.out_features)).view(blocks, 1, width)
        if blocks * width > in_features:  # input-major blocks, (blocks, in, width), filled without a full copy
            self.weight = weight.new_zeros(blocks, in_features, width)
            for block, rows in zip(self.weight, weight.split(width)):
                block[:, : rows.size(0)] = rows.t()
        else:  # views of nn.Linear's (out, in) weight
            weight = (
                F.pad(weight, (0, 0, 0, blocks * width - self.out_features)) if self.out_features % blocks else weight
            )
            self.weight = weight.view(blocks, width, in_features).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(1, -1, x.size(-1)).expand(self.weight.size(0), -1, -1)
        y = torch.baddbmm(self.bias, rows, self.weight)  # (blocks, rows, out / blocks)
        return y.transpose(0, 1).reshape(*x.shape[:-1], -1)[..., : self.out_features]
