"""The stage-1 detector on the witness graphs: QCDQ and QONNX cut at the layer, a float tail.

Pattern: `layer` is a code tensor of the integer graph, or one reached from a code tensor
through MaxPool nodes (`backbone.blocks.1.pool`). The QCDQ and QONNX graphs name the code
tensor alike (the output of its DequantizeLinear / Quant, lowbit/export/qcdq.py), and their
MaxPool nodes follow it in the same order. The codes are read as each graph represents them:
- QCDQ: the QuantizeLinear (+ Clip) output codes, the DequantizeLinear's input; after a
  MaxPool of dequantized values, a QuantizeLinear with the same scale and zero point gives them
  back (the pooled value is one of the s·q, so (s·q)/s rounds to q);
- QONNX: Round(Quant output / scale).
The tail is `integer_tail`'s computation in float32 ops (Conv, Mul, ReduceSum, Sub, ReduceMax).
Invariant: exact, because every value it forms — the k x k sums, each partial sum of a·b and
‖a‖², 2a·b − ‖b‖², the distances — is an integer of magnitude at most 4·C·m² (m the largest
|aggregated code|; memory_bank.distance_bound), and the builder refuses a bank unless that
bound is below 2^24, where float32 holds every integer. The outputs are float32 integers.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lowbit.detect.aggregate import aggregate_pads
from lowbit.detect.graph import (
    ANOMALY_MAP,
    IMAGE_SCORE,
    aggregation_kernel,
    check_bank,
    reduce_max,
)
from lowbit.detect.memory_bank import distance_bound
from lowbit.detect.trunk import cut_trunk, trunk_code_range
from lowbit.errors import ModelFileError
from lowbit.runtime.gemm import FLOAT32_EXACT_LIMIT

LAYER_CODES = "detector.codes"  # the float32 codes at the layer, an output of both graphs


def pooling_chain(int_graph: onnx.ModelProto, layer: str) -> tuple[str, int]:
    """Return (code tensor, number of MaxPools between it and `layer`) in the integer graph."""
    producers = {node.output[0]: node for node in int_graph.graph.node}
    source, pools = layer, 0
    while source in producers and producers[source].op_type == "MaxPool":
        source, pools = producers[source].input[0], pools + 1
    return source, pools


def _follow_pools(model: onnx.ModelProto, source: str, pools: int) -> str:
    """Return the tensor `pools` MaxPool nodes after `source` in a witness graph."""
    current = source
    for _ in range(pools):
        readers = [n for n in model.graph.node if n.op_type == "MaxPool" and n.input[0] == current]
        if len(readers) != 1:
            raise ModelFileError(f"witness graph: no single MaxPool reads '{current}'")
        current = readers[0].output[0]
    return current


def _cut(model: onnx.ModelProto, outputs: list[str], height: int, width: int) -> onnx.GraphProto:
    """Return the graph computing `outputs` only, for N x C x height x width inputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    needed, nodes = set(outputs), []
    for node in reversed(graph.node):
        if node.output[0] in needed:
            nodes.append(node)
            needed.update(name for name in node.input if name)
    graph_input = graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    dims[0].dim_param = "N"
    dims[2].dim_value, dims[3].dim_value = height, width
    initializers = [t for t in graph.initializer if t.name in needed]
    return helper.make_graph(nodes[::-1], f"{graph.name}_stage1", [graph_input], [], initializers)


def float_tail(
    codes: str, channels: int, value_range: tuple[int, int], bank: np.ndarray, k: int, opset: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Return the float32 nodes and initializers of the tail, reading float32 codes `codes`."""
    bound = distance_bound(value_range, channels)
    if bound >= FLOAT32_EXACT_LIMIT:
        raise ModelFileError(f"distance bound {bound} >= 2^24: float32 would round")
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    nodes, sums = [], codes
    if k > 1:
        before, after = aggregate_pads(k)
        kernel = const("detector.aggregation_kernel", aggregation_kernel(channels, k))
        sums = "detector.sums"
        nodes.append(
            helper.make_node(
                "Conv",
                [codes, kernel],
                [sums],
                kernel_shape=[k, k],
                pads=[before, before, after, after],
            )
        )
    entries = len(bank)
    norms = np.einsum("ij,ij->i", bank.astype(np.int64), bank.astype(np.int64))
    axes = "detector.channel_axis"
    inits.append(numpy_helper.from_array(np.array([1], np.int64), axes))
    nodes += [
        helper.make_node("Mul", [sums, sums], ["detector.square_terms"]),
        helper.make_node(
            "ReduceSum", ["detector.square_terms", axes], ["detector.norm"], keepdims=0
        ),
        helper.make_node(
            "Conv",
            [sums, const("detector.bank", bank.reshape(entries, channels, 1, 1))],
            ["detector.dot"],
            kernel_shape=[1, 1],
        ),
        helper.make_node(
            "Mul", ["detector.dot", const("detector.two", np.array(2))], ["detector.twice_dot"]
        ),
        helper.make_node(
            "Sub",
            ["detector.twice_dot", const("detector.bank_norm", norms.reshape(1, entries, 1, 1))],
            ["detector.closeness"],
        ),
        reduce_max("detector.closeness", "detector.nearest", [1], opset, inits),
        helper.make_node("Sub", ["detector.norm", "detector.nearest"], [ANOMALY_MAP]),
        reduce_max(ANOMALY_MAP, IMAGE_SCORE, [1, 2], opset, inits),
    ]
    return nodes, inits


def witness_detector(
    witness: onnx.ModelProto,
    int_graph: onnx.ModelProto,
    layer: str,
    aggregate: int,
    bank: np.ndarray,
    height: int,
    width: int,
    expose: tuple[str, ...] = (),
) -> onnx.ModelProto:
    """Return the QCDQ or QONNX classifier `witness` cut at `layer` with the float tail.

    Outputs: `anomaly_map` [N, H', W'] and `image_score` [N] (float32 integers), `detector.codes`
    (the layer's codes, float32), then the witness tensors named in `expose` (dequantized).
    """
    bank = np.asarray(bank)
    code_range = trunk_code_range(cut_trunk(int_graph, [layer], height, width), layer)
    value_range = check_bank(bank, code_range, aggregate)
    source, pools = pooling_chain(int_graph, layer)
    producers = {node.output[0]: node for node in witness.graph.node}
    quantizer = producers.get(source)
    if quantizer is None or quantizer.op_type not in ("DequantizeLinear", "Quant"):
        raise ModelFileError(f"witness graph: '{source}' is not a DequantizeLinear/Quant output")
    current = _follow_pools(witness, source, pools)
    graph = _cut(witness, [current, *expose], height, width)
    scale, zero_point = quantizer.input[1], quantizer.input[2]
    if quantizer.op_type == "DequantizeLinear":  # QCDQ: the quantized codes themselves
        integers = quantizer.input[0]
        if pools:
            integers = "detector.codes_q"
            graph.node.append(
                helper.make_node("QuantizeLinear", [current, scale, zero_point], [integers])
            )
        graph.node.append(helper.make_node("Cast", [integers], [LAYER_CODES], to=TensorProto.FLOAT))
    else:  # QONNX: Quant output / scale
        zero = [t for t in witness.graph.initializer if t.name == zero_point]
        if not zero or numpy_helper.to_array(zero[0]).any():
            raise ModelFileError(f"witness graph: '{source}' needs a zero zero point")
        graph.node.append(helper.make_node("Div", [current, scale], ["detector.scaled"]))
        graph.node.append(helper.make_node("Round", ["detector.scaled"], [LAYER_CODES]))
    existing = {t.name for t in graph.initializer}
    graph.initializer.extend(
        t
        for t in witness.graph.initializer
        if t.name in (scale, zero_point) and t.name not in existing
    )
    opset = next(o.version for o in witness.opset_import if o.domain in ("", "ai.onnx"))
    nodes, inits = float_tail(LAYER_CODES, bank.shape[1], value_range, bank, aggregate, opset)
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    float_output = TensorProto.FLOAT
    graph.output.extend(
        [
            helper.make_tensor_value_info(ANOMALY_MAP, float_output, ["N", None, None]),
            helper.make_tensor_value_info(IMAGE_SCORE, float_output, ["N"]),
            helper.make_tensor_value_info(LAYER_CODES, float_output, ["N", None, None, None]),
            *(
                helper.make_tensor_value_info(n, float_output, ["N", None, None, None])
                for n in expose
            ),
        ]
    )
    model = helper.make_model(graph, opset_imports=witness.opset_import)
    model.ir_version = witness.ir_version
    return model
