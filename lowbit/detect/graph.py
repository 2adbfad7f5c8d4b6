"""Stage 1 as one integer graph: the cut trunk, then PatchCore's aggregation and nearest distance.

    codes (trunk tensor `layer`, 8-bit) -> k x k box sum (ConvInteger, ones on the channel
    diagonal) -> a -> ||a||² (Mul, ReduceSum) and a.b (ConvInteger 1x1, the bank as weights)
    -> 2 a.b - ||b||² (Mul, Sub) -> max over the bank (ReduceMax) -> anomaly_map =
    ||a||² - max (Sub) -> image_score = max over the map (ReduceMax)

Invariant: every tensor after the trunk is an integer of magnitude at most 4 C m² (m the largest
|aggregated code|, lowbit/detect/memory_bank.py), and the builder refuses a bank for which that
does not fit int32; the outputs equal `memory_bank.anomaly_map` / `image_scores` on
`aggregate.aggregate` of the trunk's codes, bit for bit. The box sum is a dense ConvInteger
(group 1, a C x C x k x k kernel with ones where output channel = input channel) because the
integer graph's ConvInteger has group 1 (docs/int_graph.md); the C-fold work is small next to
the bank's GEMM. The aggregated codes go into the bank GEMM as 8-bit ConvInteger input, so
k² · (code range) must fit 8 bits (2-bit codes: k <= 9).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lowbit.detect.aggregate import aggregate_pads, aggregated_range
from lowbit.detect.memory_bank import distance_bound
from lowbit.detect.trunk import cut_trunk, trunk_code_range
from lowbit.errors import ModelFileError
from lowbit.runtime.gemm import accumulator_bound, conv_weight_matrix

ANOMALY_MAP = "anomaly_map"
IMAGE_SCORE = "image_score"
CODES_INPUT = "codes"
INT32_LIMIT = 2**31 - 1


def aggregation_kernel(channels: int, k: int, dtype: type = np.int8) -> np.ndarray:
    """Return the [C, C, k, k] kernel that sums each channel over k x k: ones on the diagonal."""
    kernel = np.zeros((channels, channels, k, k), dtype=dtype)
    kernel[np.arange(channels), np.arange(channels)] = 1
    return kernel


def code_dtype(value_range: tuple[int, int]) -> type | None:
    """Return uint8 or int8 if `value_range` fits it (ConvInteger's input types), else None."""
    low, high = value_range
    for dtype in (np.uint8, np.int8):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    return None


def datatype_name(value_range: tuple[int, int]) -> str:
    """Return the narrowest qonnx DataType name (UINTb / INTb) holding `value_range`."""
    low, high = value_range
    if low >= 0:
        return f"UINT{max(1, int(high).bit_length())}"
    bits = max(int(high).bit_length(), int(-low - 1).bit_length()) + 1
    return f"INT{bits}"


def check_bank(bank: np.ndarray, code_range: tuple[int, int], k: int) -> tuple[int, int]:
    """Return the aggregated code range after checking `bank` [M, C] against it and int32."""
    bank = np.asarray(bank)
    if bank.ndim != 2 or len(bank) == 0 or bank.dtype.kind not in "iu":
        raise ModelFileError(f"memory bank must be integer codes [M >= 1, C], got {bank.shape}")
    value_range = aggregated_range(code_range, k)
    if bank.min() < value_range[0] or bank.max() > value_range[1]:
        raise ModelFileError(
            f"memory bank codes span [{bank.min()}, {bank.max()}], outside {value_range}, the "
            f"range of {k}x{k} sums of codes in {code_range}: fit it with the same layer and k"
        )
    if code_dtype(value_range) is None:
        raise ModelFileError(
            f"{k}x{k} sums of codes in {code_range} span {value_range}, beyond 8 bits"
            " (ConvInteger's input): choose a smaller aggregation"
        )
    bound = distance_bound(value_range, bank.shape[1])
    if bound > INT32_LIMIT:
        raise ModelFileError(f"distance bound {bound} exceeds int32: too many channels or k")
    return value_range


def integer_tail(
    codes: str, code_range: tuple[int, int], bank: np.ndarray, k: int, reduce_opset: int = 17
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], dict[str, str]]:
    """Return (nodes, initializers, finn_datatypes) of the integer tail reading tensor `codes`."""
    value_range = check_bank(bank, code_range, k)
    entries, channels = bank.shape
    agg_dtype = code_dtype(value_range)
    to_agg = helper.np_dtype_to_tensor_dtype(np.dtype(agg_dtype))
    nodes, inits = [], []
    datatypes = {}

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    if k == 1:
        aggregated = codes
        nodes.append(helper.make_node("Cast", [codes], ["detector.sums"], to=TensorProto.INT32))
    else:
        kernel = aggregation_kernel(channels, k)
        before, after = aggregate_pads(k)
        bound = accumulator_bound(conv_weight_matrix(kernel, None), *code_range)
        nodes.append(
            helper.make_node(
                "ConvInteger",
                [codes, const("detector.aggregation_kernel", kernel)],
                ["detector.sums"],
                kernel_shape=[k, k],
                pads=[before, before, after, after],
                doc_string=_bound_doc(bound),
            )
        )
        aggregated = "detector.aggregated"
        nodes.append(helper.make_node("Cast", ["detector.sums"], [aggregated], to=to_agg))
        datatypes[aggregated] = datatype_name(value_range)
    datatypes["detector.sums"] = "INT32"
    weights = bank.astype(agg_dtype).reshape(entries, channels, 1, 1)
    bank_norms = np.einsum("ij,ij->i", bank.astype(np.int64), bank.astype(np.int64))
    dot_bound = accumulator_bound(conv_weight_matrix(weights, None), *value_range)
    nodes += [
        helper.make_node("Mul", ["detector.sums", "detector.sums"], ["detector.square_terms"]),
        helper.make_node(
            "ReduceSum",
            ["detector.square_terms", const("detector.channel_axis", np.array([1], np.int64))],
            ["detector.norm"],
            keepdims=0,
        ),
        helper.make_node(
            "ConvInteger",
            [aggregated, const("detector.bank", weights)],
            ["detector.dot"],
            kernel_shape=[1, 1],
            doc_string=_bound_doc(dot_bound),
        ),
        helper.make_node(
            "Mul",
            ["detector.dot", const("detector.two", np.array(2, np.int32))],
            ["detector.twice_dot"],
        ),
        helper.make_node(
            "Sub",
            [
                "detector.twice_dot",
                const("detector.bank_norm", bank_norms.astype(np.int32).reshape(1, entries, 1, 1)),
            ],
            ["detector.closeness"],
        ),
        reduce_max("detector.closeness", "detector.nearest", [1], reduce_opset, inits),
        helper.make_node("Sub", ["detector.norm", "detector.nearest"], [ANOMALY_MAP]),
        reduce_max(ANOMALY_MAP, IMAGE_SCORE, [1, 2], reduce_opset, inits),
    ]
    for name in ("detector.square_terms", "detector.norm", "detector.dot", "detector.twice_dot"):
        datatypes[name] = "INT32"
    for name in ("detector.closeness", "detector.nearest", ANOMALY_MAP, IMAGE_SCORE):
        datatypes[name] = "INT32"
    return nodes, inits, datatypes


def reduce_max(
    source: str, output: str, axes: list[int], opset: int, inits: list[onnx.TensorProto]
) -> onnx.NodeProto:
    """ReduceMax over `axes` without kept dims: axes an attribute before opset 18, then an input."""
    if opset < 18:
        return helper.make_node("ReduceMax", [source], [output], axes=axes, keepdims=0)
    axes_name = f"{output}.axes"
    inits.append(numpy_helper.from_array(np.array(axes, np.int64), axes_name))
    return helper.make_node("ReduceMax", [source, axes_name], [output], keepdims=0)


def _bound_doc(bound: int) -> str:
    """The accumulator record every ConvInteger carries (docs/int_graph.md)."""
    return json.dumps({"accumulator_bound": bound, "accumulator_bits": bound.bit_length() + 1})


def detector_graph(
    int_graph: onnx.ModelProto,
    layer: str,
    aggregate: int,
    bank: np.ndarray,
    height: int,
    width: int,
    expose: tuple[str, ...] = (),
) -> onnx.ModelProto:
    """Return the stage-1 integer graph: `int_graph`'s trunk up to `layer`, then the tail above.

    Outputs: `anomaly_map` int32 [N, H', W'] and `image_score` int32 [N], then the trunk tensors
    named in `expose` (for verification), for height x width float32 input images.
    """
    trunk = cut_trunk(int_graph, list(dict.fromkeys([layer, *expose])), height, width)
    code_range = trunk_code_range(trunk, layer)
    opset = next(o.version for o in int_graph.opset_import if o.domain in ("", "ai.onnx"))
    nodes, inits, datatypes = integer_tail(layer, code_range, np.asarray(bank), aggregate, opset)
    graph = trunk.graph
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    exposed = [v for v in graph.output if v.name in expose]  # cut_trunk declared them
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(ANOMALY_MAP, TensorProto.INT32, ["N", None, None]),
            helper.make_tensor_value_info(IMAGE_SCORE, TensorProto.INT32, ["N"]),
            *exposed,
        ]
    )
    annotate(graph, datatypes)
    graph.name = f"{int_graph.graph.name}_stage1"
    record = stage1_record(layer, aggregate, bank, code_range)
    onnx.helper.set_model_props(trunk, {"lowbit_stage1": json.dumps(record)})
    return trunk


def stage1_record(
    layer: str, k: int, bank: np.ndarray, code_range: tuple[int, int]
) -> dict[str, object]:
    """Return the graph's `lowbit_stage1` metadata: where it reads and the bound it relies on."""
    value_range = aggregated_range(code_range, k)
    return {
        "layer": layer,
        "aggregate": k,
        "bank_entries": int(len(bank)),
        "channels": int(np.asarray(bank).shape[1]),
        "code_range": list(code_range),
        "aggregated_range": list(value_range),
        "distance_bound": distance_bound(value_range, np.asarray(bank).shape[1]),
    }


def annotate(graph: onnx.GraphProto, datatypes: dict[str, str]) -> None:
    """Add a qonnx `finn_datatype` annotation per tensor, as the integer graph carries."""
    for name, datatype in datatypes.items():
        annotation = onnx.TensorAnnotation(tensor_name=name)
        annotation.quant_parameter_tensor_names.add(key="finn_datatype", value=datatype)
        graph.quantization_annotation.append(annotation)


def detector_tail(
    code_range: tuple[int, int], bank: np.ndarray, aggregate: int, opset: int = 17
) -> onnx.ModelProto:
    """Return the tail alone as a graph of standard ops: input `codes` [N, C, H, W] (8-bit).

    onnxruntime runs it as it is (the trunk's MultiThreshold is not a standard op).
    """
    bank = np.asarray(bank)
    dtype = code_dtype(code_range)
    if dtype is None:
        raise ModelFileError(f"codes in {code_range} do not fit 8 bits")
    elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, inits, datatypes = integer_tail(CODES_INPUT, code_range, bank, aggregate, opset)
    graph = helper.make_graph(
        nodes,
        "stage1_tail",
        [helper.make_tensor_value_info(CODES_INPUT, elem_type, ["N", bank.shape[1], None, None])],
        [
            helper.make_tensor_value_info(ANOMALY_MAP, TensorProto.INT32, ["N", None, None]),
            helper.make_tensor_value_info(IMAGE_SCORE, TensorProto.INT32, ["N"]),
        ],
        inits,
    )
    annotate(graph, {CODES_INPUT: datatype_name(code_range), **datatypes})
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
