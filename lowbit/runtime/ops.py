"""Operators of the integer graph: one pure numpy function per op type, registered in `OPS`.

Each function takes the node's inputs positionally (`None` for an absent optional input) and
its attributes as keywords, and follows ONNX opset 17 or qonnx (`qonnx.custom_op.general`);
the docstring names the definition. Tensors are in ONNX (NCHW) logical layout, but a function
may receive and return strided views whose memory is ordered differently (the convolution
returns channel-major memory, see `gemm.py`): numpy's elementwise machinery follows memory
order ('K'), so every function here keeps whatever memory order it is given.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx

from lowbit.runtime.gemm import conv_integer, matmul
from lowbit.runtime.threshold import multithreshold

QONNX_DOMAIN = "qonnx.custom_op.general"


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX Add: numpy broadcasting, integers wrap like C."""
    return np.add(a, b)


def mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX Mul."""
    return np.multiply(a, b)


def sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX Sub: numpy broadcasting, integers wrap like C."""
    return np.subtract(a, b)


def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX Div: true division for floats, C-style truncation toward zero for integers."""
    if a.dtype.kind == "f":
        return np.divide(a, b)
    quotient = np.floor_divide(a, b)
    inexact_negative = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
    return quotient + inexact_negative.astype(quotient.dtype)


def maximum(*operands: np.ndarray) -> np.ndarray:
    """ONNX Max (variadic, broadcasting)."""
    return functools.reduce(np.maximum, operands)


def sqrt(x: np.ndarray) -> np.ndarray:
    """ONNX Sqrt."""
    return np.sqrt(x)


def cast(x: np.ndarray, *, to: int, saturate: int = 1) -> np.ndarray:
    """ONNX Cast; `saturate` only concerns float8 targets, which the whitelist excludes."""
    return x.astype(onnx.helper.tensor_dtype_to_np_dtype(to))


def flatten(x: np.ndarray, *, axis: int = 1) -> np.ndarray:
    """ONNX Flatten: a 2-D view [prod(shape[:axis]), prod(shape[axis:])]."""
    axis = axis % x.ndim if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), -1)


def reshape(x: np.ndarray, shape: np.ndarray, *, allowzero: int = 0) -> np.ndarray:
    """ONNX Reshape (opset 14+): 0 copies the input dimension unless allowzero, -1 infers."""
    target = [int(d) for d in shape]
    if not allowzero:
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return x.reshape(target)


def reduce_sum(
    x: np.ndarray,
    axes: np.ndarray | None = None,
    *,
    keepdims: int = 1,
    noop_with_empty_axes: int = 0,
) -> np.ndarray:
    """ONNX ReduceSum (opset 13+): axes as an input; the sum keeps the input dtype."""
    if axes is None or axes.size == 0:
        if noop_with_empty_axes:
            return x
        axis = None
    else:
        axis = tuple(int(a) for a in axes.reshape(-1))
    return np.sum(x, axis=axis, keepdims=bool(keepdims), dtype=x.dtype)


def reduce_max(
    x: np.ndarray, *, axes: Sequence[int] | None = None, keepdims: int = 1
) -> np.ndarray:
    """ONNX ReduceMax (opset 13-17: axes an attribute, default all); exact for integers."""
    axis = None if axes is None else tuple(int(a) for a in axes)
    return np.max(x, axis=axis, keepdims=bool(keepdims))


def max_pool(
    x: np.ndarray,
    *,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
    storage_order: int = 0,
) -> np.ndarray:
    """ONNX MaxPool, floor mode: padding never wins (-inf, or the dtype's minimum for codes).

    The window maximum is separable: one spatial axis at a time, a running `np.maximum` over
    the kernel offsets, each a strided view (k_h + k_w passes instead of k_h · k_w, and
    several times faster than a sliding-window reduction). Dilations, auto_pad, ceil_mode and
    storage_order are limited to their defaults when the graph is loaded.
    """
    rank = len(kernel_shape)
    strides = list(strides or [1] * rank)
    pads = list(pads or [0] * (2 * rank))
    spatial = x.shape[-rank:]
    if any(pads):
        fill = np.iinfo(x.dtype).min if x.dtype.kind in "iu" else -np.inf
        padded_shape = x.shape[:-rank] + tuple(
            size + pads[i] + pads[i + rank] for i, size in enumerate(spatial)
        )
        padded = np.full_like(x, fill, shape=padded_shape)
        interior = tuple(slice(pads[i], pads[i] + size) for i, size in enumerate(spatial))
        padded[(..., *interior)] = x
        x = padded
    for i, (kernel, stride) in enumerate(zip(kernel_shape, strides)):
        axis = x.ndim - rank + i
        count = (x.shape[axis] - kernel) // stride + 1
        pooled = None
        for offset in range(kernel):
            window = x[
                (slice(None),) * axis + (slice(offset, offset + stride * (count - 1) + 1, stride),)
            ]
            if pooled is None:
                pooled = window.copy(order="K")
            else:
                np.maximum(pooled, window, out=pooled)
        x = pooled
    return x


def quant(
    x: np.ndarray,
    scale: np.ndarray,
    zeropt: np.ndarray,
    bitwidth: np.ndarray,
    *,
    signed: int = 1,
    narrow: int = 1,
    rounding_mode: str = "ROUND",
) -> np.ndarray:
    """qonnx Quant (`intquant.int_quant`): scale, shift, clamp, round half to even, rescale.

    The numpy operations and dtypes are qonnx's own, in its order (clamp, then round), so the
    result is bit-identical to `execute_onnx`; 1-bit signed is qonnx's bipolar sign (0 → +1).
    The defaults of `signed` and `narrow` are qonnx's.
    """
    y = x / scale
    y = y + zeropt
    if bitwidth == 1 and signed:
        ones = np.ones(y.shape, dtype=y.dtype)
        y = np.where(y >= 0.0, ones, -ones)
    else:
        half = 2 ** (bitwidth - 1)
        if signed:
            low = -half + 1 if narrow else -half
            high = half - 1
        else:
            low = 0 * bitwidth
            high = 2**bitwidth - 2 if narrow else 2**bitwidth - 1
        y = np.where(y > high, np.asarray(high).astype(y.dtype), y)
        y = np.where(y < low, np.asarray(low).astype(y.dtype), y)
        y = np.round(y)  # ROUND = HALF_EVEN, the only mode the whitelist admits
    return np.asarray((y - zeropt) * scale, dtype=np.float32)


OPS: dict[str, Callable[..., np.ndarray]] = {
    "Add": add,
    "Cast": cast,
    "ConvInteger": conv_integer,
    "Div": div,
    "Flatten": flatten,
    "MatMul": matmul,
    "Max": maximum,
    "MaxPool": max_pool,
    "Mul": mul,
    "MultiThreshold": multithreshold,
    "Quant": quant,
    "ReduceMax": reduce_max,
    "ReduceSum": reduce_sum,
    "Reshape": reshape,
    "Sqrt": sqrt,
    "Sub": sub,
}
"""The whole whitelist of docs/int_graph.md, by op type."""

DOMAINS: dict[str, str] = {"MultiThreshold": QONNX_DOMAIN, "Quant": QONNX_DOMAIN}
"""The domain of each non-standard op; every other op is in the default ONNX domain."""
