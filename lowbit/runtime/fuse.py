"""Fused requantization for runs that keep no intermediates: same outputs, far fewer passes.

Pattern (the requantization of docs/int_graph.md), every inner tensor read by the next node only
and not a graph output:

    [Cast int → float] → MultiThreshold → Cast float → int [→ MaxPool]

Invariant: the fused step returns the last node's output bit for bit, because
- the int → float Cast is exact (the float type holds every value of the int type), and for an
  integer x, `float(x) ≥ t` is `x ≥ t` — `threshold_counts` compares the integers directly;
- out_scale is 1 and out_bias an integer with out_bias + [0, T] inside the target int type, so
  MultiThreshold's float result is an exact integer the final Cast keeps: counts + out_bias;
- x ↦ count(x) + out_bias is non-decreasing, and a max commutes with a non-decreasing map, so
  the MaxPool can run first, on the integers, and the thresholds see 1/(k·k) as many values.
  The padding (the dtype's minimum) never wins as long as every window holds a real element,
  which pads < kernel guarantees (checked).
The unfused ops stay the reference: `keep_intermediates` runs them, and a test holds both equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from lowbit.runtime.graph import Graph
from lowbit.runtime.ops import max_pool
from lowbit.runtime.threshold import channel_axis, threshold_counts


def requantize(
    x: np.ndarray,
    thresholds: np.ndarray,
    *,
    data_layout: str,
    out_bias: int,
    dtype: np.dtype,
    pool: dict[str, Any] | None = None,
) -> np.ndarray:
    """Integer codes `count(x ≥ thresholds) + out_bias` as `dtype`, max-pooled first if `pool`."""
    if pool is not None:
        x = max_pool(x, **pool)
    axis = channel_axis(data_layout, x.ndim)
    codes = threshold_counts(x, thresholds, axis).astype(dtype, copy=False)
    if out_bias:
        codes += dtype.type(out_bias)
    return codes


@dataclass(frozen=True)
class Fusion:
    """A run of nodes replaced by one `requantize` call."""

    nodes: tuple[onnx.NodeProto, ...]
    inputs: tuple[str, str]  # the integer tensor and the thresholds
    keywords: dict[str, Any]  # requantize's keyword arguments


def requantization_fusions(graph: Graph) -> list[Fusion]:
    """Every requantization of the pattern above whose conditions hold, in graph order."""
    producer = {node.output[0]: node for node in graph.nodes}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.nodes:
        for name in set(node.input):
            consumers.setdefault(name, []).append(node)

    def sole_consumer(name: str) -> onnx.NodeProto | None:
        readers = consumers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in graph.output_names else None

    fusions = []
    for node in graph.nodes:
        if node.op_type != "MultiThreshold":
            continue
        attributes = graph.attributes[node.output[0]]
        out_bias = attributes.get("out_bias", 0.0)
        thresholds = graph.initializers[node.input[1]]
        source, nodes = node.input[0], [node]
        first = producer.get(source)
        if graph.dtypes[source].kind == "f" and first is not None and first.op_type == "Cast":
            if sole_consumer(source) is not node or not _exact(
                graph.dtypes[first.input[0]], graph.dtypes[source]
            ):
                continue
            source, nodes = first.input[0], [first, node]
        cast = sole_consumer(node.output[0])
        if cast is None or cast.op_type != "Cast" or graph.dtypes[source].kind not in "iu":
            continue
        dtype = graph.dtypes[cast.output[0]]
        if (
            dtype.kind not in "iu"
            or attributes.get("out_scale", 1.0) != 1.0
            or out_bias != int(out_bias)
            or not np.iinfo(dtype).min <= out_bias
            or out_bias + thresholds.shape[1] > np.iinfo(dtype).max
        ):
            continue
        nodes.append(cast)
        data_layout = attributes.get("data_layout", "")
        keywords: dict[str, Any] = {
            "data_layout": data_layout,
            "out_bias": int(out_bias),
            "dtype": dtype,
        }
        pool = sole_consumer(cast.output[0])
        if pool is not None and pool.op_type == "MaxPool":
            pool_attributes = graph.attributes[pool.output[0]]
            kernel = pool_attributes["kernel_shape"]
            pads = pool_attributes.get("pads", [0] * 2 * len(kernel))
            pads_ok = all(p < k for p, k in zip(pads, [*kernel, *kernel]))
            # MaxPool's input is [N, C, spatial...]: the channels must not be a pooled axis
            if pads_ok and channel_axis(data_layout, 2 + len(kernel)) == 1:
                nodes.append(pool)
                keywords["pool"] = pool_attributes
        fusions.append(Fusion(tuple(nodes), (source, node.input[1]), keywords))
    return fusions


def _exact(int_dtype: np.dtype, float_dtype: np.dtype) -> bool:
    """Whether float_dtype holds every value of int_dtype."""
    if int_dtype.kind not in "iu" or float_dtype.kind != "f":
        return False
    value_bits = int_dtype.itemsize * 8 - (int_dtype.kind == "i")
    return value_bits <= np.finfo(float_dtype).nmant + 1
