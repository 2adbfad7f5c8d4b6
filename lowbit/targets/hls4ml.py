"""`--target hls4ml`: a channels-last QONNX graph plus an hls4ml configuration that computes
exactly what lowbit's integer runtime computes.

Graph (per conv layer): `Conv(codes, Quant(weight codes)) -> BatchNormalization(a, b) ->
Quant(ROUND)`, where `clamp(rhe(a·acc + b))` equals the layer's MultiThreshold on every
reachable accumulator (affine_requant.py), so hls4ml's own layers reproduce the thresholds,
ties included (QONNX ROUND becomes `AP_RND_CONV`). Then `MaxPool`, `Flatten` and the head's
integer MatMul. Outputs: `features` (the last activation codes, HWC order, see below) and
`class_dot` (the head's exact dot products); the float tail runs on the host (model.json /
hls4ml_config.json `tail`).

hls4ml's QONNX front end needs the graph channels-last. lowbit applies qonnx's own
`ConvertToChannelsLastAndClean` with a channels-last input, then removes the one Transpose it
leaves (before `Flatten`) by permuting the head's weight rows to HWC order: no layout op is left
for hls4ml's stream layers to misread.

Precision: every type that holds a value is set from lowbit's bounds, none is left at hls4ml's
default `fixed<16,6>`: the input type *is* the input quantizer (`AP_RND_CONV`, `AP_SAT`: the
conversion of the float input rounds half to even and saturates, like QONNX `Quant`), each conv's
accumulator/result is the exact accumulator width, each BN scale/bias/result has the fraction
bits of its dyadic (a, b), the head's accumulator its exact bound.
"""

from __future__ import annotations

import logging
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lowbit.core.integers import int_range
from lowbit.errors import ConfigError
from lowbit.io import atomic_write_bytes, atomic_write_json
from lowbit.manifest import check_export
from lowbit.targets.affine_requant import fraction_bits, solve_layer
from lowbit.targets.reader import HandOff, head_bound, read_int_graph, signed_bits

log = logging.getLogger(__name__)

GRAPH_FILE = "model.hls4ml.onnx"
CONFIG_FILE = "hls4ml_config.json"
QONNX = "qonnx.custom_op.general"
CHANNELS_LAST = "qonnx.custom_op.channels_last"
INPUT = "image"  # NHWC float32; hls4ml reserves the layer name "input"


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shapes: dict[str, list[int]] = {}  # qonnx's channels-last ops need every shape

    def const(self, name: str, value: np.ndarray) -> str:
        value = np.asarray(value, dtype=np.float32)
        self.inits.append(numpy_helper.from_array(value, name))
        self.shapes[name] = list(value.shape)
        return name

    def node(
        self, op: str, inputs: list[str], output: str, domain: str = "", shape=None, **attrs
    ) -> str:
        """Adds a node; its output shape is `shape`, or its first input's."""
        self.nodes.append(helper.make_node(op, inputs, [output], output, domain=domain, **attrs))
        self.shapes[output] = list(shape) if shape is not None else self.shapes[inputs[0]]
        return output

    def value_info(self) -> list[onnx.ValueInfoProto]:
        """Shapes of every tensor but the graph's inputs/outputs (hls4ml reads constants' too)."""
        return [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
            for name, shape in self.shapes.items()
            if name not in (INPUT, "features", "class_dot")
        ]

    def quant(self, x: str, name: str, scale: float, bits: int, *, signed: bool, narrow: bool):
        params = [
            self.const(f"{name}_scale", np.float32(scale)),
            self.const(f"{name}_zeropt", np.float32(0.0)),
            self.const(f"{name}_bitwidth", np.float32(bits)),
        ]
        return self.node(
            "Quant", [x, *params], name, QONNX, signed=int(signed), narrow=int(narrow),
            rounding_mode="ROUND",
        )  # fmt: skip


def _fixed(bits: int, integer: int, signed: bool = True, tail: str = "") -> str:
    return f"{'' if signed else 'u'}fixed<{bits},{integer}{tail}>"


def _dyadic_type(values: list[Fraction]) -> str:
    """The smallest signed fixed type holding every value exactly."""
    frac = fraction_bits(values)
    magnitude = max((abs(v) for v in values), default=Fraction(0))
    integer = max(1, math.ceil(math.log2(magnitude + 1))) + 1 if magnitude else 1
    return _fixed(integer + frac, integer)


def _weight_quant(codes: np.ndarray, bits: int, where: str) -> tuple[int, bool]:
    """Returns (bits, narrow) of a signed Quant holding `codes`: bipolar codes use narrow INT2."""
    bits = max(bits, 2)  # ±1 in INT2 narrow: hls4ml's bipolar (XNOR) path needs binary inputs
    low, high = int_range(bits, signed=True)
    narrow = codes.min() > low
    if codes.max() > high or codes.min() < low:
        raise ConfigError(f"hls4ml target: {where}: weight codes do not fit {bits} bits")
    return bits, bool(narrow)


def hwc_rows(handoff: HandOff) -> np.ndarray:
    """Returns the head's weight codes with rows in HWC order (the channels-last Flatten's)."""
    channels = handoff.layers[-1].weight_codes.shape[0]
    features, classes = handoff.head_codes.shape
    spatial = features // channels
    chw = handoff.head_codes.reshape(channels, spatial, classes)
    return chw.transpose(1, 0, 2).reshape(features, classes)


def chw_to_hwc(features: np.ndarray, channels: int) -> np.ndarray:
    """Returns [N, C·H·W] feature codes (lowbit's Flatten order) in HWC order."""
    count = features.shape[0]
    return features.reshape(count, channels, -1).transpose(0, 2, 1).reshape(count, -1)


def build_hls4ml_graph(handoff: HandOff) -> tuple[onnx.ModelProto, dict]:
    """Returns (NCHW QONNX graph, per-tensor precision plan) for one hand-off."""
    g = _Builder()
    channels, height, width = handoff.input_shape
    g.shapes[INPUT] = [1, height, width, channels]
    scale = handoff.input_scale
    mantissa, exponent = math.frexp(scale)
    if mantissa != 0.5:
        raise ConfigError(
            f"hls4ml target: input scale {scale} is not a power of two; hls4ml needs one to "
            "quantize exactly: export with pow2_scales=True"
        )
    input_frac = 1 - exponent  # scale = 2^-input_frac
    bits = handoff.input_bits
    plan: dict[str, str] = {
        INPUT: _fixed(bits, bits - input_frac, tail=",RND_CONV,SAT"),
    }
    x = g.quant(INPUT, "input_quant", scale, bits, signed=True, narrow=False)
    plan["input_quant"] = plan[INPUT]
    frac = input_frac  # fraction bits of the current activation values
    for index, layer in enumerate(handoff.layers):
        name = f"layer{index}"
        wbits, narrow = _weight_quant(layer.weight_codes, layer.weight_bits, layer.name)
        # channels-last ops take channels-last weights too: [C_out, k, k, C_in]
        ohwi = layer.weight_codes.transpose(0, 2, 3, 1)
        weights = g.const(f"{name}_weight_codes", ohwi.astype(np.float32))
        wq = g.quant(weights, f"{name}_weight", 1.0, wbits, signed=True, narrow=narrow)
        kernel = list(layer.weight_codes.shape[2:])
        stride = layer.strides[0]
        height = (height + layer.pads[0] + layer.pads[2] - kernel[0]) // stride + 1
        width = (width + layer.pads[1] + layer.pads[3] - kernel[1]) // stride + 1
        channels = layer.weight_codes.shape[0]
        acc = g.node(
            "Conv", [x, wq], f"{name}_conv", CHANNELS_LAST, [1, height, width, channels],
            kernel_shape=kernel,
            pads=layer.pads, strides=layer.strides, dilations=[1, 1], group=1,
        )  # fmt: skip
        acc_int_bits = signed_bits(layer.accumulator_bound)
        plan[f"{name}_conv"] = _fixed(acc_int_bits + frac, acc_int_bits)
        lo, hi = layer.accumulator_range()
        pairs = solve_layer(
            layer.thresholds, lo, hi, layer.out_bias, f"hls4ml target: {layer.name}"
        )
        slopes = [a * 2**frac for a, _ in pairs]  # the conv output is acc · 2^-frac
        offsets = [b for _, b in pairs]
        y = g.node(
            "BatchNormalization",
            [
                acc,
                g.const(f"{name}_bn_scale", np.array([float(v) for v in slopes])),
                g.const(f"{name}_bn_bias", np.array([float(v) for v in offsets])),
                g.const(f"{name}_bn_mean", np.zeros(channels)),
                g.const(f"{name}_bn_var", np.ones(channels)),
            ],
            f"{name}_bn",
            CHANNELS_LAST,
            epsilon=0.0,
        )
        extreme = [abs(a) * max(abs(int(lo.min())), abs(int(hi.max()))) + abs(b) for a, b in pairs]
        y_frac = max(fraction_bits(slopes) + frac, fraction_bits(offsets))
        y_int = signed_bits(math.ceil(max(extreme, default=0)))
        plan[f"{name}_bn_scale"] = _dyadic_type(slopes)
        plan[f"{name}_bn_bias"] = _dyadic_type(offsets)
        plan[f"{name}_bn"] = _fixed(y_int + y_frac, y_int)
        x = g.quant(y, f"{name}_act", 1.0, layer.act_bits, signed=layer.signed, narrow=False)
        frac = 0
        if layer.pool:
            height, width = height // 2, width // 2
            x = g.node(
                "MaxPool", [x], f"{name}_pool", CHANNELS_LAST, [1, height, width, channels],
                kernel_shape=[2, 2],
                strides=[2, 2], pads=[0] * 4, dilations=[1, 1], ceil_mode=0,
            )  # fmt: skip
    n_features, n_classes = handoff.head_codes.shape
    features = g.node("Flatten", [x], "features", shape=[1, n_features], axis=1)
    hbits, hnarrow = _weight_quant(handoff.head_codes, handoff.head_bits, "head")
    head = g.const("head_weight_codes", hwc_rows(handoff).astype(np.float32))
    hq = g.quant(head, "head_weight", 1.0, hbits, signed=True, narrow=hnarrow)
    g.node("MatMul", [features, hq], "class_dot", shape=[1, n_classes])
    dot_bits = signed_bits(head_bound(handoff))
    plan["class_dot"] = _fixed(dot_bits, dot_bits)
    graph = helper.make_graph(
        g.nodes,
        "lowbit_hls4ml",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, g.shapes[INPUT])],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, n_features]),
            helper.make_tensor_value_info("class_dot", TensorProto.FLOAT, [1, n_classes]),
        ],
        g.inits,
        value_info=g.value_info(),
    )
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", 13),
            helper.make_opsetid(QONNX, 1),
            helper.make_opsetid(CHANNELS_LAST, 1),
        ],
    )
    model.ir_version = 8
    return model, plan


def hls4ml_config(handoff: HandOff, plan: dict[str, str]) -> dict:
    """Returns the hls4ml `hls_config` (granularity 'name') that fixes every value-holding type."""
    layers: dict[str, dict] = {name: {"Precision": {"result": plan[name]}} for name in (INPUT,)}
    layers["input_quant"] = {"Precision": {"result": plan["input_quant"]}}
    for index, layer in enumerate(handoff.layers):
        name = f"layer{index}"
        acc = plan[f"{name}_conv"]
        codes = _fixed(layer.act_bits, layer.act_bits, signed=layer.signed)
        layers[f"{name}_conv"] = {"Precision": {"accum": acc, "result": acc}}
        layers[f"{name}_bn"] = {
            "Precision": {
                "scale": plan[f"{name}_bn_scale"],
                "bias": plan[f"{name}_bn_bias"],
                "result": plan[f"{name}_bn"],
            }
        }
        if layer.pool:
            layers[f"{name}_pool"] = {"Precision": {"accum": codes, "result": codes}}
    last = handoff.layers[-1]
    layers["features"] = {
        "Precision": {"result": _fixed(last.act_bits, last.act_bits, last.signed)}
    }
    layers["class_dot"] = {"Precision": {"accum": plan["class_dot"], "result": plan["class_dot"]}}
    model = {"Precision": {"default": "fixed<16,6>"}, "ReuseFactor": 1, "Strategy": "Latency"}
    return {"Model": model, "LayerName": layers}


def write_hls4ml(export_dir: str | Path) -> list[Path]:
    """Writes model.hls4ml.onnx and hls4ml_config.json next to model.int.onnx; returns the paths."""
    export_dir = Path(export_dir)
    check_export(export_dir)
    handoff = read_int_graph(export_dir / "model.int.onnx")
    graph, plan = build_hls4ml_graph(handoff)
    onnx.checker.check_model(graph)
    channels = handoff.layers[-1].weight_codes.shape[0]
    config = {
        "hls_config": hls4ml_config(handoff, plan),
        "onnx_model": GRAPH_FILE,
        "input": {"name": INPUT, "layout": "NHWC", "shape": [1, *handoff.input_shape[1:], 3]},
        "outputs": {
            "features": f"last activation codes, HWC order (lowbit's CHW features of "
            f"{channels} channels, transposed)",
            "class_dot": "the head's exact integer dot products d_c",
        },
        "tail": handoff.tail(),
        "usage": "hls4ml.converters.convert_from_onnx_model(onnx.load(onnx_model), "
        "hls_config=hls_config, io_type='io_stream', backend='Vitis'); compile(); predict(x_nhwc)",
    }
    paths = [
        atomic_write_bytes(export_dir / GRAPH_FILE, graph.SerializeToString()),
        atomic_write_json(export_dir / CONFIG_FILE, config),
    ]
    log.info("hls4ml target: wrote %s", ", ".join(str(p) for p in paths))
    return paths


def convert_hls4ml(export_dir: str | Path, output_dir: str | Path, *, io_type: str = "io_stream"):
    """Returns hls4ml's compiled ModelGraph of an export (needs the optional `hls4ml` extra)."""
    import json

    import hls4ml

    export_dir = Path(export_dir)
    config = json.loads((export_dir / CONFIG_FILE).read_text())
    graph = onnx.load(str(export_dir / config["onnx_model"]))
    model = hls4ml.converters.convert_from_onnx_model(
        graph,
        output_dir=str(output_dir),
        io_type=io_type,
        backend="Vitis",
        hls_config=config["hls_config"],
    )
    model.compile()
    return model
