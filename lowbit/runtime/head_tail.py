"""The classifier head as one step for runs that keep no intermediates: same logits, one call.

Pattern (the head of docs/int_graph.md, written by export/lower.py), every inner tensor read
only inside the pattern and not a graph output:

    f = Cast(F → int64)     d = MatMul(f, W)     d' = Cast(d → float64)
    cosine:  logits = Mul(Div(d', Max(Sqrt(Cast(ReduceSum(Mul(f, f), axes=[1]) → float64)), c)), T)
    linear:  logits = Mul(d', T)

with W an integer matrix, c a float64 scalar and T a float64 vector, all initializers.
`HeadTail` returns the logits bit for bit, because
- d is exact: the GEMM runs in the load-time plan's dtype (gemm.py), which holds every partial
  sum for inputs inside the plan's range (checked on each call unless proven, as plan.py's GEMMs
  do; outside it the dtype comes from the data);
- Σ f² is an int64 sum, the same integer in any order (int64 wraps modulo 2^64 either way);
- the float64 ops are the same numpy functions as ops.py's (astype, sqrt, maximum, divide,
  multiply, each correctly rounded per element) on the same operands in the same order.
  Like the MatMul step, the GEMM result passes through int64 before the float64 cast.
At batch 1 the ten steps of the unfused head cost about as much as a small convolution; a test
holds the fused and the unfused logits equal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx

from lowbit.runtime.gemm import accumulator_bound, data_range, exact_gemm_dtype
from lowbit.runtime.graph import Graph

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadFusion:
    """The head's nodes (graph order) replaced by one `HeadTail` step."""

    nodes: tuple[onnx.NodeProto, ...]
    features: str  # F, the integer tensor the head reads
    matmul: onnx.NodeProto  # its plan holds the GEMM dtype
    output: str  # the logits
    factor: str  # T
    floor: str | None  # c; None for the linear head


class HeadTail:
    """The step `F ↦ logits` of a `HeadFusion`."""

    def __init__(
        self, graph: Graph, fusion: HeadFusion, plan: dict, input_proven: bool = False
    ) -> None:
        weights = graph.initializers[fusion.matmul.input[1]]
        self._weights_int = weights
        self._gemm_dtype = np.dtype(plan["gemm_dtype"])
        self._weights = np.ascontiguousarray(weights.astype(self._gemm_dtype))
        self._low, self._high = plan["input_range"]
        trusts_annotation = plan["input_range_source"].startswith("finn_datatype")
        self._check_range = trusts_annotation and not input_proven
        self._where = graph.where(fusion.matmul)
        self._factor = graph.initializers[fusion.factor]
        self._floor = None if fusion.floor is None else graph.initializers[fusion.floor]

    def __call__(self, features: np.ndarray) -> np.ndarray:
        f = features.astype(np.int64)
        dtype, weights = self._gemm_dtype, self._weights
        if self._check_range and (f.min() < self._low or f.max() > self._high):
            logger.warning(
                "%s: input outside [%d, %d]; GEMM dtype from the data",
                self._where,
                self._low,
                self._high,
            )
            bound = accumulator_bound(self._weights_int.T, *data_range(f))
            dtype = np.dtype(exact_gemm_dtype(bound))
            weights = self._weights_int.astype(dtype)
        # exact integers in the GEMM dtype; through int64 like the MatMul step's d (a float
        # GEMM's -0.0, should BLAS ever return one, becomes Cast(d → float64)'s +0.0)
        dots = np.matmul(f.astype(dtype), weights).astype(np.int64).astype(np.float64)
        if self._floor is None:
            return np.multiply(dots, self._factor)
        squares = np.sum(np.multiply(f, f), axis=1, keepdims=True, dtype=np.int64)  # axes [1]
        norm = np.sqrt(squares.astype(np.float64))
        np.maximum(norm, self._floor, out=norm)
        cosines = np.divide(dots, norm)
        return np.multiply(cosines, self._factor, out=cosines)


def head_fusion(graph: Graph) -> HeadFusion | None:
    """The head of the pattern above, when its conditions hold."""
    producer = {node.output[0]: node for node in graph.nodes}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.nodes:
        for name in set(node.input):
            readers.setdefault(name, []).append(node)
    if len(graph.output_names) != 1:
        return None
    output = graph.output_names[0]
    final = producer.get(output)
    if final is None or final.op_type != "Mul" or not _float64_constant(graph, final.input[1], 1):
        return None
    nodes = [final]
    source = producer.get(final.input[0])
    square = floor = None
    if source is not None and source.op_type == "Div":  # the cosine head
        cast_dots = producer.get(source.input[0])
        maximum = producer.get(source.input[1])
        if maximum is None or maximum.op_type != "Max" or len(maximum.input) != 2:
            return None
        root = producer.get(maximum.input[0])
        cast_sq = producer.get(root.input[0]) if root is not None else None
        reduce = producer.get(cast_sq.input[0]) if cast_sq is not None else None
        square = producer.get(reduce.input[0]) if reduce is not None else None
        if (
            root is None
            or root.op_type != "Sqrt"
            or not _float64_constant(graph, maximum.input[1], 0)
            or not _is_cast(graph, cast_sq, np.int64, np.float64)
            or reduce.op_type != "ReduceSum"
            or len(reduce.input) < 2
            or reduce.input[1] not in graph.initializers
            or graph.initializers[reduce.input[1]].reshape(-1).tolist() != [1]
            or graph.attributes[reduce.output[0]].get("keepdims", 1) != 1
            or square is None
            or square.op_type != "Mul"
            or square.input[0] != square.input[1]
        ):
            return None
        nodes += [source, maximum, root, cast_sq, reduce, square]
        floor = maximum.input[1]
    else:
        cast_dots = source
    if not _is_cast(graph, cast_dots, np.int64, np.float64):
        return None
    matmul = producer.get(cast_dots.input[0])
    if (
        matmul is None
        or matmul.op_type != "MatMul"
        or matmul.input[1] not in graph.initializers
        or graph.initializers[matmul.input[1]].ndim != 2
        or graph.initializers[matmul.input[1]].dtype.kind not in "iu"
        or (square is not None and square.input[0] != matmul.input[0])
    ):
        return None
    cast_f = producer.get(matmul.input[0])
    if not _is_cast(graph, cast_f, None, np.int64):
        return None
    nodes += [cast_dots, matmul, cast_f]
    inner = {node.output[0] for node in nodes} - {output}
    members = {id(node) for node in nodes}
    for name in inner:
        if name in graph.output_names or any(id(r) not in members for r in readers.get(name, [])):
            return None
    order = {id(node): i for i, node in enumerate(graph.nodes)}
    nodes.sort(key=lambda node: order[id(node)])
    return HeadFusion(tuple(nodes), cast_f.input[0], matmul, output, final.input[1], floor)


def _is_cast(graph: Graph, node: onnx.NodeProto | None, source: type | None, target: type) -> bool:
    """Whether `node` is a Cast from an integer tensor (of dtype `source`, if given) to `target`."""
    if node is None or node.op_type != "Cast":
        return False
    dtype = graph.dtypes[node.input[0]]
    if dtype.kind not in "iu" or (source is not None and dtype != np.dtype(source)):
        return False
    return graph.dtypes[node.output[0]] == np.dtype(target)


def _float64_constant(graph: Graph, name: str, ndim: int) -> bool:
    value = graph.initializers.get(name)
    return value is not None and value.dtype == np.float64 and value.ndim == ndim
