"""Float building blocks shared by every recipe: BatchNorm with a fixed eval-mode formula."""

from __future__ import annotations

import torch
from torch import nn


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns eval-mode (slope, offset) per channel: y = x * slope + offset, both float32.

    Export derives integer thresholds from exactly these two tensors and exactly the two float32
    operations `AffineBatchNorm2d` applies, so thresholds reproduce the float model bit for bit.
    """
    slope = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    offset = bn.bias.detach() - bn.running_mean * slope
    return slope.float(), offset.float()


class AffineBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that in eval mode computes `x * slope + offset`: two rounded float32 ops.

    torch's fused eval kernel may use FMA or another operation order depending on the CPU path
    taken; two separate elementwise ops are correctly rounded wherever they run, so the integer
    thresholds derived at export match the float model exactly (DESIGN.md, exactness contract).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        slope, offset = bn_affine(self)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * slope.view(shape) + offset.view(shape)
