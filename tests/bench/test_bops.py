"""BOPs and model-bit accounting on toy models whose numbers are computed by hand below."""

from __future__ import annotations

import torch

from lowbit.bench.bops import bops, conv_macs, model_bops
from lowbit.bench.collect import deployed_size
from lowbit.export.api import model_description
from lowbit.export.lower import lower_model
from lowbit.models import build_model
from lowbit.quant import get_recipe
from lowbit.quant.layers import ACT_STATS_STEPS

# conv4 of width 4 at 16x16, 3 classes: convs 3->4 at 16x16, then 4->4 at 8x8, 4x4, 2x2
# (each block max-pools by 2), flattened features 4 x 1 x 1 = 4.
TOY = dict(backbone="conv4", width=4, image_size=16, num_classes=3)
CONV_MACS = [4 * 16 * 16 * 3 * 9, 4 * 8 * 8 * 4 * 9, 4 * 4 * 4 * 4 * 9, 4 * 2 * 2 * 4 * 9]


def test_one_conv_by_hand():
    # one conv 3->4, 3x3, 'same' on 8x8: 4 output maps of 8x8, each output sums 3*3*3 products
    macs = conv_macs(3, 4, (3, 3), (8, 8))
    assert macs == 6912
    assert bops(macs, weight_bits=8, act_bits=8) == 6912 * 64
    assert bops(macs, weight_bits=1, act_bits=2) == 13824


def test_model_bops_w1a2_by_hand():
    model = build_model(get_recipe("w1a2"), **TOY)
    rows = {row["name"]: row for row in model_bops(model)["layers"]}
    assert [rows[f"backbone.blocks.{i}.conv"]["macs"] for i in range(4)] == CONV_MACS
    assert CONV_MACS == [27648, 9216, 2304, 576]
    # first conv: 8-bit input codes x 8-bit weights; body: 2-bit codes x 1-bit weights
    assert rows["backbone.blocks.0.conv"]["bops"] == 27648 * 8 * 8
    assert [rows[f"backbone.blocks.{i}.conv"]["bops"] for i in (1, 2, 3)] == [
        9216 * 2,
        2304 * 2,
        576 * 2,
    ]
    # head: 3 classes x 4 features, 8-bit rows x 2-bit codes; cosine norm: 4 squares of 2 bits
    assert rows["head"]["bops"] == 12 * 8 * 2
    assert rows["head.norm"]["bops"] == 4 * 2 * 2
    assert model_bops(model)["total"] == 27648 * 64 + (9216 + 2304 + 576) * 2 + 192 + 16


def test_model_bops_fp32_counts_32_by_32():
    model = build_model(get_recipe("fp32"), **{**TOY, "head": "linear"})
    total = model_bops(model)["total"]
    assert total == (sum(CONV_MACS) + 3 * 4) * 32 * 32  # linear head: no norm term


def test_deployed_size_fp32_by_hand():
    model = build_model(get_recipe("fp32"), **TOY)
    bits = deployed_size(model, None)
    weights = (3 * 4 * 9 + 3 * 4 * 4 * 9 + 3 * 4) * 32  # convs + head rows
    batchnorm = 4 * (2 * 4) * 32  # 4 BN layers x (slope, offset) x 4 channels
    assert bits == {
        "total": weights + batchnorm,
        "weights": weights,
        "thresholds": batchnorm,
        "source": "float",
    }


def test_deployed_size_w2a2_by_hand():
    torch.manual_seed(0)
    model = build_model(get_recipe("w2a2"), **TOY)
    model.train()
    with torch.no_grad():  # leave the activation-statistics phase, as training would
        for _ in range(ACT_STATS_STEPS + 2):
            model(torch.randn(8, 3, 16, 16).clamp(-2, 2))
    model.eval()
    _, layers, head = lower_model(model)
    description = model_description(
        model, layers, head, class_names=["a", "b", "c"], normalization={}, ood=None
    )
    bits = deployed_size(model, description)
    # weights: first conv 108 x 8 bits, 3 body convs 144 x 2 bits, head 3 x 4 x 8 bits
    assert bits["weights"] == 108 * 8 + 3 * 144 * 2 + 12 * 8
    # thresholds: 4 channels x (2^2 - 1) per layer, each at its layer's accumulator width
    assert [layer["thresholds"] for layer in layers] == [12, 12, 12, 12]
    widths = [layer["accumulator_bits"] for layer in layers]
    assert bits["thresholds"] == sum(12 * width for width in widths)
    assert bits["total"] == bits["weights"] + bits["thresholds"]
