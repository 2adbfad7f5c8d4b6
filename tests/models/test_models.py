"""Models for every recipe: they build and train, and their quantizers give the promised codes."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from lowbit.models import build_model
from lowbit.models.heads import CosineHead
from lowbit.quant import RECIPE_NAMES, get_recipe
from lowbit.quant.layers import (
    ACT_STATS_STEPS,
    is_pow2,
    is_quant_conv,
    quant_bits,
    quant_scale,
    weight_codes,
)

WIDTHS = {"conv4": 8, "resnet8": 4}
IMAGE_SIZE = 32
NUM_CLASSES = 4


def make_model(
    recipe_name: str, backbone: str, *, seed: int = 0, image_size: int = IMAGE_SIZE, **overrides
):
    torch.manual_seed(seed)
    return build_model(
        get_recipe(recipe_name, **overrides),
        backbone=backbone,
        width=WIDTHS[backbone],
        image_size=image_size,
        num_classes=NUM_CLASSES,
    )


def random_batch(generator: torch.Generator, size: int, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=generator).clamp(-2, 2)


def train_steps(model, steps: int, *, seed: int = 0, lr: float = 0.05) -> list[float]:
    """Runs `steps` SGD steps on random images and labels; returns the losses."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    size = model.config.image_size
    model.train()
    losses = []
    for _ in range(steps):
        x = random_batch(generator, size)
        y = torch.randint(0, NUM_CLASSES, (4,), generator=generator)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def forward_steps(model, steps: int, *, seed: int = 0) -> None:
    """Runs `steps` training-mode forward passes (what activation statistics count), no update."""
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(random_batch(generator, model.config.image_size, batch=2))


def quant_convs(model) -> list[tuple[str, torch.nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if is_quant_conv(module)]


def act_quants(model) -> list[tuple[str, torch.nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if quant_scale(m) is not None]


def is_first_conv(name: str) -> bool:
    return name in ("backbone.blocks.0.conv", "backbone.stem.conv")


def stats_counters(model) -> list[int]:
    """Training steps each activation scale has seen (Brevitas' runtime-stats counter)."""
    return [
        int(module.counter)
        for module in model.modules()
        if hasattr(module, "collect_stats_steps") and hasattr(module, "counter")
    ]


@functools.cache
def _trained(recipe_name: str, backbone: str):
    model = make_model(recipe_name, backbone)
    losses = train_steps(model, 1)
    assert all(math.isfinite(loss) for loss in losses)
    return model.eval()


ALL = [(r, b) for r in RECIPE_NAMES for b in WIDTHS]
QUANTIZED = [(r, b) for r, b in ALL if r != "fp32"]
BIPOLAR = [(r, b) for r, b in ALL if r.startswith("w1a")]


@pytest.fixture
def trained(request):
    """(recipe name, backbone, model after one training step, in eval mode); shared, read-only."""
    recipe_name, backbone = request.param
    return recipe_name, backbone, _trained(recipe_name, backbone)


@pytest.mark.parametrize("trained", ALL, indirect=True, ids="-".join)
def test_builds_trains_and_runs(trained) -> None:
    recipe_name, backbone, model = trained
    with torch.no_grad():
        logits = model(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    fresh = make_model(recipe_name, backbone)  # same seed: the weights before the step
    moved = [
        name
        for (name, before), after in zip(fresh.named_parameters(), model.parameters())
        if not torch.equal(before, after)
    ]
    assert "backbone.blocks.1.conv.weight" in moved or "backbone.blocks.0.conv1.weight" in moved
    convs = quant_convs(model)
    if recipe_name == "fp32":
        assert convs == [] and act_quants(model) == []
    else:
        assert convs and act_quants(model)


@pytest.mark.parametrize("trained", QUANTIZED, indirect=True, ids="-".join)
def test_weight_codes_per_bit_width(trained) -> None:
    recipe_name, _, model = trained
    recipe = get_recipe(recipe_name)
    for name, conv in quant_convs(model):
        codes, scale, bits = weight_codes(conv)
        expected_bits = recipe.first_weight_bits if is_first_conv(name) else recipe.weight_bits
        assert bits == expected_bits, name
        assert torch.equal(codes, torch.round(codes)), name
        values = set(torch.unique(codes).tolist())
        if bits == 1:
            assert values <= {-1.0, 1.0}, name
        elif bits == 2:
            assert values <= {-1.0, 0.0, 1.0}, name  # ternary (narrow)
        else:
            levels = 2 ** (bits - 1) - 1  # narrow range: first layer 8-bit is [-127, 127]
            assert codes.abs().max() <= levels, name
            # max-|w| scaling rounded up to a power of two still uses the top bit
            assert codes.abs().max() > levels // 2, name
        # the codes and scales are exactly what the layer computes with
        assert torch.equal(conv.quant_weight().value.detach(), codes * scale), name
        if recipe.pow2_scales:
            assert all(is_pow2(float(s)) for s in scale.reshape(-1)), name


@pytest.mark.parametrize("trained", BIPOLAR, indirect=True, ids="-".join)
def test_bipolar_weights_are_plus_minus_scale_per_channel(trained) -> None:
    _, _, model = trained
    checked = 0
    for name, conv in quant_convs(model):
        if is_first_conv(name):
            continue
        value = conv.quant_weight().value.detach()
        _, scale, _ = weight_codes(conv)
        for channel in range(value.shape[0]):
            s = scale[channel].reshape(())
            assert torch.equal(value[channel].abs(), s.expand_as(value[channel])), name
            assert set(torch.unique(value[channel]).tolist()) <= {float(-s), float(s)}
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("backbone", list(WIDTHS))
def test_bipolar_sign_of_zero_is_plus_one(backbone: str) -> None:
    model = make_model("w1a2", backbone).eval()
    name, conv = next((n, c) for n, c in quant_convs(model) if not is_first_conv(n))
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = 0.0
        conv.weight[1, 0, 0, 0] = -1e-30  # the smallest negatives stay negative
    codes, scale, _ = weight_codes(conv)
    assert codes[0, 0, 0, 0] == 1.0, name
    assert codes[1, 0, 0, 0] == -1.0, name
    assert conv.quant_weight().value[0, 0, 0, 0] == scale[0].reshape(())


def test_ternary_off_gives_four_levels() -> None:
    model = make_model("w2a2", "conv4", ternary=False).eval()
    seen = set()
    for name, conv in quant_convs(model):
        if not is_first_conv(name):
            seen |= set(torch.unique(weight_codes(conv)[0]).tolist())
    assert seen <= {-2.0, -1.0, 0.0, 1.0} and -2.0 in seen


def relu_codes(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Returns output / scale of every quantized ReLU, exactly as the model computes it."""
    outputs, hooks = {}, []
    for name, module in act_quants(model):
        if type(module).__name__ != "QuantReLU":
            continue
        scale = quant_scale(module)

        def hook(mod, inputs, output, name=name, scale=scale):
            outputs[name] = output.detach() / scale

        hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for handle in hooks:
        handle.remove()
    return outputs


@pytest.mark.parametrize("trained", QUANTIZED, indirect=True, ids="-".join)
def test_quant_relu_codes_take_at_most_two_to_the_a_values(trained) -> None:
    recipe_name, _, model = trained
    recipe = get_recipe(recipe_name)
    x = torch.randn(8, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1)) * 2
    codes = relu_codes(model, x.clamp(-2, 2))
    assert codes
    for name, code in codes.items():
        # power-of-two scales: output / scale is exact, so the codes are exact integers
        assert torch.equal(code, torch.round(code)), name
        assert code.min() >= 0 and code.max() <= 2**recipe.act_bits - 1, name
        assert torch.unique(code).numel() <= 2**recipe.act_bits, name
        assert quant_bits(dict(model.named_modules())[name]) == recipe.act_bits


@pytest.mark.parametrize(("recipe_name", "backbone"), [("w2a2", "conv4"), ("w1a2", "resnet8")])
def test_activation_scales_pow2_before_and_after_stats_phase(recipe_name, backbone) -> None:
    model = make_model(recipe_name, backbone, image_size=16)
    train_steps(model, 2)
    assert max(stats_counters(model)) < ACT_STATS_STEPS  # still collecting statistics
    model.eval()
    scales = [float(quant_scale(m).reshape(-1)[0]) for _, m in act_quants(model)]
    assert scales and all(is_pow2(s) for s in scales), scales
    forward_steps(model, ACT_STATS_STEPS)  # statistics count forward passes: skip the updates
    train_steps(model, 3, seed=1, lr=0.2)  # learned scales move off their initial values
    assert min(stats_counters(model)) > ACT_STATS_STEPS  # scales are learned parameters now
    model.eval()
    scales = [float(quant_scale(m).reshape(-1)[0]) for _, m in act_quants(model)]
    assert all(is_pow2(s) for s in scales), scales


def test_per_tensor_override_gives_one_weight_scale() -> None:
    model = make_model("w2a2", "resnet8", per_channel=False, pow2_scales=False).eval()
    for name, conv in quant_convs(model):
        _, scale, _ = weight_codes(conv)
        assert torch.unique(scale).numel() == 1, name
    # the same model per channel: scales differ between channels
    model = make_model("w2a2", "resnet8", pow2_scales=False).eval()
    assert all(torch.unique(weight_codes(c)[1]).numel() > 1 for _, c in quant_convs(model))


def test_float_scale_override_allows_non_pow2_scales() -> None:
    model = make_model("w4a4", "conv4", pow2_scales=False)
    train_steps(model, 2)
    model.eval()
    weight_scales = [
        float(s) for _, c in quant_convs(model) for s in weight_codes(c)[1].reshape(-1)
    ]
    act_scales = [float(quant_scale(m).reshape(-1)[0]) for _, m in act_quants(model)]
    assert not all(is_pow2(s) for s in weight_scales)
    assert not all(is_pow2(s) for s in act_scales[1:])  # [0] is the constant input scale
    # the default recipe restricts the very same model to powers of two
    model = make_model("w4a4", "conv4")
    train_steps(model, 2)
    model.eval()
    assert all(is_pow2(float(s)) for _, c in quant_convs(model) for s in weight_codes(c)[1])


def test_is_pow2_hand_cases() -> None:
    assert all(is_pow2(v) for v in (1.0, 2.0, 0.5, 2.0**-20, 1024.0))
    assert not any(is_pow2(v) for v in (0.0, -1.0, -0.5, 3.0, 0.75, 1.0 + 2.0**-23))


def cosine_tolerance(scale: float, features: int) -> float:
    # torch computes the cosine in float32: two normalizations and a length-F dot product of unit
    # vectors, each with relative error <= (F + 8) * 2^-24 (Higham's gamma_n); x4 margin, x scale.
    return scale * (features + 8) * 2.0**-24 * 4


@pytest.mark.parametrize("weight_bits", [8, 4, None])
def test_cosine_head_is_scale_invariant_and_bounded(weight_bits) -> None:
    torch.manual_seed(0)
    features, classes, scale = 64, 5, 10.0
    head = CosineHead(features, classes, weight_bits=weight_bits, scale=scale)
    with torch.no_grad():
        head.weight.normal_()
        f = torch.randn(16, features)
        logits = head(f)
        tolerance = cosine_tolerance(scale, features)
        for factor in (3.7, 1e-3, 250.0):
            assert (head(factor * f) - logits).abs().max() <= tolerance, factor
        assert logits.abs().max() <= scale * (1 + tolerance)
        # a feature equal to a class row reaches the bound
        rows = head.class_weights()
        assert torch.allclose(
            head(rows)[range(classes), range(classes)], torch.full((classes,), scale)
        )
    assert logits.abs().max() > 0.1 * scale  # not trivially small


@pytest.mark.parametrize("trained", ALL, indirect=True, ids="-".join)
def test_model_logits_bounded_by_cosine_scale(trained) -> None:
    _, _, model = trained
    x = torch.randn(8, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(x.clamp(-2, 2))
    scale = float(model.head.scale)
    assert logits.abs().max() <= scale * (1 + cosine_tolerance(scale, model.feature_dim()))
