"""Layer factories: the one place that turns recipe bit widths into Brevitas quantizers.

Every other module speaks in recipes and bit widths; only this file names Brevitas classes.
A `None` bit width gives the plain float layer, so fp32 and quantized models share one code path.
"""

from __future__ import annotations

import math

import torch
from brevitas.core.function_wrapper.ops_ste import CeilSte, RoundSte
from brevitas.core.quant import BinaryQuant
from brevitas.inject.enum import RestrictValueType, ScalingImplType, ScalingPerOutputType, StatsOp
from brevitas.nn import QuantConv2d, QuantIdentity, QuantReLU
from brevitas.quant.base import IntQuant, NarrowIntQuant, UintQuant
from brevitas.quant.solver import ActQuantSolver, WeightQuantSolver
from torch import nn

from lowbit.core.integers import int_range
from lowbit.quant.recipes import Recipe

# Runtime statistics for activation scales are collected over this many training steps, then
# the scale becomes a learned parameter. Brevitas' default (300) is longer than a short QAT run;
# in eval mode the scale is restricted (power of two) from the first step either way.
ACT_STATS_STEPS = 30


def _scale_rules(pow2: bool) -> dict:
    if pow2:
        return {
            "restrict_scaling_type": RestrictValueType.POWER_OF_TWO,
            # ceil: the scale never shrinks below the measured range, so nothing extra clips
            "restrict_value_float_to_int_impl": CeilSte,
        }
    return {"restrict_scaling_type": RestrictValueType.FP}


def weight_quant(bits: int, *, per_channel: bool, pow2: bool, ternary: bool = True) -> type:
    """Returns a Brevitas weight quantizer: bipolar at 1 bit, narrow/ternary at 2, int above."""
    granularity = ScalingPerOutputType.CHANNEL if per_channel else ScalingPerOutputType.TENSOR
    # At 1-2 bits the scale follows mean |w| (XNOR-Net / TWN); above, max |w| (no clipping).
    stats_op = StatsOp.AVE if bits <= 2 else StatsOp.MAX
    fields = {
        "scaling_impl_type": ScalingImplType.STATS,
        "scaling_stats_op": stats_op,
        "scaling_per_output_type": granularity,
        "scaling_min_val": 1e-10,
        "bit_width": bits,
        **_scale_rules(pow2),
    }
    if bits == 1:
        fields.update(tensor_quant=BinaryQuant, signed=True, narrow_range=False)
        if pow2:
            # mean |w| is the optimal bipolar scale: round it to the nearest power of two
            fields["restrict_value_float_to_int_impl"] = RoundSte
        return type("BipolarWeight", (WeightQuantSolver,), fields)
    base = NarrowIntQuant if (bits > 2 or ternary) else IntQuant
    return type(f"Int{bits}Weight", (base, WeightQuantSolver), fields)


def act_quant(bits: int, *, pow2: bool, signed: bool = False) -> type:
    """Returns a Brevitas activation quantizer: unsigned after ReLU, 2^bits levels."""
    fields = {
        "scaling_impl_type": ScalingImplType.PARAMETER_FROM_STATS,
        "scaling_stats_op": StatsOp.PERCENTILE,
        "high_percentile_q": 99.9,
        "collect_stats_steps": ACT_STATS_STEPS,
        "scaling_per_output_type": ScalingPerOutputType.TENSOR,
        "scaling_min_val": 1e-10,
        "bit_width": bits,
        **_scale_rules(pow2),
    }
    if signed:
        fields.update(scaling_stats_op=StatsOp.PERCENTILE_INTERVAL, low_percentile_q=0.1)
        fields["high_percentile_q"] = 99.9
        # a signed residual quantizer: symmetric, full range
        return type(
            f"Int{bits}Act", (IntQuant, ActQuantSolver), {**fields, "scaling_stats_op": StatsOp.MAX}
        )
    return type(f"Uint{bits}Act", (UintQuant, ActQuantSolver), fields)


def input_quant(bits: int, max_abs: float, *, pow2: bool) -> type:
    """Returns a constant-scale signed input quantizer covering [-max_abs, max_abs]."""
    fields = {
        "scaling_impl_type": ScalingImplType.CONST,
        "scaling_const": float(max_abs),
        "max_val": float(max_abs),
        "min_val": -float(max_abs),
        "scaling_per_output_type": ScalingPerOutputType.TENSOR,
        "bit_width": bits,
        **_scale_rules(pow2),
    }
    return type(f"Int{bits}Input", (IntQuant, ActQuantSolver), fields)


def make_conv(
    recipe: Recipe, in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, first: bool = False
) -> nn.Module:
    """Returns a bias-free conv (BN follows): quantized per the recipe, or plain float."""
    bits = recipe.first_weight_bits if first else recipe.weight_bits
    padding = kernel // 2
    if recipe.is_float or bits is None:
        return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False)
    quant = weight_quant(
        bits, per_channel=recipe.per_channel, pow2=recipe.pow2_scales, ternary=recipe.ternary
    )
    return QuantConv2d(
        in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False, weight_quant=quant
    )


def make_relu(recipe: Recipe) -> nn.Module:
    """Returns the body activation: quantized unsigned ReLU, or plain ReLU for fp32."""
    if recipe.is_float:
        return nn.ReLU()
    return QuantReLU(act_quant=act_quant(recipe.act_bits, pow2=recipe.pow2_scales))


def make_residual_quant(recipe: Recipe) -> nn.Module:
    """Returns the signed quantizer both operands of a residual add share (one scale: exact sum)."""
    if recipe.is_float:
        return nn.Identity()
    bits = min(8, recipe.act_bits + 2)
    return QuantIdentity(act_quant=act_quant(bits, pow2=recipe.pow2_scales, signed=True))


def make_input_quant(recipe: Recipe, max_abs: float) -> nn.Module:
    """Returns the input quantizer (8-bit by default), or identity for fp32."""
    if recipe.is_float or recipe.input_bits is None:
        return nn.Identity()
    return QuantIdentity(act_quant=input_quant(recipe.input_bits, max_abs, pow2=recipe.pow2_scales))


def fake_quant_rows(
    weight: torch.Tensor, bits: int, *, pow2: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (quantized rows, per-row scale): symmetric narrow int, straight-through rounding.

    Used for the cosine head, whose rows are L2-normalized before quantization, which a Brevitas
    weight proxy (quantizing a module's own parameter) cannot express.
    """
    _, levels = int_range(bits, signed=True, narrow=True)
    max_abs = weight.detach().abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    scale = max_abs / levels
    if pow2:
        scale = 2.0 ** torch.ceil(torch.log2(scale))
    scaled = weight / scale
    codes = torch.clamp(scaled + (torch.round(scaled) - scaled).detach(), -levels, levels)
    return codes * scale, scale


def quant_scale(module: nn.Module) -> torch.Tensor | None:
    """Returns a quantized activation module's output scale (eval mode), or None for float."""
    if isinstance(module, (QuantReLU, QuantIdentity)):
        return module.act_quant.scale().detach()
    return None


def quant_bits(module: nn.Module) -> int | None:
    """Returns a quantized activation module's bit width, or None for float."""
    if isinstance(module, (QuantReLU, QuantIdentity)):
        return int(module.act_quant.bit_width().item())
    return None


def is_quant_conv(module: nn.Module) -> bool:
    return isinstance(module, QuantConv2d)


def weight_codes(conv: nn.Module) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Returns (integer weight codes, per-channel scale [C,1,1,1], bits) of a quantized conv."""
    quant = conv.quant_weight()
    scale = quant.scale.detach()
    value = quant.value.detach()
    codes = torch.round(value / scale)
    if scale.dim() == 0 or scale.numel() == 1:
        scale = scale.reshape(1).expand(value.shape[0]).reshape(-1, 1, 1, 1)
    return codes, scale.reshape(-1, 1, 1, 1), int(quant.bit_width.item())


def is_pow2(value: float) -> bool:
    return value > 0 and math.frexp(value)[0] == 0.5
