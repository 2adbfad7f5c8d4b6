"""QONNX -> standard ONNX QCDQ (QuantizeLinear / Clip / DequantizeLinear), 1-bit included.

Pattern matched: every qonnx `Quant` and `BipolarQuant` node.
- On a constant (weights): the integer codes become an int8 initializer followed by
  `DequantizeLinear` (per-channel scales on axis 0). `BipolarQuant` gives codes {-1, +1} with
  sign(0) = +1 — the lowering Brevitas' own QCDQ export refuses ("Binary quant not supported").
- On an activation: `QuantizeLinear` (round half to even, saturating) -> `Clip` to the bit
  width's integer range (skipped when it is the full 8-bit range) -> `DequantizeLinear`. QONNX
  clamps then rounds, this rounds then clamps: equal for integer bounds.
Invariant: the output tensor keeps the Quant node's name, so code tensors line up across graphs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lowbit.core.integers import int_range, quantize
from lowbit.errors import ModelFileError

QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general", "finn")


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def quant_to_qcdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """Returns a copy of `model` with every Quant/BipolarQuant lowered to standard QCDQ ops."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {init.name: init for init in graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type not in ("Quant", "BipolarQuant"):
            new_nodes.append(node)
            continue
        where = f"node {node.name or node.output[0]!r} ({node.op_type})"
        try:
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        except KeyError:
            raise ModelFileError(f"{where}: scale is not a constant initializer") from None
        if node.op_type == "BipolarQuant":
            lo, hi, zero = -1, 1, np.float32(0)
            bits, signed = 1, True
        else:
            zero = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
            bits = int(numpy_helper.to_array(inits[node.input[3]]))
            signed, narrow = bool(_attr(node, "signed", 1)), bool(_attr(node, "narrow", 0))
            if _attr(node, "rounding_mode", b"ROUND") not in (b"ROUND", "ROUND"):
                raise ModelFileError(f"{where}: only rounding_mode ROUND lowers to QuantizeLinear")
            lo, hi = int_range(bits, signed, narrow)
        if bits > 8:
            raise ModelFileError(
                f"{where}: {bits}-bit quantization does not fit QuantizeLinear's int8"
            )
        if np.any(zero != 0):
            raise ModelFileError(
                f"{where}: non-zero zero points are not produced by lowbit recipes"
            )
        qtype = np.int8 if signed else np.uint8
        axis_scale, axis = _scale_axis(scale, where)
        scale_name = f"{node.output[0]}.scale"
        zero_name = f"{node.output[0]}.zero_point"
        graph.initializer.extend(
            [
                numpy_helper.from_array(axis_scale, scale_name),
                numpy_helper.from_array(np.zeros(axis_scale.shape, qtype), zero_name),
            ]
        )
        source = node.input[0]
        if source in inits:  # constant weights: store the codes
            weights = numpy_helper.to_array(inits[source]).astype(np.float32)
            if node.op_type == "BipolarQuant":
                codes = np.where(weights >= 0, 1, -1)
            else:
                codes = quantize(weights, scale, lo, hi)
            codes_name = f"{node.output[0]}.codes"
            graph.initializer.append(numpy_helper.from_array(codes.astype(qtype), codes_name))
            new_nodes.append(
                helper.make_node(
                    "DequantizeLinear",
                    [codes_name, scale_name, zero_name],
                    [node.output[0]],
                    name=f"{node.name}_dq",
                    axis=axis,
                )
            )
            continue
        if node.op_type == "BipolarQuant":
            raise ModelFileError(f"{where}: bipolar activations are not produced by lowbit recipes")
        quantized = f"{node.output[0]}.q"
        new_nodes.append(
            helper.make_node(
                "QuantizeLinear",
                [source, scale_name, zero_name],
                [quantized],
                name=f"{node.name}_q",
                axis=axis,
            )
        )
        full = (lo, hi) == ((-128, 127) if signed else (0, 255))
        if not full:
            clipped = f"{node.output[0]}.clip"
            bounds = [f"{node.output[0]}.min", f"{node.output[0]}.max"]
            graph.initializer.extend(
                [
                    numpy_helper.from_array(np.array(lo, qtype), bounds[0]),
                    numpy_helper.from_array(np.array(hi, qtype), bounds[1]),
                ]
            )
            new_nodes.append(
                helper.make_node("Clip", [quantized, *bounds], [clipped], name=f"{node.name}_clip")
            )
            quantized = clipped
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [quantized, scale_name, zero_name],
                [node.output[0]],
                name=f"{node.name}_dq",
                axis=axis,
            )
        )
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused_initializers(graph)
    for opset in out.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 13)
    kept = [op for op in out.opset_import if op.domain not in QONNX_DOMAINS]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    return out


def _scale_axis(scale: np.ndarray, where: str) -> tuple[np.ndarray, int]:
    """Returns (scale as scalar or 1-D, axis) for QuantizeLinear/DequantizeLinear."""
    if scale.size == 1:
        return scale.reshape(()), 1
    squeezed = [dim for dim in scale.shape if dim != 1]
    if len(squeezed) != 1:
        raise ModelFileError(
            f"{where}: scale of shape {scale.shape} is not per-tensor or per-channel"
        )
    return scale.reshape(-1), int(np.argmax(np.array(scale.shape) != 1))


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
