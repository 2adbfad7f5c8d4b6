"""Parameter bits: every parameter at its bit width, everything float at 32 bits.

One of lowbit's two model sizes, and the one a model has before it is exported (metrics.json
`parameter_bits`). The other, `deployed_bits` (lowbit.export.api, model.json), counts what an
accelerator stores after export: weight codes, and integer thresholds in place of BatchNorm.

Counted per layer: conv weights at the recipe's bit width (the first conv at its own), head rows
at the head's bit width, and each BatchNorm as its eval-time (slope, offset) pair: 2 floats per
channel at 32 bits. Export folds BN and the activation into thresholds whose width depends on
each layer's accumulator, so the deployed count differs; counting BN as two floats keeps every
recipe, fp32 included, on one rule. Per-channel weight scales and activation scales are powers
of two that fold into those thresholds (and cancel in the cosine head) and are not counted.
"""

from __future__ import annotations

from torch import nn

from lowbit.models.heads import CosineHead, LinearHead
from lowbit.quant.layers import is_quant_conv, weight_codes

FLOAT_BITS = 32
PARAMETER_BITS_RULE = "each parameter at its bit width, BatchNorm as two 32-bit floats"


def parameter_bits_by_layer(model: nn.Module) -> list[dict]:
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


def parameter_bits(model: nn.Module) -> int:
    """Returns the model's parameter bits under the rule of this module's docstring."""
    return sum(row["bits"] for row in parameter_bits_by_layer(model))
