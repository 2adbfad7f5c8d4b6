"""Tiny calibrated models and graph runners shared by the export and verify tests.

A "calibrated" model is untrained: it gets random BatchNorm parameters (a zero and a negative
slope in every layer), sees enough training-mode batches for its activation quantizers to leave
the statistics phase, then gets perturbed BN statistics and channels planted on rounding ties,
so every threshold case of the lowering (ties, negated rows, constant channels) is exercised.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import onnx
import torch
from torch import nn

from lowbit.models import LowbitModel, build_model
from lowbit.models.backbones import ConvBlock, ResidualBlock
from lowbit.quant import get_recipe
from lowbit.quant.layers import ACT_STATS_STEPS, quant_bits, quant_scale
from lowbit.verify.capture import execute_qonnx
from lowbit.verify.inputs import random_inputs, tie_inputs

IMAGE_SIZE = 32
NUM_CLASSES = 4
WIDTHS = {"conv4": 8, "resnet8": 4}
CALIBRATION_STEPS = ACT_STATS_STEPS + 5  # past the statistics phase: scales become parameters


def randomize_batchnorm_affine(model: nn.Module, seed: int) -> None:
    """Gives every BN random gamma (channel 0: exactly 0, channel 1: negative) and beta."""
    rng = np.random.default_rng(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            gamma = rng.uniform(-1.5, 1.5, channels)
            gamma[0] = 0.0  # zero slope: a constant channel
            gamma[1] = -abs(gamma[1]) - 0.1  # negative slope: weight row negated at export
            with torch.no_grad():
                module.weight.copy_(torch.tensor(gamma))
                module.bias.copy_(torch.tensor(rng.uniform(-1.0, 1.0, channels)))


def perturb_batchnorm_stats(model: nn.Module, seed: int) -> None:
    """Moves each running mean by up to half a standard deviation, scales var by 0.5 .. 1.5.

    Relative to the statistics the calibration passes collected, so the layers stay in their
    activation quantizers' ranges (absolute random statistics can zero a whole layer).
    """
    rng = np.random.default_rng(seed + 1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            std = module.running_var.sqrt()
            shift = torch.tensor(rng.uniform(-0.5, 0.5, channels), dtype=torch.float32)
            factor = torch.tensor(rng.uniform(0.5, 1.5, channels), dtype=torch.float32)
            module.running_mean.add_(shift * std)
            module.running_var.mul_(factor)


def bn_quant_pairs(model: nn.Module) -> list[tuple[nn.BatchNorm2d, nn.Module]]:
    """Returns each BN with the quantizer that rounds its output."""
    pairs = []
    for module in model.modules():
        if isinstance(module, ConvBlock):
            pairs.append((module.bn, module.act))
        elif isinstance(module, ResidualBlock):
            pairs += [(module.bn1, module.act1), (module.bn2, module.res_quant)]
            if module.downsample:
                pairs.append((module.bn_sc, module.res_quant))
    return pairs


def plant_ties(model: nn.Module, seed: int) -> None:
    """Makes every even channel >= 2 of every BN land exactly on rounding ties.

    With eps = 0 and var = 1 the slope is gamma = ±2^j and the offset beta - mean·gamma is
    (k + 1/2)·s_out, all dyadic: y / s_out = acc·S·gamma / s_out + k + 1/2 is exact, a tie at
    every accumulator that makes the first term an integer. Random BN never hits a tie exactly.
    """
    rng = np.random.default_rng(seed + 2)
    for bn, quant in bn_quant_pairs(model):
        s_out = float(quant_scale(quant).reshape(-1)[0])
        levels = 2 ** quant_bits(quant)
        bn.eps = 0.0
        with torch.no_grad():
            for channel in range(2, bn.num_features, 2):
                gamma = float(rng.choice([-1.0, 1.0])) * 2.0 ** int(rng.integers(-1, 2))
                mean = int(rng.integers(-8, 9)) / 16
                k = int(rng.integers(-levels // 2, levels // 2))
                bn.weight[channel] = gamma
                bn.running_var[channel] = 1.0
                bn.running_mean[channel] = mean
                bn.bias[channel] = (k + 0.5) * s_out + mean * gamma


def make_calibrated(
    recipe: str,
    backbone: str,
    *,
    seed: int = 0,
    steps: int = CALIBRATION_STEPS,
    head: str = "cosine",
    **overrides: object,
) -> LowbitModel:
    """Returns a fresh eval-mode model with random BN whose activation scales saw random data."""
    torch.manual_seed(seed)
    model = build_model(
        get_recipe(recipe, **overrides),
        backbone=backbone,
        head=head,
        width=WIDTHS[backbone],
        image_size=IMAGE_SIZE,
        num_classes=NUM_CLASSES,
    )
    randomize_batchnorm_affine(model, seed)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).clamp(-2, 2))
    perturb_batchnorm_stats(model, seed)
    plant_ties(model, seed)
    return model.eval()


@functools.cache
def _cached(recipe: str, backbone: str, pow2_scales: bool) -> LowbitModel:
    return make_calibrated(recipe, backbone, pow2_scales=pow2_scales)


def calibrated(recipe: str, backbone: str, *, pow2_scales: bool = True) -> LowbitModel:
    """Returns a shared calibrated model: a copy, so a test may change it freely."""
    return copy.deepcopy(_cached(recipe, backbone, pow2_scales))


def sample_inputs(
    model: LowbitModel, *, random: int = 6, ties: int = 4, seed: int = 0
) -> np.ndarray:
    """Returns seeded random images plus images whose every pixel is an input-quantizer tie."""
    scale = float(quant_scale(model.backbone.input_quant).reshape(-1)[0])
    parts = [
        random_inputs(random, IMAGE_SIZE, max_abs=model.config.input_max_abs, seed=seed),
        tie_inputs(
            ties, IMAGE_SIZE, input_scale=scale, input_bits=model.recipe.input_bits, seed=seed + 1
        ),
    ]
    return np.concatenate(parts).astype(np.float32)


def run_int_graph(graph: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Runs an integer graph with qonnx's `execute_onnx`; returns every tensor of the run."""
    return execute_qonnx(graph, x)
