"""Load-time plan of each step: the exact GEMM dtype of every ConvInteger/MatMul (gemm.py).

The bound (gemm.accumulator_bound, at most max|x| · max_c Σ|w_c|) takes the input's code range
from its qonnx `finn_datatype` annotation where that narrows the dtype (UINT2: [0, 3]), else
from the dtype (int8: [-128, 127]), also looking upstream through ops that pass values on
unchanged. An annotation is trusted for the plan and checked on every run: codes outside it
switch that run to the dtype the data proves exact, with a warning, so a wrong annotation
never costs exactness.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from lowbit.runtime.gemm import (
    accumulator_bound,
    conv_weight_matrix,
    exact_gemm_dtype,
    matmul_weight_matrix,
)
from lowbit.runtime.graph import Graph, finn_datatype_range
from lowbit.runtime.ops import OPS

logger = logging.getLogger(__name__)

GEMM_OPS = ("ConvInteger", "MatMul")


def is_gemm(node: onnx.NodeProto) -> bool:
    """Whether the node is an integer GEMM the plan covers."""
    return node.op_type in GEMM_OPS


def input_range(graph: Graph, name: str) -> tuple[int, int, str]:
    """[low, high] of an integer tensor and where it comes from.

    Each tensor's range is its dtype's, narrowed by its finn_datatype annotation; values that
    reach `name` unchanged through Flatten, Reshape, MaxPool (pads < kernel) or a widening
    integer Cast also lie in their source's range, so the narrowest range along the chain holds.
    """
    producers = {node.output[0]: node for node in graph.nodes}
    low, high, source = -(2**64), 2**64, ""
    tensor = name
    while True:
        info = np.iinfo(graph.dtypes[tensor])
        candidates = [(int(info.min), int(info.max), f"dtype {info.dtype} of '{tensor}'")]
        datatype = graph.finn_datatypes.get(tensor, "")
        annotated = finn_datatype_range(datatype)
        if annotated is not None:
            candidates.append((*annotated, f"finn_datatype {datatype} of '{tensor}'"))
        for candidate_low, candidate_high, candidate_source in candidates:
            if candidate_high - candidate_low < high - low:
                low, high, source = candidate_low, candidate_high, candidate_source
        node = producers.get(tensor)
        if node is None or not _passes_values(graph, node):
            return low, high, source
        tensor = node.input[0]


def _passes_values(graph: Graph, node: onnx.NodeProto) -> bool:
    """Whether every output value of the node is one of its input's values."""
    if node.op_type in ("Flatten", "Reshape"):
        return True
    if node.op_type == "MaxPool":
        attributes = graph.attributes[node.output[0]]
        kernel = attributes["kernel_shape"]
        return all(p < k for p, k in zip(attributes.get("pads", []), [*kernel, *kernel]))
    if node.op_type == "Cast":
        source, target = graph.dtypes[node.input[0]], graph.dtypes[node.output[0]]
        return source.kind in "iu" and target.kind in "iu" and np.can_cast(source, target)
    return False


def plan_gemm(graph: Graph, node: onnx.NodeProto) -> dict[str, Any]:
    """The exact GEMM dtype of one ConvInteger/MatMul node and the bound that proves it."""
    x_name, w_name = node.input[0], node.input[1]
    entry: dict[str, Any] = {
        "name": node.name or node.output[0],
        "op_type": node.op_type,
        "output": node.output[0],
        "input": x_name,
        "input_range": None,
        "input_range_source": "float",
        "accumulator_bound": None,
        "accumulator_bits": None,
        "gemm_dtype": graph.dtypes[x_name].name,
        "declared_accumulator_bound": declared_bound(node),
    }
    if graph.dtypes[x_name].kind == "f":
        return entry
    low, high, source = input_range(graph, x_name)
    entry.update(input_range=[low, high], input_range_source=source)
    weights = graph.initializers.get(w_name)
    bound = None
    if node.op_type == "ConvInteger":
        optional = [*node.input[2:4], "", ""][:2]
        zero_points = [graph.initializers[n] if n else None for n in optional]
        x_zero = 0 if zero_points[0] is None else int(zero_points[0].reshape(-1)[0])
        matrix = conv_weight_matrix(weights, zero_points[1])
        bound = accumulator_bound(matrix, low - x_zero, high - x_zero)
    elif weights is not None:
        bound = accumulator_bound(matmul_weight_matrix(weights), low, high)
    entry.update(
        accumulator_bound=bound,
        accumulator_bits=None if bound is None else bound.bit_length() + 1,
        gemm_dtype=exact_gemm_dtype(bound, pairs=node.op_type == "ConvInteger"),
    )
    return entry


def declared_bound(node: onnx.NodeProto) -> int | None:
    """The exporter's accumulator bound from the node's doc_string JSON, if any."""
    try:
        return int(json.loads(node.doc_string)["accumulator_bound"])
    except (ValueError, KeyError, TypeError):
        return None


def bind(graph: Graph, node: onnx.NodeProto, plan: dict | None) -> Callable[..., np.ndarray]:
    """The step function: the op with its attributes (and planned GEMM dtype) bound."""
    op = functools.partial(OPS[node.op_type], **graph.attributes[node.output[0]])
    if plan is None or plan["input_range"] is None:
        return op
    low, high = plan["input_range"]
    gemm_dtype = plan["gemm_dtype"]
    trusts_annotation = plan["input_range_source"].startswith("finn_datatype")
    where = graph.where(node)

    def run_gemm(x: np.ndarray, *rest: np.ndarray | None) -> np.ndarray:
        dtype: str | None = gemm_dtype
        # an annotation is a promise, not a guarantee: outside it, derive the dtype from the data
        if trusts_annotation and (x.min() < low or x.max() > high):
            logger.warning("%s: input outside [%d, %d]; GEMM dtype from the data", where, low, high)
            dtype = None
        return op(x, *rest, gemm_dtype=dtype)

    return run_gemm
