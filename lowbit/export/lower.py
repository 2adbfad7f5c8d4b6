"""Lower a trained (eval-mode) quantized model to the integer graph of docs/int_graph.md.

The lowering walks the model's own blocks in data-flow order (conv4: 4 conv blocks; resnet8: stem
and residual blocks) and emits, per block, the integer operators that compute its codes:
`ConvInteger` (codes x weight codes -> exact int32) then `MultiThreshold` (thresholds derived by
`derive_thresholds` from the block's own float BN / quantizer modules). Every code tensor is named
after the torch module that produces it, so `verify` can compare layer by layer.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx
import torch
from torch import nn

from lowbit.core.feature_scores import FEATURE_TENSOR
from lowbit.core.integers import int_range
from lowbit.errors import ConfigError
from lowbit.export.float_error import float_error_per_unit
from lowbit.export.thresholds import derive_thresholds
from lowbit.models.backbones import Conv4, ConvBlock, ResidualBlock, ResNet8
from lowbit.models.build import LowbitModel
from lowbit.models.heads import CosineHead
from lowbit.onnx_graph import (
    DOUBLE,
    FLOAT,
    INT8,
    INT32,
    INT64,
    QONNX_DOMAIN,
    UINT8,
    Codes,
    GraphBuilder,
    value_info,
)
from lowbit.quant.layers import quant_bits, quant_scale, weight_codes


def _scalar(tensor: torch.Tensor) -> float:
    return float(tensor.reshape(-1)[0].item())


def _requant(modules: list[nn.Module], scale_in: torch.Tensor, scale_out: float):
    """Returns acc [M, C] -> codes [M, C]: the float model's own ops after the integer part."""

    def run(acc: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(acc.astype(np.float32)) * scale_in.reshape(1, -1)
        x = x.reshape(x.shape[0], x.shape[1], 1, 1)
        with torch.no_grad():
            for module in modules:
                x = module(x)
        return torch.round(x / scale_out).reshape(acc.shape).numpy().astype(np.int64)

    return run


class Lowering:
    """Emits integer operators for one model; collects per-layer facts for model.json."""

    def __init__(self, model: LowbitModel) -> None:
        if model.recipe.is_float:
            raise ConfigError("an fp32 model has no integer graph: export a quantized recipe")
        self.model = model.eval()
        self.g = GraphBuilder(f"lowbit_{model.recipe.name}_{model.config.backbone}")
        self.layers: list[dict] = []

    # --- integer layers -------------------------------------------------------------------
    def input_quant(self, module: nn.Module, x: str) -> Codes:
        scale = _scalar(quant_scale(module))
        bits = quant_bits(module)
        g = self.g
        divided = g.node("Div", [x, g.const("input_scale", np.float32(scale))], "input_div")
        quant = g.node(
            "Quant",
            [
                divided,
                g.const("one", np.float32(1.0)),
                g.const("zero", np.float32(0.0)),
                g.const("input_bits", np.float32(bits)),
            ],
            "input_quant_float",
            domain=QONNX_DOMAIN,
            signed=1,
            narrow=0,
            rounding_mode="ROUND",
        )
        name = g.node("Cast", [quant], "backbone.input_quant", to=INT8)
        lo, hi = int_range(bits, signed=True)
        codes = Codes(name, scale, lo, hi, bits, True, channels=3)
        g.annotate(name, codes.datatype)
        return codes

    def threshold_layer(
        self,
        name: str,
        conv: nn.Module | None,
        inp: Codes,
        modules: list[nn.Module],
        out: nn.Module,
        *,
        stride: int = 1,
    ) -> Codes:
        """ConvInteger (or identity when conv is None) + MultiThreshold -> codes of `out`."""
        g = self.g
        out_scale = _scalar(quant_scale(out))
        out_bits = quant_bits(out)
        signed = out.__class__.__name__ == "QuantIdentity"
        lo_code, hi_code = int_range(out_bits, signed)
        out_bias = lo_code
        if conv is not None:
            codes, wscale, wbits = weight_codes(conv)
            w = codes.numpy().astype(np.int64)
            flat = w.reshape(w.shape[0], -1)
            lo = np.minimum(flat * inp.lo, flat * inp.hi).sum(axis=1)
            hi = np.maximum(flat * inp.lo, flat * inp.hi).sum(axis=1)
            scale_in = (wscale.reshape(-1) * inp.scale).float()
            channels = w.shape[0]
        else:  # identity: requantize codes of another scale (residual shortcut)
            channels = inp.channels
            lo = np.full(channels, inp.lo, dtype=np.int64)
            hi = np.full(channels, inp.hi, dtype=np.int64)
            scale_in = torch.full((channels,), inp.scale, dtype=torch.float32)
        requant = _requant(modules + [out], scale_in, out_scale)
        result = derive_thresholds(requant, lo, hi, levels=hi_code - lo_code, out_bias=out_bias)
        acc = inp.name
        record = {
            "name": name,
            "act_bits": out_bits,
            "act_scale": out_scale,
            "signed": signed,
            "thresholds": int(result.values.size),
        }
        if conv is not None:
            exact = self.model.recipe.pow2_scales
            abs_bound = np.abs(flat).sum(axis=1) * max(abs(inp.lo), abs(inp.hi))  # sum|x w|
            fan_in = flat.shape[1]
            units = (
                np.zeros(channels)
                if exact
                else np.array(float_error_per_unit(fan_in, scale_in, modules, out_scale))
            )
            record["float_error_per_unit"] = [float(unit) for unit in units]
            record["float_error_steps"] = float((units * abs_bound).max(initial=0.0))
            w = w * result.sign.reshape(-1, 1, 1, 1)
            kernel = list(w.shape[2:])
            pad = kernel[0] // 2
            bound = int(max(np.abs(lo).max(), np.abs(hi).max()))
            acc_bits = max(1, math.ceil(math.log2(bound + 1))) + 1
            doc = {"accumulator_bound": bound, "accumulator_bits": acc_bits}
            acc = g.node(
                "ConvInteger",
                [inp.name, g.const(f"{name}.weight_codes", w.astype(np.int8))],
                f"{name}.acc",
                doc=doc,
                kernel_shape=kernel,
                pads=[pad] * 4,
                strides=[stride] * 2,
            )
            g.annotate(acc, "INT32")
            record.update(
                kind="conv",
                weight_bits=wbits,
                in_channels=int(w.shape[1]),
                out_channels=int(w.shape[0]),
                kernel=kernel,
                fan_in=int(flat.shape[1]),
                weights=int(w.size),
                weight_scale=[float(s) for s in torch.unique(scale_in / inp.scale)],
                accumulator_bound=bound,
                accumulator_bits=acc_bits,
                negated_channels=int((result.sign < 0).sum()),
            )
        else:
            # x = code * scale is one float32 product: within the EXPLAINED_ULPS rule
            record.update(
                kind="requant", in_channels=channels, out_channels=channels, float_error_steps=0.0
            )
            acc = g.node("Cast", [inp.name], f"{name}.acc", to=INT32)
        values = result.values
        tdtype = np.float32 if np.abs(values).max() < 2**24 else np.float64
        # qonnx executes MultiThreshold in numpy and returns float64 whatever the input type, while
        # its type inference keeps the input's: feeding it float64 (exact for every int32) keeps
        # the graph's declared types true for onnxruntime-backed executors.
        acc = g.node("Cast", [acc], f"{name}.acc_f64", to=DOUBLE)
        thresholded = g.node(
            "MultiThreshold",
            [acc, g.const(f"{name}.thresholds", values.astype(tdtype))],
            f"{name}.mt",
            domain=QONNX_DOMAIN,
            out_dtype=f"{'INT' if signed else 'UINT'}{out_bits}",
            out_scale=1.0,
            out_bias=float(out_bias),
            data_layout="NCHW",
        )
        code_name = g.node("Cast", [thresholded], name, to=INT8 if signed else UINT8)
        codes_out = Codes(code_name, out_scale, lo_code, hi_code, out_bits, signed, channels)
        g.annotate(code_name, codes_out.datatype)
        self.layers.append(record)
        return codes_out

    def conv_block(self, prefix: str, block: ConvBlock, inp: Codes) -> Codes:
        out = self.threshold_layer(f"{prefix}.act", block.conv, inp, [block.bn], block.act)
        if isinstance(block.pool, nn.MaxPool2d):
            pooled = self.g.node(
                "MaxPool", [out.name], f"{prefix}.pool", kernel_shape=[2, 2], strides=[2, 2]
            )
            self.g.annotate(pooled, out.datatype)
            out = dataclasses.replace(out, name=pooled)
        return out

    def residual_block(self, prefix: str, block: ResidualBlock, inp: Codes) -> Codes:
        stride = block.conv1.stride[0]
        mid = self.threshold_layer(
            f"{prefix}.act1", block.conv1, inp, [block.bn1], block.act1, stride=stride
        )
        main = self.threshold_layer(
            f"{prefix}.res_main", block.conv2, mid, [block.bn2], block.res_quant
        )
        if block.downsample:
            short = self.threshold_layer(
                f"{prefix}.res_short",
                block.conv_sc,
                inp,
                [block.bn_sc],
                block.res_quant,
                stride=stride,
            )
        else:
            short = self.threshold_layer(f"{prefix}.res_short", None, inp, [], block.res_quant)
        g = self.g
        a = g.node("Cast", [main.name], f"{prefix}.res_main.i32", to=INT32)
        b = g.node("Cast", [short.name], f"{prefix}.res_short.i32", to=INT32)
        total = g.node("Add", [a, b], f"{prefix}.sum")
        g.annotate(total, "INT32")
        summed = Codes(
            total,
            main.scale,
            main.lo + short.lo,
            main.hi + short.hi,
            main.bits + 1,
            True,
            main.channels,
        )
        return self.threshold_layer(f"{prefix}.act_out", None, summed, [], block.act_out)

    # --- head -----------------------------------------------------------------------------
    def head(self, features: str, feature_codes: Codes) -> tuple[str, dict]:
        g, head = self.g, self.model.head
        bits = head.weight_bits
        codes_t, row_scale = head.row_codes()
        codes = codes_t.numpy().astype(np.int64)  # [K, F]
        f64 = g.node("Cast", [features], "head.features", to=INT64)
        dots = g.node(
            "MatMul",
            [f64, g.const("head.weight_codes", codes.T.copy())],
            "head.class_dot",
            doc={"accumulator_bound": None},
        )
        g.annotate(dots, "INT64")
        dots_f = g.node("Cast", [dots], "head.class_dot.f64", to=DOUBLE)
        info = {
            "head": self.model.config.head,
            "head_weight_bits": bits,
            "classes": int(codes.shape[0]),
            "features": int(codes.shape[1]),
        }
        if isinstance(head, CosineHead):
            sq = g.node("Mul", [f64, f64], "head.feature_sq_terms")
            n = g.node(
                "ReduceSum",
                [sq, g.const("axes_1", np.array([1], np.int64))],
                "head.feature_sq",
                keepdims=1,
            )
            g.annotate(n, "INT64")
            root = g.node(
                "Sqrt", [g.node("Cast", [n], "head.feature_sq.f64", to=DOUBLE)], "head.feature_norm"
            )
            root = g.node(
                "Max", [root, g.const("one_f64", np.float64(1.0))], "head.feature_norm_safe"
            )
            cos = g.node("Div", [dots_f, root], "head.cos_unscaled")
            row_norm = np.sqrt((codes.astype(np.float64) ** 2).sum(axis=1))
            factor = float(head.scale.detach()) / np.maximum(row_norm, 1.0)
            logits = g.node("Mul", [cos, g.const("head.tail_factor", factor)], "logits")
            info.update(cosine_scale=float(head.scale.detach()))
        else:
            factor = (row_scale.reshape(-1).double() * feature_codes.scale).numpy()
            logits = g.node("Mul", [dots_f, g.const("head.tail_factor", factor)], "logits")
        return logits, info


def lower_model(model: LowbitModel) -> tuple[onnx.ModelProto, list[dict], dict]:
    """Returns (integer ONNX model, per-layer records, head info) for an eval-mode model."""
    low = Lowering(model)
    size = model.config.image_size
    backbone = model.backbone
    codes = low.input_quant(backbone.input_quant, "input")
    if isinstance(backbone, Conv4):
        for index, block in enumerate(backbone.blocks):
            codes = low.conv_block(f"backbone.blocks.{index}", block, codes)
        features = low.g.node("Flatten", [codes.name], FEATURE_TENSOR, axis=1)
    elif isinstance(backbone, ResNet8):
        codes = low.conv_block("backbone.stem", backbone.stem, codes)
        for index, block in enumerate(backbone.blocks):
            codes = low.residual_block(f"backbone.blocks.{index}", block, codes)
        wide = low.g.node("Cast", [codes.name], "backbone.codes.i32", to=INT32)
        features = low.g.node(
            "ReduceSum",
            [wide, low.g.const("axes_23", np.array([2, 3], np.int64))],
            FEATURE_TENSOR,
            keepdims=0,
        )
    else:
        raise ConfigError(f"no integer lowering for backbone {type(backbone).__name__}")
    logits, head_info = low.head(features, codes)
    inputs = [value_info("input", FLOAT, ["N", 3, size, size])]
    outputs = [value_info(logits, DOUBLE, ["N", model.config.num_classes])]
    return low.g.build(inputs, outputs), low.layers, head_info
