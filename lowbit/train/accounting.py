"""Model size in bits: weights at their bit width, everything float at 32 bits.

Counted per layer: conv weights at the recipe's bit width (the first conv at its own), head rows
at the head's bit width, and each BatchNorm as its eval-time (slope, offset) pair: 2 floats per
channel at 32 bits. In a quantized model export folds BN and the activation into integer
thresholds whose width depends on each layer's accumulator; counting BN as two floats keeps
every recipe on one rule and is an upper bound for narrow accumulators. Per-channel weight
scales and activation scales are powers of two that fold into those thresholds (and cancel in
the cosine head) and are not counted. The lead may move this to lowbit/models/accounting.py.
"""

from __future__ import annotations

from torch import nn

from lowbit.models.heads import CosineHead, LinearHead
from lowbit.quant.layers import is_quant_conv, weight_codes

FLOAT_BITS = 32


def layer_bits(model: nn.Module) -> list[dict]:
    """Returns one row {name, params, weight_bits, bits} per conv, BatchNorm and head."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            params = module.weight.numel()
            weight_bits = weight_codes(module)[2] if is_quant_conv(module) else FLOAT_BITS
        elif isinstance(module, nn.BatchNorm2d):
            params = 2 * module.num_features
            weight_bits = FLOAT_BITS
        elif isinstance(module, (CosineHead, LinearHead)):
            params = module.weight.numel()
            weight_bits = module.weight_bits or FLOAT_BITS
        else:
            continue
        rows.append(
            {
                "name": name,
                "params": params,
                "weight_bits": weight_bits,
                "bits": params * weight_bits,
            }
        )
    return rows


def model_bits(model: nn.Module) -> int:
    """Returns the total storage of `model` in bits under the rules of this module's docstring."""
    return sum(row["bits"] for row in layer_bits(model))
