"""Bounds on the float model's own summation error, for `verify`'s explained-mismatch rule.

With power-of-two scales every product and partial sum of the float model's convolutions is
exact and these bounds are 0. With float scales the float model rounds, and a code may differ
from the integer graph's where the exact value lies within that rounding of a boundary.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lowbit.models.layers import bn_affine

FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def float_error_per_unit(
    fan_in: int, scale_in: torch.Tensor, modules: list[nn.Module], out_scale: float
) -> list[float]:
    """Returns per channel the summation bound in output steps per unit of sum|x_code w_code|.

    With float (non-power-of-two) scales the float model's conv products and sums round: Higham's
    bound for a length-n dot product in any summation order is |error| <= gamma_n * sum|x_i w_i|,
    gamma_n = n*u / (1 - n*u), u = 2^-24; sum|x_i w_i| = sum|x_code w_code| * scale_in_c, and BN
    multiplies the error by |slope_c|. Doubled as a margin for the CPU kernel's blocked
    accumulation (still recursive sums of the same terms). `verify` multiplies it by an element's
    own sum|x_code w_code| (from the integer runtime's codes); times the channel's largest such
    sum it is the layer's worst case (`float_error_steps`).
    """
    n_u = (fan_in + 1) * FLOAT32_UNIT_ROUNDOFF
    unit = 2.0 * n_u / (1.0 - n_u) * scale_in.double().numpy() / out_scale
    for module in modules:
        if isinstance(module, nn.BatchNorm2d):
            unit = unit * np.abs(bn_affine(module)[0].double().numpy())
    return [float(value) for value in unit]
