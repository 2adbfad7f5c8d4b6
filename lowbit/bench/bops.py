"""Bit-operations (BOPs) per inference: MACs x weight bits x activation bits, per layer.

BOPs of a layer = MACs * b_w * b_a, the count of Baskin et al. 2021 ("UNIQ", ACM TOCS, §4) and
van Baalen et al. 2020 ("Bayesian Bits", NeurIPS, eq. 14): a b_w x b_a-bit multiply costs
b_w * b_a one-bit operations. Only multiply-accumulate layers count (convolutions and the head's
dot products); pooling, thresholds and residual adds are left out, as in both papers. A float
layer counts at 32 x 32 bits.

Per layer: the first convolution multiplies `input_bits` pixel codes by `first_weight_bits`
weights; every later convolution multiplies `act_bits` codes by `weight_bits` weights. The head
multiplies the feature codes (act_bits for conv4's flattened codes; resnet8's sum-pooled features
carry ceil(log2(H*W)) more bits) by `head_weight_bits` class rows; the cosine head also computes
the feature's sum of squares n = sum f^2 (features MACs at act x act bits, DESIGN.md "Cosine head").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lowbit.models import LowbitModel

FLOAT_BITS = 32


def conv_macs(
    in_channels: int, out_channels: int, kernel: tuple[int, int], out_hw: tuple[int, int]
) -> int:
    """Returns the multiply-accumulates of a dense (groups=1) convolution producing out_hw maps."""
    return out_channels * out_hw[0] * out_hw[1] * in_channels * kernel[0] * kernel[1]


def bops(macs: int, weight_bits: int, act_bits: int) -> int:
    """Returns MACs * b_w * b_a (Baskin et al. 2021; van Baalen et al. 2020)."""
    return macs * weight_bits * act_bits


def _bits(value: int | None) -> int:
    return FLOAT_BITS if value is None else int(value)


def _conv_shapes(model: LowbitModel) -> tuple[list[tuple[str, nn.Conv2d, tuple]], tuple]:
    """Runs one zero image; returns [(name, conv, output HxW)] and the last block's output shape."""
    shapes: dict[str, tuple] = {}
    hooks = []
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for name, conv in convs:
        hooks.append(
            conv.register_forward_hook(
                lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[-2:]))
            )
        )
    last = model.backbone.blocks[-1]
    hooks.append(
        last.register_forward_hook(lambda _m, _i, out: shapes.__setitem__("_last", out.shape))
    )
    size = model.config.image_size
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return [(name, conv, shapes[name]) for name, conv in convs], shapes["_last"]


def layer_bops(model: LowbitModel) -> list[dict]:
    """Returns one row {name, kind, macs, weight_bits, act_bits, bops} per conv and the head."""
    recipe = model.recipe
    act_bits = _bits(recipe.act_bits)
    rows = []
    convs, last_shape = _conv_shapes(model)
    for index, (name, conv, out_hw) in enumerate(convs):
        first = index == 0
        weight_bits = _bits(recipe.first_weight_bits if first else recipe.weight_bits)
        in_bits = _bits(recipe.input_bits) if first else act_bits
        macs = conv_macs(conv.in_channels, conv.out_channels, conv.kernel_size, out_hw)
        rows.append(
            {
                "name": name,
                "kind": "conv",
                "macs": macs,
                "weight_bits": weight_bits,
                "act_bits": in_bits,
                "bops": bops(macs, weight_bits, in_bits),
            }
        )
    features = model.feature_dim()
    feature_bits = act_bits
    if model.config.backbone != "conv4" and not recipe.is_float:
        feature_bits += math.ceil(math.log2(last_shape[-1] * last_shape[-2]))
    head_bits = _bits(recipe.head_weight_bits)
    macs = model.config.num_classes * features
    rows.append(
        {
            "name": "head",
            "kind": "head",
            "macs": macs,
            "weight_bits": head_bits,
            "act_bits": feature_bits,
            "bops": bops(macs, head_bits, feature_bits),
        }
    )
    if model.config.head == "cosine":
        rows.append(
            {
                "name": "head.norm",
                "kind": "head_norm",
                "macs": features,
                "weight_bits": feature_bits,
                "act_bits": feature_bits,
                "bops": bops(features, feature_bits, feature_bits),
            }
        )
    return rows


def model_bops(model: LowbitModel) -> dict:
    """Returns {"total": BOPs per inference (one image), "layers": layer_bops(model)}."""
    rows = layer_bops(model)
    return {"total": sum(row["bops"] for row in rows), "layers": rows}
