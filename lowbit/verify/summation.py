"""Per-element bounds on the float model's summation error (float-scale models only).

model.json records per conv layer and channel `float_error_per_unit`: Higham's bound in output
steps per unit of sum|x_code * w_code| (lowbit/export/float_error.py). Here that sum is taken
at each mismatching element from the integer runtime's own input codes, so a mismatch counts as
explained only within the rounding that element's float sum can really have, not the layer's
worst case. With power-of-two scales every unit is 0 and nothing is computed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from lowbit.verify.boundary import ints_attribute, threshold_layers

Bound = Callable[[np.ndarray], np.ndarray]


def conv_sources(
    graph: onnx.ModelProto, layers: list[dict]
) -> dict[str, tuple[str, np.ndarray, int, int, np.ndarray]]:
    """Returns code tensor -> (conv input, |weight codes|, pad, stride, per-channel units).

    Only layers with a non-zero `float_error_per_unit` (model.json) are listed: with
    power-of-two scales the map is empty and `element_bounds` does nothing.
    """
    units = {
        layer["name"]: np.asarray(layer.get("float_error_per_unit") or [0.0], dtype=np.float64)
        for layer in layers
    }
    inits = {init.name: init for init in graph.graph.initializer}
    producers = {node.output[0]: node for node in graph.graph.node}
    sources = {}
    for code, acc, _ in threshold_layers(graph):
        node = producers.get(acc)
        if node is None or node.op_type != "ConvInteger" or node.input[1] not in inits:
            continue
        if code not in units or not units[code].any():
            continue
        weights = np.abs(numpy_helper.to_array(inits[node.input[1]]).astype(np.int64))
        pad = ints_attribute(node, "pads", [0])[0]
        stride = ints_attribute(node, "strides", [1])[0]
        sources[code] = (node.input[0], weights, pad, stride, units[code])
    return sources


def element_bounds(sources: dict, tensors: dict[str, np.ndarray]) -> dict[str, Bound]:
    """Returns code tensor -> bound(index [K, 4]) in output steps, for this batch's tensors.

    A bound reads its mismatching elements' receptive fields only when called (a mismatch).
    """
    bounds = {}
    for name, (source, weights, pad, stride, units) in sources.items():
        if source not in tensors:
            continue

        def bound(
            index: np.ndarray,
            codes=tensors[source],
            weights=weights,
            pad=pad,
            stride=stride,
            units=units,
        ) -> np.ndarray:
            size = weights.shape[2]
            padded = np.pad(
                np.abs(codes.astype(np.int64)), ((0, 0), (0, 0), (pad,) * 2, (pad,) * 2)
            )
            sums = np.array(
                [
                    (
                        padded[n, :, y * stride : y * stride + size, x * stride : x * stride + size]
                        * weights[c]
                    ).sum()
                    for n, c, y, x in index
                ],
                dtype=np.float64,
            )
            return sums * units[index[:, 1]]

        bounds[name] = bound
    return bounds


def linear_head(graph: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray] | None:
    """Returns (|class weight codes| [F, K], tail factor [K]) of a linear head, else None."""
    inits = {init.name: init for init in graph.graph.initializer}
    names = ("head.weight_codes", "head.tail_factor")
    if any(name not in inits for name in names):
        return None
    if any(node.op_type == "Sqrt" for node in graph.graph.node):  # the cosine head
        return None
    weights = np.abs(numpy_helper.to_array(inits[names[0]]).astype(np.float64))
    return weights, numpy_helper.to_array(inits[names[1]]).astype(np.float64)


def linear_tail_tolerance(
    head: tuple[np.ndarray, np.ndarray] | None, tensors: dict[str, np.ndarray], base: float
) -> np.ndarray | None:
    """Returns per sample and class the linear head's stated tolerance, or None (no such head).

    torch computes logit_c = sum_i f_i * w_ci in float32: |error| <= gamma_(F+1) * sum|f_i w_ci|
    (Higham), and sum|f_i w_ci| = tail_factor_c * (|f_code| @ |w_code|)_c, both exact from the
    integer graph; one more rounding of the float32 result adds 2^-24 * |logit|. With
    power-of-two scales torch's sums are exact and the bound is only looser than needed.
    """
    if head is None or "head.features" not in tensors:
        return None
    weights, factor = head
    features = np.abs(tensors["head.features"].astype(np.float64))
    n_u = (weights.shape[0] + 1) * 2.0**-24
    magnitude = (features @ weights) * factor
    return 2.0 * n_u / (1.0 - n_u) * magnitude + 2.0**-23 * magnitude + base
