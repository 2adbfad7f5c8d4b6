"""`--target finn`: a QONNX graph that FINN's ConvertQONNXtoFINN and Streamline take as it is and
execute exactly like lowbit's integer runtime.

FINN's own conversion turns a QONNX activation `Quant` into MultiThreshold with thresholds at the
half steps, and `>=` sends every tie up — not round half to even — and re-derives BN thresholds
in float. lowbit already has the exact thresholds, so the graph carries them:

    image (float32 NCHW) -> MultiThreshold (the input quantizer, ties included) -> INT8 codes
    per layer: Conv(codes, Quant/BipolarQuant(weight codes)) -> MultiThreshold -> [MaxPool]
    Flatten -> `features`;  MatMul(features, Quant(head codes)) -> `class_dot`

Weights go through QONNX `Quant` (scale 1) or `BipolarQuant` so ConvertQONNXtoFINN folds them and
annotates their FINN datatype; every code tensor and accumulator is annotated with lowbit's width
(`finn_datatype`: INT8 input codes, INT{accumulator_bits}, UINT{act_bits}, head INT{bits}).
Accumulators are float32 in FINN's executor: exact below 2^24, which is checked. The float tail of
the head runs on the host (`tail` in the graph's metadata, as in model.json).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx

from lowbit.core.integers import int_range
from lowbit.errors import ConfigError
from lowbit.io import atomic_write_bytes
from lowbit.onnx_graph import FLOAT, QONNX_DOMAIN, GraphBuilder, value_info
from lowbit.targets.reader import HandOff, head_bound, read_int_graph, signed_bits

log = logging.getLogger(__name__)

GRAPH_FILE = "model.finn.onnx"
FLOAT32_EXACT = 2**24  # integers up to this magnitude are exact in FINN's float32 tensors


def _ordered(x: np.ndarray) -> np.ndarray:
    """float32 -> int64 keys in the same order (both zeros -> 0)."""
    bits = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def _unordered(keys: np.ndarray) -> np.ndarray:
    bits = np.where(keys < 0, (-keys) | 0x80000000, keys).astype(np.uint32)
    return bits.view(np.float32)


def input_thresholds(scale: float, bits: int) -> np.ndarray:
    """Returns float32 thresholds [1, 2^bits - 1]: t_k = the smallest float32 x whose input code
    clamp(round_half_even(float32(x / scale))) reaches -2^(bits-1) + k. MultiThreshold on the raw
    float input then equals lowbit's `Div` + `Quant` exactly, for any scale.
    """
    scale32 = np.float32(scale)
    low_code, high_code = int_range(bits, signed=True)
    targets = np.arange(low_code + 1, high_code + 1, dtype=np.int64)

    def code(x: np.ndarray) -> np.ndarray:
        return np.round(x / scale32).astype(np.int64)  # clamp is monotone: not needed here

    span = np.float32(2 ** (bits + 1)) * scale32
    left = np.full(targets.shape, _ordered(-span), np.int64)
    right = np.full(targets.shape, _ordered(span), np.int64)
    while np.any(left < right):
        mid = (left + right) // 2
        reached = code(_unordered(mid)) >= targets
        right = np.where(reached, mid, right)
        left = np.where(reached, left, mid + 1)
    return _unordered(left).reshape(1, -1)


def _const(g: GraphBuilder, name: str, value: np.ndarray) -> str:
    """A float32 initializer: FINN's executor and transformations hold every tensor in float32."""
    return g.const(name, np.asarray(value, np.float32))


def _node(g: GraphBuilder, op: str, inputs: list[str], output: str, datatype=None, **attrs) -> str:
    """A node (named after its output), its output annotated with its FINN datatype if given."""
    output = g.node(op, inputs, output, **attrs)
    if datatype:
        g.annotate(output, datatype)
    return output


def _weights(g: GraphBuilder, name: str, codes: np.ndarray, bits: int) -> str:
    values = _const(g, f"{name}_codes", codes)
    if bits == 1:
        if not np.all(np.abs(codes) == 1):
            raise ConfigError(f"finn target: {name}: 1-bit weights must be bipolar ±1 codes")
        scale = _const(g, f"{name}_scale", np.float32(1.0))
        return _node(g, "BipolarQuant", [values, scale], name, domain=QONNX_DOMAIN)
    low, high = int_range(bits, signed=True)
    if codes.max() > high or codes.min() < low:
        raise ConfigError(f"finn target: {name}: weight codes do not fit INT{bits}")
    params = [
        _const(g, f"{name}_scale", np.float32(1.0)),
        _const(g, f"{name}_zeropt", np.float32(0.0)),
        _const(g, f"{name}_bitwidth", np.float32(bits)),
    ]
    narrow = int(codes.min() > low)
    return _node(
        g, "Quant", [values, *params], name, domain=QONNX_DOMAIN,
        signed=1, narrow=narrow, rounding_mode="ROUND",
    )  # fmt: skip


def _threshold(g: GraphBuilder, x, thresholds, name, *, bits, signed, out_bias) -> str:
    datatype = f"{'INT' if signed else 'UINT'}{bits}"
    return _node(
        g,
        "MultiThreshold",
        [x, _const(g, f"{name}_thresholds", thresholds)],
        name,
        datatype,
        domain=QONNX_DOMAIN,
        out_dtype=datatype,
        out_scale=1.0,
        out_bias=float(out_bias),
        data_layout="NCHW",
    )


def _check_exact(value: int, where: str) -> None:
    if value >= FLOAT32_EXACT:
        raise ConfigError(
            f"finn target: {where}: values up to {value} are not exact in FINN's float32 tensors"
        )


def build_finn_graph(handoff: HandOff) -> onnx.ModelProto:
    """Returns the FINN-ready QONNX graph (batch 1, NCHW) of one hand-off."""
    g = GraphBuilder("lowbit_finn", node_name="{output}", opset=13)
    bits = handoff.input_bits
    x = _threshold(
        g, "image", input_thresholds(handoff.input_scale, bits), "input_codes",
        bits=bits, signed=True, out_bias=int_range(bits, signed=True)[0],
    )  # fmt: skip
    for index, layer in enumerate(handoff.layers):
        name = f"layer{index}"
        _check_exact(layer.accumulator_bound, f"{layer.name} accumulator")
        _check_exact(int(np.abs(layer.thresholds).max(initial=0)), f"{layer.name} thresholds")
        weights = _weights(g, f"{name}_weight", layer.weight_codes, layer.weight_bits)
        acc = _node(
            g, "Conv", [x, weights], f"{name}_acc", f"INT{layer.accumulator_bits}",
            kernel_shape=list(layer.weight_codes.shape[2:]), pads=layer.pads,
            strides=layer.strides, dilations=[1, 1], group=1,
        )  # fmt: skip
        x = _threshold(
            g, acc, layer.thresholds, f"{name}_codes",
            bits=layer.act_bits, signed=layer.signed, out_bias=layer.out_bias,
        )  # fmt: skip
        if layer.pool:
            x = _node(
                g, "MaxPool", [x], f"{name}_pool", g.annotations[x],
                kernel_shape=[2, 2], strides=[2, 2], pads=[0] * 4,
            )  # fmt: skip
    features = _node(g, "Flatten", [x], "features", g.annotations[x], axis=1)
    dot_bound = head_bound(handoff)
    _check_exact(dot_bound, "head dot products")
    head = _weights(g, "head_weight", handoff.head_codes, handoff.head_bits)
    _node(g, "MatMul", [features, head], "class_dot", f"INT{signed_bits(dot_bound)}")
    n_features, n_classes = handoff.head_codes.shape
    model = g.build(
        [value_info("image", FLOAT, [1, *handoff.input_shape])],
        [
            value_info("features", FLOAT, [1, n_features]),
            value_info("class_dot", FLOAT, [1, n_classes]),
        ],
    )
    entry = model.metadata_props.add()
    entry.key, entry.value = "lowbit_tail", json.dumps(handoff.tail())
    return model


def write_finn(export_dir: str | Path) -> list[Path]:
    """Writes model.finn.onnx next to model.int.onnx; returns its path in a list."""
    export_dir = Path(export_dir)
    graph = build_finn_graph(read_int_graph(export_dir))
    onnx.checker.check_model(graph)
    path = atomic_write_bytes(export_dir / GRAPH_FILE, graph.SerializeToString())
    log.info("finn target: wrote %s", path)
    return [path]
