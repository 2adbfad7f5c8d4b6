"""The small pure pieces of the loop: schedule, augmentation, config, accounting."""

import math

import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.models import ModelConfig, build_model
from lowbit.models.accounting import parameter_bits, parameter_bits_by_layer
from lowbit.quant import get_recipe
from lowbit.train import TrainConfig
from lowbit.train.loop import augment, cosine_lr, epoch_generator


def test_cosine_lr_with_warmup():
    assert cosine_lr(0, 100, 0.1) == 0.1
    assert cosine_lr(50, 100, 0.1) == pytest.approx(0.05)
    assert cosine_lr(0, 100, 0.1, warmup_steps=10) == pytest.approx(0.01)
    assert cosine_lr(9, 100, 0.1, warmup_steps=10) == pytest.approx(
        0.1 * 0.5 * (1 + math.cos(math.pi * 0.09))
    )
    assert all(cosine_lr(step, 100, 0.1, 10) > 0 for step in range(100))


def test_augment_flips_and_shifts_deterministically():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    first = augment(x, epoch_generator(0, 3), max_shift=1)
    second = augment(x, epoch_generator(0, 3), max_shift=1)
    assert torch.equal(first, second) and first.shape == x.shape
    # every output pixel comes from the input: flips and replicate-padded shifts only
    assert set(first.flatten().tolist()) <= set(x.flatten().tolist())
    assert torch.equal(
        augment(x, epoch_generator(0, 3), max_shift=0).sort(3).values, x.sort(3).values
    )


def test_epoch_generators_differ_by_epoch_and_seed():
    draws = {
        tuple(torch.randperm(10, generator=epoch_generator(s, e)).tolist())
        for s in (0, 1)
        for e in (0, 1)
    }
    assert len(draws) == 4


def test_train_config_validation_and_round_trip():
    config = TrainConfig(unknown=["dent"], recipe_overrides={"input_bits": 6})
    assert config.unknown == ("dent",)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.resolved().lr == 1e-3  # w1a2: "auto" picks AdamW
    assert TrainConfig(optimizer="sgd").resolved().lr == 0.05
    with pytest.raises(ConfigError, match="loss='focal'"):
        TrainConfig(loss="focal")
    with pytest.raises(ConfigError, match="epochs=0"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="unknown recipe"):
        TrainConfig(recipe="w3")
    with pytest.raises(ConfigError, match="unknown train config field"):
        TrainConfig.from_dict({"epoch": 3})


def test_parameter_bits_by_hand():
    model = build_model(get_recipe("w1a2"), ModelConfig(width=8, image_size=16, num_classes=3))
    rows = {row["name"]: row for row in parameter_bits_by_layer(model)}
    assert rows["backbone.blocks.0.conv"]["weight_bits"] == 8
    assert rows["backbone.blocks.1.conv"]["weight_bits"] == 1
    # first conv 8*3*9 at 8 bits, three convs 8*8*9 at 1 bit, four BNs 2*8 floats, head 3*8 at 8
    assert parameter_bits(model) == 216 * 8 + 3 * 576 + 4 * 16 * 32 + 24 * 8
    fp32 = build_model(get_recipe("fp32"), ModelConfig(width=8, image_size=16, num_classes=3))
    assert parameter_bits(fp32) == (216 + 3 * 576 + 4 * 16 + 24) * 32


def test_auto_optimizer_picks_adamw_for_binary_weights():
    from lowbit.train import TrainConfig

    assert TrainConfig(recipe="w1a2").resolved().optimizer == "adamw"
    assert TrainConfig(recipe="w1a2").resolved().lr == 1e-3
    assert TrainConfig(recipe="w1a1").resolved().optimizer == "adamw"
    assert TrainConfig(recipe="w2a2").resolved().optimizer == "sgd"
    assert TrainConfig(recipe="fp32").resolved().optimizer == "sgd"
    assert TrainConfig(recipe="w1a2", optimizer="sgd").resolved().lr == 0.05
