"""qonnx MultiThreshold: `out = out_scale · #{t in thresholds[c] : x ≥ t} + out_bias`.

Reference: `qonnx.custom_op.general.multithreshold` (the `multithreshold` function and
`MultiThreshold.execute_node`, whose data_layout rule is copied here). qonnx compares
`x >= thresholds` in numpy's promoted dtype; for an integer x of at most 32 bits that dtype is
float64, which represents both operands exactly, so the comparison is the exact one and equals
`x >= ceil(t)` in integers. The integer form is used whenever it is provably the same (finite
thresholds within x's range), because it is cheaper; otherwise numpy's comparison is used as is.
One deliberate difference: qonnx casts the count to x's dtype, which wraps for an int8 x with
more than 127 thresholds; here the count is exact.
"""

from __future__ import annotations

import numpy as np

SEARCHSORTED_MIN_THRESHOLDS = 16
"""From this many thresholds per channel, a per-channel binary search beats T comparisons."""

_LAYOUT_BY_RANK = {2: "NC", 3: "NWC", 4: "NCHW"}


def channel_axis(data_layout: str, ndim: int) -> int:
    """The channel axis qonnx's execute_node uses for this data_layout and input rank."""
    layout = data_layout or _LAYOUT_BY_RANK.get(ndim, "")
    return layout.index("C") if "C" in layout else 1


def comparison_thresholds(x_dtype: np.dtype, thresholds: np.ndarray) -> np.ndarray:
    """Thresholds in x's own integer dtype when `x >= t` ⇔ `x >= ceil(t)` exactly, else as given."""
    if x_dtype.kind not in "iu" or x_dtype.itemsize > 4 or thresholds.dtype.kind != "f":
        return thresholds
    info = np.iinfo(x_dtype)
    # NaN and thresholds above x's range can never be reached; keep numpy's comparison for them.
    if not np.all(thresholds <= info.max):
        return thresholds
    return np.clip(np.ceil(thresholds), info.min, info.max).astype(x_dtype)


def threshold_counts(x: np.ndarray, thresholds: np.ndarray, axis: int) -> np.ndarray:
    """#{t in thresholds[c] : x ≥ t} along channel `axis`: uint8 (int64 past 255 thresholds).

    `thresholds` is [C, T] or [1, T] (one row for all channels). The result keeps x's memory
    order, so a channel-major x (see gemm.py) is compared row by row against scalars.
    """
    if thresholds.ndim != 2 or thresholds.shape[0] not in (1, x.shape[axis]):
        raise ValueError(
            f"thresholds of shape {list(thresholds.shape)} do not fit {x.shape[axis]} channels"
        )
    thresholds = comparison_thresholds(x.dtype, thresholds)
    count_dtype = np.uint8 if thresholds.shape[1] <= 255 else np.int64
    counts = np.zeros_like(x, dtype=count_dtype)
    rows_sorted = bool(np.all(np.diff(thresholds, axis=1) >= 0))
    if (
        thresholds.shape[1] >= SEARCHSORTED_MIN_THRESHOLDS
        and thresholds.dtype == x.dtype  # integers: no NaN, so binary search is exact
        and rows_sorted
    ):
        for c in range(x.shape[axis]):
            row = thresholds[c if thresholds.shape[0] > 1 else 0]
            index = (slice(None),) * axis + (c,)
            # side="right": the number of thresholds t <= x, i.e. with x >= t
            counts[index] = np.searchsorted(row, x[index], side="right")
        return counts
    shape = [1] * x.ndim
    shape[axis] = thresholds.shape[0]
    passed = np.empty_like(x, dtype=bool)
    for column in thresholds.T:
        np.greater_equal(x, column.reshape(shape), out=passed)
        np.add(counts, passed, out=counts, casting="unsafe")
    return counts


def multithreshold(
    x: np.ndarray,
    thresholds: np.ndarray,
    *,
    out_dtype: str = "",
    out_scale: float = 1.0,
    out_bias: float = 0.0,
    data_layout: str = "",
) -> np.ndarray:
    """qonnx MultiThreshold, in qonnx's output dtype: x's float type, float64 for integer x.

    `out_dtype` is an annotation only. The affine map `out_scale * counts + out_bias` is
    evaluated in that dtype, as qonnx's numpy expression is, and skipped when the identity.
    """
    counts = threshold_counts(x, thresholds, channel_axis(data_layout, x.ndim))
    result_dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
    values = counts.astype(result_dtype)
    if out_scale == 1.0 and out_bias == 0.0:
        return values
    return np.asarray(out_scale * values + out_bias, dtype=result_dtype)
