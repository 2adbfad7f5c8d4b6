"""`--target hls4ml`: a channels-last QONNX graph plus an hls4ml configuration that computes
exactly what lowbit's integer runtime computes.

Graph: the NHWC float input `image` -> `Quant` (the input quantizer), then per conv layer
`Conv(codes, Quant(weight codes)) -> BatchNormalization(a, b) -> Quant(ROUND)`, where
`clamp(rhe(a·acc + b))` equals the layer's MultiThreshold on every reachable accumulator
(affine_requant.py), so hls4ml's own layers reproduce the thresholds, ties included (QONNX ROUND
becomes `AP_RND_CONV`). Then `MaxPool`, `Flatten` and the head's integer MatMul. Outputs:
`features` (the last activation codes, HWC order, see below) and `class_dot` (the head's exact
dot products); the float tail runs on the host (model.json / hls4ml_config.json `tail`).

hls4ml's QONNX front end needs the graph channels-last, so it is built channels-last: Conv,
BatchNormalization and MaxPool in qonnx's `channels_last` domain, OHWI weights, and the head's
weight rows permuted to HWC order, the order in which `Flatten` reads an NHWC tensor. No
Transpose or other layout op is in the graph for hls4ml's stream layers to misread. The shape of
every constant and intermediate tensor is in value_info: qonnx's channels-last ops and hls4ml
read shapes from there.

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

from lowbit.artifacts import load_onnx
from lowbit.core.integers import int_range
from lowbit.errors import ConfigError, ModelFileError
from lowbit.io import atomic_write_bytes, atomic_write_json
from lowbit.onnx_graph import FLOAT, QONNX_DOMAIN, GraphBuilder, value_info
from lowbit.targets.affine_requant import fraction_bits, solve_layer
from lowbit.targets.reader import (
    HandOff,
    head_bound,
    read_int_graph,
    read_json_object,
    signed_bits,
)

log = logging.getLogger(__name__)

GRAPH_FILE = "model.hls4ml.onnx"
CONFIG_FILE = "hls4ml_config.json"
CHANNELS_LAST = "qonnx.custom_op.channels_last"
INPUT = "image"  # NHWC float32; hls4ml reserves the layer name "input"


def _const(g: GraphBuilder, name: str, value: np.ndarray) -> str:
    """A float32 initializer: the QONNX front end reads every constant as float32."""
    return g.const(name, np.asarray(value, dtype=np.float32))


def _quant(g: GraphBuilder, x: str, name: str, scale: float, bits: int, *, signed, narrow) -> str:
    params = [
        _const(g, f"{name}_scale", np.float32(scale)),
        _const(g, f"{name}_zeropt", np.float32(0.0)),
        _const(g, f"{name}_bitwidth", np.float32(bits)),
    ]
    return g.node(
        "Quant", [x, *params], name, domain=QONNX_DOMAIN, signed=int(signed),
        narrow=int(narrow), rounding_mode="ROUND",
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
    """Returns (channels-last QONNX graph, NHWC input, per-tensor precision plan) of a hand-off."""
    # node names are hls4ml's layer names (hls4ml_config keys); qonnx's channels-last ops and
    # hls4ml read the shapes of intermediate tensors and constants from value_info
    g = GraphBuilder(
        "lowbit_hls4ml",
        node_name="{output}",
        opset=13,
        domains=(QONNX_DOMAIN, CHANNELS_LAST),
        track_shapes=True,
    )
    channels, height, width = handoff.input_shape
    input_shape = [1, height, width, channels]
    g.declare_shape(INPUT, input_shape)
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
    x = _quant(g, INPUT, "input_quant", scale, bits, signed=True, narrow=False)
    plan["input_quant"] = plan[INPUT]
    frac = input_frac  # fraction bits of the current activation values
    for index, layer in enumerate(handoff.layers):
        name = f"layer{index}"
        wbits, narrow = _weight_quant(layer.weight_codes, layer.weight_bits, layer.name)
        # channels-last ops take channels-last weights too: [C_out, k, k, C_in]
        ohwi = layer.weight_codes.transpose(0, 2, 3, 1)
        weights = _const(g, f"{name}_weight_codes", ohwi)
        wq = _quant(g, weights, f"{name}_weight", 1.0, wbits, signed=True, narrow=narrow)
        kernel = list(layer.weight_codes.shape[2:])
        stride = layer.strides[0]
        height = (height + layer.pads[0] + layer.pads[2] - kernel[0]) // stride + 1
        width = (width + layer.pads[1] + layer.pads[3] - kernel[1]) // stride + 1
        channels = layer.weight_codes.shape[0]
        acc = g.node(
            "Conv", [x, wq], f"{name}_conv", domain=CHANNELS_LAST,
            shape=[1, height, width, channels],
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
                _const(g, f"{name}_bn_scale", np.array([float(v) for v in slopes])),
                _const(g, f"{name}_bn_bias", np.array([float(v) for v in offsets])),
                _const(g, f"{name}_bn_mean", np.zeros(channels)),
                _const(g, f"{name}_bn_var", np.ones(channels)),
            ],
            f"{name}_bn",
            domain=CHANNELS_LAST,
            epsilon=0.0,
        )
        extreme = [abs(a) * max(abs(int(lo.min())), abs(int(hi.max()))) + abs(b) for a, b in pairs]
        y_frac = max(fraction_bits(slopes) + frac, fraction_bits(offsets))
        y_int = signed_bits(math.ceil(max(extreme, default=0)))
        plan[f"{name}_bn_scale"] = _dyadic_type(slopes)
        plan[f"{name}_bn_bias"] = _dyadic_type(offsets)
        plan[f"{name}_bn"] = _fixed(y_int + y_frac, y_int)
        x = _quant(g, y, f"{name}_act", 1.0, layer.act_bits, signed=layer.signed, narrow=False)
        frac = 0
        if layer.pool:
            height, width = height // 2, width // 2
            x = g.node(
                "MaxPool", [x], f"{name}_pool", domain=CHANNELS_LAST,
                shape=[1, height, width, channels],
                kernel_shape=[2, 2],
                strides=[2, 2], pads=[0] * 4, dilations=[1, 1], ceil_mode=0,
            )  # fmt: skip
    n_features, n_classes = handoff.head_codes.shape
    features = g.node("Flatten", [x], "features", shape=[1, n_features], axis=1)
    hbits, hnarrow = _weight_quant(handoff.head_codes, handoff.head_bits, "head")
    head = _const(g, "head_weight_codes", hwc_rows(handoff))
    hq = _quant(g, head, "head_weight", 1.0, hbits, signed=True, narrow=hnarrow)
    g.node("MatMul", [features, hq], "class_dot", shape=[1, n_classes])
    dot_bits = signed_bits(head_bound(handoff))
    plan["class_dot"] = _fixed(dot_bits, dot_bits)
    model = g.build(
        [value_info(INPUT, FLOAT, input_shape)],
        [
            value_info("features", FLOAT, [1, n_features]),
            value_info("class_dot", FLOAT, [1, n_classes]),
        ],
    )
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
    handoff = read_int_graph(export_dir)
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
    export_dir = Path(export_dir)
    config = read_json_object(export_dir / CONFIG_FILE)
    name = config.get("onnx_model")
    if not isinstance(name, str) or Path(name).name != name:
        raise ModelFileError(
            f"{export_dir / CONFIG_FILE}: onnx_model {name!r} is not a file name in the folder"
        )
    graph = load_onnx(export_dir / name)
    import hls4ml  # the files are checked before the optional tool is loaded

    model = hls4ml.converters.convert_from_onnx_model(
        graph,
        output_dir=str(output_dir),
        io_type=io_type,
        backend="Vitis",
        hls_config=config["hls_config"],
    )
    model.compile()
    return model
