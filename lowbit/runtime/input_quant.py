"""Input quantization as one step with a reused workspace (fused path only).

Pattern (the input quantizer of docs/int_graph.md), inner tensors read by the next node only
and not graph outputs:

    x (float) → Div by a scalar initializer → qonnx Quant (scale 1, zero point 0, bit width ≥ 2)
      → Cast to an integer type

Invariant: `QuantizeInput` returns the Cast's codes bit for bit, because
- the quotient is the same numpy division of the same float32 operands, into a buffer;
- Quant divides by a scale of 1 and adds a zero point of 0, both exact (the sign of a zero
  aside, which the integer Cast drops), then clamps and rounds half to even: `np.clip` then
  `np.rint` give what qonnx's two `np.where` and `np.round` give, for every float, ±inf and NaN
  included; it multiplies by 1 again, exact;
- the Cast is the same C conversion as `astype` (`np.copyto(..., casting="unsafe")`).
Its codes are a per-thread workspace, as conv_requantize.py's are: `Runtime` copies what it
hands to callers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import onnx

from lowbit.runtime.graph import Graph


@dataclass(frozen=True)
class InputQuantization:
    """A Div → Quant → Cast run found in a graph."""

    nodes: tuple[onnx.NodeProto, ...]
    divisor: np.ndarray  # 0-d, the dtype of the input
    low: int
    high: int
    dtype: np.dtype  # of the codes


class QuantizeInput:
    """The step `x ↦ Cast(Quant(x / divisor))` with clamping bounds [low, high]."""

    def __init__(self, fusion: InputQuantization) -> None:
        self._divisor = fusion.divisor
        self._low, self._high, self._dtype = float(fusion.low), float(fusion.high), fusion.dtype
        self._local = threading.local()

    def __call__(self, x: np.ndarray, *_: np.ndarray) -> np.ndarray:
        spaces = self._local.__dict__.setdefault("spaces", {})
        if x.shape not in spaces:
            spaces.clear()  # one shape per thread: a run's chunks, the last one aside
            spaces[x.shape] = (np.empty(x.shape, x.dtype), np.empty(x.shape, self._dtype))
        quotient, codes = spaces[x.shape]
        np.divide(x, self._divisor, out=quotient)
        np.clip(quotient, self._low, self._high, out=quotient)
        np.rint(quotient, out=quotient)
        np.copyto(codes, quotient, casting="unsafe")
        return codes


def input_quantizations(graph: Graph) -> list[InputQuantization]:
    """Every Div → Quant → Cast run of the pattern above whose conditions hold."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.nodes:
        for name in set(node.input):
            readers.setdefault(name, []).append(node)

    def sole_reader(name: str, op_type: str) -> onnx.NodeProto | None:
        found = readers.get(name, [])
        if len(found) != 1 or found[0].op_type != op_type or name in graph.output_names:
            return None
        return found[0]

    found = []
    for div in graph.nodes:
        if div.op_type != "Div" or div.input[1] not in graph.initializers:
            continue
        x_dtype, divisor = graph.dtypes[div.input[0]], graph.initializers[div.input[1]]
        quant = sole_reader(div.output[0], "Quant")
        cast = quant and sole_reader(quant.output[0], "Cast")
        if (
            cast is None
            or x_dtype.kind != "f"
            or divisor.ndim != 0
            or divisor.dtype != x_dtype
            or quant.input[0] != div.output[0]
            or graph.dtypes[cast.output[0]].kind not in "iu"
        ):
            continue
        scale, zero, bits = (graph.initializers[name] for name in quant.input[1:4])
        attributes = graph.attributes[quant.output[0]]
        signed, narrow = attributes.get("signed", 1), attributes.get("narrow", 1)
        if (
            any(p.ndim != 0 or p.dtype != x_dtype for p in (scale, zero))
            or scale != 1
            or zero != 0
            or bits.size != 1
            or bits.reshape(-1)[0] != int(bits.reshape(-1)[0])
            or int(bits.reshape(-1)[0]) < 2
        ):
            continue
        bits = int(bits.reshape(-1)[0])
        if signed:
            low, high = -(2 ** (bits - 1)) + (1 if narrow else 0), 2 ** (bits - 1) - 1
        else:
            low, high = 0, 2**bits - (2 if narrow else 1)
        found.append(
            InputQuantization((div, quant, cast), divisor, low, high, graph.dtypes[cast.output[0]])
        )
    return found
