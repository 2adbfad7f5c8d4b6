"""Boundary inputs: images whose integer accumulators land exactly on a requantization threshold.

A `MultiThreshold` code steps up where its accumulator reaches a threshold t; the float model's
pre-rounding value is closest to a rounding boundary there (exactly on a tie when the layer's
BN and scale put one on an integer). Real and random images rarely put a *chosen* channel of a
deep layer on a chosen step, so `boundary_inputs` searches for them: per layer it picks a
channel, a position and the threshold nearest to that accumulator's current value, then
greedily changes input pixels near the position (integer input codes, so the input quantizer is
exact) until the accumulator equals the threshold. Every returned image has at least one
accumulator exactly on a threshold of the layer it was built for; the search is seeded.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from lowbit.core.integers import int_range, quantize

log = logging.getLogger(__name__)
PIXEL_STEPS = np.array([1, 2, 3, 5, 8, 13, 21, 34])  # code changes tried per pixel, both signs


def threshold_layers(graph: onnx.ModelProto) -> list[tuple[str, str, np.ndarray]]:
    """Returns (code tensor, accumulator tensor, thresholds [C, T]) per MultiThreshold node."""
    inits = {init.name: init for init in graph.graph.initializer}
    layers = []
    producers = {out: node for node in graph.graph.node for out in node.output}
    consumers = {}
    for node in graph.graph.node:
        for name in node.input:
            consumers.setdefault(name, node)  # the first reader
    for node in graph.graph.node:
        if node.op_type != "MultiThreshold" or node.input[1] not in inits:
            continue
        code = node.output[0]
        consumer = consumers.get(code)
        if consumer is not None and consumer.op_type == "Cast":
            code = consumer.output[0]
        accumulator = node.input[0]
        producer = producers.get(accumulator)
        if producer is not None and producer.op_type == "Cast":  # int32 -> float64 for qonnx
            accumulator = producer.input[0]
        thresholds = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        layers.append((code, accumulator, thresholds))
    return layers


def threshold_hits(acc: np.ndarray, thresholds: np.ndarray) -> int:
    """Returns how many accumulator values equal a threshold of their own channel."""
    if acc.ndim < 2:
        return 0
    rows = thresholds if len(thresholds) == acc.shape[1] else np.repeat(thresholds, acc.shape[1], 0)
    return int(sum(np.isin(acc[:, c], rows[c]).sum() for c in range(acc.shape[1])))


def _first_conv(graph: onnx.ModelProto, input_codes: str):
    """Returns (ConvInteger node, weight codes) of the conv that reads the input codes."""
    inits = {init.name: init for init in graph.graph.initializer}
    for node in graph.graph.node:
        if node.op_type == "ConvInteger" and node.input[0] == input_codes:
            return node, numpy_helper.to_array(inits[node.input[1]]).astype(np.int64)
    return None, None


def ints_attribute(node: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    """Returns the node's integer-list attribute `name`, or `default`."""
    return next((list(a.ints) for a in node.attribute if a.name == name), default)


def _bezout(a: int, b: int) -> tuple[int, int, int]:
    """Returns (g, x, y) with a*x + b*y = g = gcd(a, b) (extended Euclid)."""
    if b == 0:
        return (abs(a), 1 if a >= 0 else -1, 0)
    g, x, y = _bezout(b, a % b)
    return g, y, x - (a // b) * y


def _close_gap(image: np.ndarray, taps: list, gap: int, low: int, high: int) -> None:
    """Moves two taps' codes by (x, y) with w1*x + w2*y = gap, the smallest such moves in range."""
    for i, (_, c1, y1, x1, w1) in enumerate(taps):
        for _, c2, y2, x2, w2 in taps[i + 1 :]:
            g, x, y = _bezout(w1, w2)
            if gap % g:
                continue
            x, y = x * gap // g, y * gap // g
            # general solution (x + k*w2/g, y - k*w1/g): take k minimizing the larger move
            k0 = -round(x / (w2 // g)) if w2 // g else 0
            for k in (k0 - 1, k0, k0 + 1):
                dx, dy = x + k * (w2 // g), y - k * (w1 // g)
                a, b = image[c1, y1, x1] + dx, image[c2, y2, x2] + dy
                if low <= a <= high and low <= b <= high:
                    image[c1, y1, x1], image[c2, y2, x2] = a, b
                    return


def boundary_inputs(
    graph: onnx.ModelProto,
    start: np.ndarray,
    *,
    count: int,
    input_scale: float,
    input_bits: int,
    seed: int,
) -> tuple[np.ndarray, dict]:
    """Returns (images whose first conv accumulator sits exactly on a threshold, statistics).

    The first conv's accumulator is linear in the integer input codes, so the search is exact
    arithmetic: for a random (channel, position) of each image, take the threshold nearest its
    accumulator and walk the receptive-field pixels from the largest |weight| down, moving each
    code by the whole number of steps the remaining gap allows (clamped to the code range).
    Deeper layers are not constructed: their narrow accumulators land on thresholds often in
    real data, which `verify` counts per layer (`on_threshold`).
    """
    from lowbit.runtime import Runtime

    layers = threshold_layers(graph)
    node, weights = _first_conv(graph, "backbone.input_quant")
    if node is None or not layers:
        return np.zeros((0, *start.shape[1:]), dtype=np.float32), {"targets": 0, "hits": 0}
    acc_name = node.output[0]
    thresholds = next(t for _, acc, t in layers if acc == acc_name)
    rng = np.random.default_rng(seed)
    low, high = int_range(input_bits, signed=True)
    codes = quantize(start[rng.integers(len(start), size=count)], input_scale, low, high)
    codes = codes.astype(np.int64)
    runtime = Runtime(graph)
    acc = runtime.run((codes * input_scale).astype(np.float32), keep_intermediates=True)[acc_name]
    pads = ints_attribute(node, "pads", [0, 0, 0, 0])
    strides = ints_attribute(node, "strides", [1, 1])
    _, _, kernel_h, kernel_w = weights.shape
    height, width = codes.shape[2:]
    targets = np.zeros((count, 3), dtype=np.int64)
    goals = np.zeros(count, dtype=np.int64)
    # A threshold outside (lowest, highest] of the channel's accumulator is a step nothing
    # reaches ("always" / "never": constant channels); only reachable steps are targets.
    flat = weights.reshape(len(weights), -1)
    lowest = np.minimum(flat * low, flat * high).sum(axis=1, keepdims=True)
    highest = np.maximum(flat * low, flat * high).sum(axis=1, keepdims=True)
    reachable = (thresholds > lowest) & (thresholds <= highest)
    channels = np.nonzero(reachable.any(axis=1))[0]
    if channels.size == 0:
        return np.zeros((0, *start.shape[1:]), dtype=np.float32), {"targets": 0, "hits": 0}
    for sample in range(count):
        channel = int(rng.choice(channels))
        y, x = int(rng.integers(acc.shape[2])), int(rng.integers(acc.shape[3]))
        value = int(acc[sample, channel, y, x])
        row = thresholds[channel][reachable[channel]]
        goals[sample] = int(row[np.argmin(np.abs(row - value))])
        targets[sample] = (channel, y, x)
        gap = int(goals[sample]) - value
        taps = [
            (
                abs(int(weights[channel, ch, dy, dx])),
                ch,
                top,
                left,
                int(weights[channel, ch, dy, dx]),
            )
            for ch in range(weights.shape[1])
            for dy in range(kernel_h)
            for dx in range(kernel_w)
            if weights[channel, ch, dy, dx] != 0
            and 0 <= (top := y * strides[0] + dy - pads[0]) < height
            and 0 <= (left := x * strides[1] + dx - pads[1]) < width
        ]
        for _, ch, top, left, weight in sorted(taps, reverse=True):
            if gap == 0:
                break
            old = codes[sample, ch, top, left]
            new = int(np.clip(old + int(gap / weight), low, high))  # toward zero: never overshoots
            codes[sample, ch, top, left] = new
            gap -= weight * (new - old)
        if gap != 0:  # a remainder below the smallest |weight|: two taps with gcd | gap
            _close_gap(codes[sample], sorted(taps)[:12], gap, low, high)
    images = (codes * input_scale).astype(np.float32)
    after = runtime.run(images, keep_intermediates=True)[acc_name]
    hits = after[(np.arange(count), *targets.T)] == goals  # checked by the runtime itself
    log.info("boundary inputs: %d of %d on a first-layer threshold", hits.sum(), count)
    return images[hits], {"tensor": layers[0][0], "targets": int(count), "hits": int(hits.sum())}
