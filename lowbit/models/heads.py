"""Classifier heads: cosine (Baseline++, arXiv 1904.04232) and linear."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.quant.layers import fake_quant_rows


class CosineHead(nn.Module):
    """logit_c = scale * cos(f, w_c); rows are L2-normalized, then quantized to `weight_bits`.

    The integer graph computes d_c = sum(w_code_c * f_code) and n = sum(f_code^2) exactly; every
    scale cancels in the cosine, leaving the float tail scale * d_c / (sqrt(n) * |w_code_c|).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        weight_bits: int | None,
        scale: float = 10.0,
        learn_scale: bool = False,
        pow2: bool = True,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, in_features) * 0.01)
        self.weight_bits = weight_bits
        self.pow2 = pow2
        scale_tensor = torch.tensor(float(scale))
        if learn_scale:
            self.scale = nn.Parameter(scale_tensor)
        else:
            self.register_buffer("scale", scale_tensor)

    def class_weights(self) -> torch.Tensor:
        """Returns the rows the head really uses: normalized, then fake-quantized."""
        rows = F.normalize(self.weight, dim=1)
        if self.weight_bits is None:
            return rows
        return fake_quant_rows(rows, self.weight_bits, pow2=self.pow2)[0]

    def row_codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (integer row codes [K, F], per-row scale [K, 1]) of the quantized rows."""
        return _row_codes(F.normalize(self.weight, dim=1), self.weight_bits, self.pow2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        rows = F.normalize(self.class_weights(), dim=1)
        return self.scale * F.normalize(features, dim=1) @ rows.t()


class LinearHead(nn.Module):
    """logit = W f (no bias: the integer part is exact, the tail a per-class scale)."""

    def __init__(
        self, in_features: int, num_classes: int, *, weight_bits: int | None, pow2: bool = True
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, in_features) * (in_features**-0.5))
        self.weight_bits = weight_bits
        self.pow2 = pow2

    def class_weights(self) -> torch.Tensor:
        if self.weight_bits is None:
            return self.weight
        return fake_quant_rows(self.weight, self.weight_bits, pow2=self.pow2)[0]

    def row_codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (integer row codes [K, F], per-row scale [K, 1]) of the quantized rows."""
        return _row_codes(self.weight, self.weight_bits, self.pow2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.class_weights().t()


HEADS = ("cosine", "linear")


def _row_codes(
    rows: torch.Tensor, bits: int | None, pow2: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if bits is None:
        raise ValueError("a float head has no integer codes")
    with torch.no_grad():
        quantized, scale = fake_quant_rows(rows.detach(), bits, pow2=pow2)
        return torch.round(quantized / scale), scale
