"""Every quantized recipe, trained a few steps, has power-of-two activation scales in eval mode."""

import pytest

from lowbit.quant import RECIPE_NAMES
from lowbit.quant.layers import ACT_STATS_STEPS, is_pow2, quant_scale
from lowbit.train import load_run, train

from .conftest import tiny_config

QUANTIZED = [name for name in RECIPE_NAMES if name != "fp32"]


def _scales(model) -> list[float]:
    scales = [quant_scale(module) for module in model.modules()]
    return [float(value) for scale in scales if scale is not None for value in scale.flatten()]


# 36 training images: batch 8 -> 4 steps per epoch, batch 1 -> 36 steps
@pytest.mark.parametrize(("batch_size", "steps"), [(8, 4), (1, 36)])
@pytest.mark.parametrize("recipe", QUANTIZED)
def test_eval_scales_are_powers_of_two(tmp_path, splits, recipe, batch_size, steps):
    assert (steps < ACT_STATS_STEPS) == (batch_size == 8)
    config = tiny_config(recipe=recipe, epochs=1, batch_size=batch_size)
    train(config, tmp_path, splits=splits, progress=False)
    model, _ = load_run(tmp_path)
    scales = _scales(model)
    assert len(scales) == 5  # input + four ReLUs
    assert all(is_pow2(scale) for scale in scales), scales


@pytest.mark.parametrize("batch_size", [8, 1])
def test_resnet8_residual_scales_are_powers_of_two(tmp_path, splits, batch_size):
    config = tiny_config(
        recipe="w2a2", backbone="resnet8", width=4, epochs=1, batch_size=batch_size
    )
    train(config, tmp_path, splits=splits, progress=False)
    model, _ = load_run(tmp_path)
    scales = _scales(model)
    assert len(scales) > 5
    assert all(is_pow2(scale) for scale in scales), scales
