"""A convolution and its requantization as one step, with reused workspaces (fused path only).

Pattern: a ConvInteger whose only reader is a requantization of fuse.py,

    ConvInteger → [Cast int → float] → MultiThreshold → Cast float → int [→ MaxPool]

run by `ConvRequantize`. Invariant: its codes equal the unfused ops' bit for bit, because
- the GEMM is gemm.py's, in the load-time plan's exact dtype, so every accumulator is an exact
  integer held in that float type, and nothing is gained by converting it to int32;
- for an integer accumulator a, `a ≥ t` ⇔ `a ≥ ceil(t)`; with |a| ≤ B (the accumulator bound),
  clipping ceil(t) to [-B-1, B+1] changes no comparison and makes it a float the GEMM dtype
  holds exactly (B < 2^24 for float32, 2^53 for float64); NaN stays NaN and never passes;
- a max commutes with the non-decreasing threshold count, as in fuse.py, so the pool runs
  first, on the exact float accumulators.
The input codes are checked against the plan's annotated range as plan.py's GEMMs do (unless
they come from a requantization whose codes provably lie in it); outside it, the step runs the
plain ops with the dtype derived from the data.

Every array of the step (padded input, patches, GEMM result, pooled values, counts, codes) is
allocated once per input shape and thread, then reused with `out=` arguments: in a fresh
process, large temporaries freed and mapped again on every call cost about as much as the
arithmetic (page faults). The codes returned are such a buffer, valid until the same thread's
next call with the same shape; `Runtime` copies what it hands to callers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from lowbit.runtime.fuse import requantize
from lowbit.runtime.gemm import PAIR_SHIFT, conv_integer, conv_weight_matrix
from lowbit.runtime.ops import max_pool

logger = logging.getLogger(__name__)

MAX_THRESHOLDS = 15
"""Up to this many thresholds per channel (4-bit codes), the step compares every value with
each; beyond, the convolution and fuse.py's requantize (a binary search) stay two steps."""

WORKSPACE_SHAPES = 8
"""Workspaces a thread keeps (a run uses at most four: parts and codes of two chunk sizes)."""

PART_BYTES = 2 * 2**20
"""Patches and GEMM result of one part: a few samples at a time, so that what im2col writes
is still in the core's cache (L2) when the GEMM reads it."""


class ConvRequantize:
    """The step `x ↦ requantized codes of ConvInteger(x)`, NCHW view of channel-major memory."""

    def __init__(
        self,
        weights: np.ndarray,
        x_zero_point: np.ndarray | None,
        w_zero_point: np.ndarray | None,
        conv: dict[str, Any],
        plan: dict[str, Any],
        thresholds: np.ndarray,
        requantization: dict[str, Any],
        where: str,
        input_proven: bool = False,
    ) -> None:
        self._unfused = (weights, x_zero_point, w_zero_point, conv, thresholds, requantization)
        self._where = where
        self._pairs = plan["gemm_dtype"] == "float32x2"
        self._dtype = np.dtype(np.float32 if self._pairs else plan["gemm_dtype"])
        self._low, self._high = plan["input_range"]
        trusts_annotation = plan["input_range_source"].startswith("finn_datatype")
        self._check_range = trusts_annotation and not input_proven
        self._x_zero = 0 if x_zero_point is None else int(np.asarray(x_zero_point).reshape(-1)[0])
        self._weights = np.ascontiguousarray(conv_weight_matrix(weights, w_zero_point), self._dtype)
        self._kernel = tuple(weights.shape[2:])
        self._pads = tuple(conv.get("pads") or (0, 0, 0, 0))
        self._strides = tuple(conv.get("strides") or (1, 1))
        bound = plan["accumulator_bound"] + 1
        limits = np.clip(np.ceil(thresholds.astype(np.float64)), -bound, bound)
        # (T, C, 1, 1, 1): all T comparisons against channel-major (C, N, H, W) values at once
        self._limits = limits.astype(self._dtype).T.reshape(-1, limits.shape[0], 1, 1, 1).copy()
        self._out_bias = requantization["out_bias"]
        self._codes_dtype = np.dtype(requantization["dtype"])
        self._pool = requantization.get("pool")
        self._local = threading.local()

    @staticmethod
    def applies(plan: dict[str, Any] | None, weights: np.ndarray, thresholds: np.ndarray) -> bool:
        """Whether the plan's GEMM dtype, the weights and the thresholds suit this step."""
        return (
            plan is not None
            and weights.ndim == 4
            and thresholds.ndim == 2
            and thresholds.shape[0] in (1, weights.shape[0])
            and 1 <= thresholds.shape[1] <= MAX_THRESHOLDS
            and plan["input_range"] is not None
            and plan["accumulator_bound"] is not None
            and plan["gemm_dtype"] in ("float32x2", "float32", "float64")
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._check_range and (x.min() < self._low or x.max() > self._high):
            logger.warning(
                "%s: input outside [%d, %d]; GEMM dtype from the data",
                self._where,
                self._low,
                self._high,
            )
            weights, x_zero, w_zero, conv, thresholds, requantization = self._unfused
            accumulators = conv_integer(x, weights, x_zero, w_zero, **conv)
            return requantize(accumulators, thresholds, **requantization)
        batch, channels, height, width = x.shape
        part = min(self._part_size(channels, height, width), batch)
        space = self._workspace((part, channels, height, width))
        codes = self._workspace(("codes", *x.shape), lambda: self._codes(batch, space))
        for start in range(0, batch, part):
            stop = min(start + part, batch)
            if stop - start != part:
                space = self._workspace((stop - start, channels, height, width))
            self._run_part(x[start:stop].transpose(1, 0, 2, 3), space, codes[:, start:stop])
        return codes.transpose(1, 0, 2, 3)

    def _part_size(self, channels: int, height: int, width: int) -> int:
        """Samples per GEMM: patches and result of one part stay within PART_BYTES."""
        kernel_h, kernel_w = self._kernel
        columns = height * width // (self._strides[0] * self._strides[1])
        rows = channels * kernel_h * kernel_w + 2 * self._weights.shape[0]
        per_sample = rows * columns * self._dtype.itemsize // (2 if self._pairs else 1)
        part = max(1, PART_BYTES // max(per_sample, 1))
        return part + part % 2 if self._pairs else part  # pairs: an even part

    def _run_part(self, x: np.ndarray, space: dict[str, Any], codes: np.ndarray) -> None:
        """Codes (C_out, n, H', W') of the channel-major input part x (C, n, H, W)."""
        self._fill_padded(x, space)
        for patch, window in space["im2col"]:
            np.copyto(patch, window)
        np.matmul(self._weights, space["patches"], out=space["result"])
        values = space["values"]
        if space["decode"] is not None:  # gemm.py: sample n + S rode on sample n, 2^12 above
            packed, high, low = space["decode"]
            np.multiply(packed, np.float32(1 / PAIR_SHIFT), out=high)
            np.rint(high, out=high)  # exact: |low| / 2^12 < 1/2
            np.multiply(high, np.float32(-PAIR_SHIFT), out=low)
            np.add(low, packed, out=low)
        if space["pool"] is not None:
            for windows, out in space["pool"]:  # separable: one spatial axis at a time
                if len(windows) == 1:
                    np.copyto(out, windows[0])
                else:
                    np.maximum(windows[0], windows[1], out=out)
                for window in windows[2:]:
                    np.maximum(out, window, out=out)
            values = space["pool"][-1][1]
        elif self._pool is not None:  # padded pooling (rare): ops.max_pool pads with -inf
            values = max_pool(values, **self._pool)
        direct = codes.dtype == np.uint8 and not self._out_bias
        counts = codes if direct else space["counts"]
        passed = space["passed"]
        np.greater_equal(values, self._limits, out=passed)
        np.add.reduce(passed, axis=0, dtype=np.uint8, out=counts)
        if not direct:
            np.copyto(codes, counts, casting="unsafe")
        if self._out_bias:
            np.add(codes, self._codes_dtype.type(self._out_bias), out=codes)

    def _codes(self, batch: int, space: dict[str, Any]) -> np.ndarray:
        outputs, _, final_h, final_w = space["counts"].shape
        return np.empty((outputs, batch, final_h, final_w), self._codes_dtype)

    def _fill_padded(self, x: np.ndarray, space: dict[str, Any]) -> None:
        """Write the channel-major codes x (C, N, H, W), less the zero point, into the padding."""
        interior, paired = space["interior"], space["paired"]
        samples = interior.shape[1]
        np.copyto(interior, x[:, :samples], casting="unsafe")
        if paired:
            shifted = space["shifted"]
            np.multiply(x[:, samples:], np.float32(PAIR_SHIFT), out=shifted, casting="unsafe")
            np.add(interior[:, :paired], shifted, out=interior[:, :paired])
        if self._x_zero:  # a sample and its partner each lose the zero point
            interior[:, :paired] -= self._x_zero * (1 + PAIR_SHIFT)
            interior[:, paired:] -= self._x_zero
        if space["bands"] is not None:  # the bottom band rides 2^12 above the top one
            top, bottom, packed = space["bands"]
            np.multiply(bottom, np.float32(PAIR_SHIFT), out=packed)
            np.add(packed, top, out=packed)

    def _workspace(self, key: tuple, make: Callable[[], Any] | None = None) -> Any:
        """This thread's arrays for `key` (an input part's shape), made on first use."""
        spaces = self._local.__dict__.setdefault("spaces", {})
        space = spaces.pop(key, None)
        if space is None:
            space = make() if make is not None else self._make_workspace(*key)
        spaces[key] = space  # most recently used last
        while len(spaces) > WORKSPACE_SHAPES:
            del spaces[next(iter(spaces))]
        return space

    def _make_workspace(self, batch: int, channels: int, height: int, width: int) -> dict[str, Any]:
        expected = self._weights.shape[1] // (self._kernel[0] * self._kernel[1])
        if channels != expected:  # numpy would only fail later, with a broadcast message
            raise ValueError(f"input has {channels} channels, the weights expect {expected}")
        (kernel_h, kernel_w), (stride_h, stride_w) = self._kernel, self._strides
        pad_top, pad_left, pad_bottom, pad_right = self._pads
        out_h = (height + pad_top + pad_bottom - kernel_h) // stride_h + 1
        out_w = (width + pad_left + pad_right - kernel_w) // stride_w + 1
        if out_h < 1 or out_w < 1:
            raise ValueError(f"the {kernel_h}x{kernel_w} kernel is larger than the padded input")
        # pairs of samples; a lone sample pairs its top half with its bottom half (bands)
        bands = self._pairs and batch == 1 and out_h % 2 == 0
        pairs = self._pairs and batch > 1
        samples = (batch + 1) // 2 if pairs else batch
        paired = batch - samples
        dtype, outputs = self._dtype, self._weights.shape[0]
        padded = np.zeros(
            (channels, samples, height + pad_top + pad_bottom, width + pad_left + pad_right), dtype
        )
        source, rows = padded, out_h
        space: dict[str, Any] = {"bands": None}
        if bands:  # output rows [0, R) from padded rows [0, B), rows [R, 2R) from [R·s, R·s + B)
            rows = out_h // 2
            band_rows = (rows - 1) * stride_h + kernel_h
            source = np.empty((channels, 1, band_rows, padded.shape[3]), dtype)
            bottom = padded[:, :, rows * stride_h : rows * stride_h + band_rows]
            space["bands"] = (padded[:, :, :band_rows], bottom, source)
        windows = [
            source[
                :,
                :,
                i : i + stride_h * (rows - 1) + 1 : stride_h,
                j : j + stride_w * (out_w - 1) + 1 : stride_w,
            ]
            for i, j in np.ndindex(kernel_h, kernel_w)
        ]
        patches = np.empty((kernel_h, kernel_w, channels, samples, rows, out_w), dtype)
        result = np.empty((outputs, samples * rows * out_w), dtype)
        values = result.reshape(outputs, samples, rows, out_w)
        space.update(
            interior=padded[:, :, pad_top : pad_top + height, pad_left : pad_left + width],
            paired=paired,
            shifted=np.empty((channels, paired, height, width), dtype),
            im2col=list(zip(patches.reshape(-1, *patches.shape[2:]), windows)),  # (i, j) order
            patches=patches.reshape(self._weights.shape[1], -1),
            result=result,
            values=values,
            decode=None,
            pool=None,
        )
        if pairs or bands:
            decoded = np.empty((outputs, 2 * samples, rows, out_w), dtype)
            space["decode"] = (values, decoded[:, samples:], decoded[:, :samples])
            # the accumulators (C_out, N, out_h, out_w): a lone sample's bands are its row halves
            space["values"] = (
                decoded.reshape(outputs, 1, out_h, out_w) if bands else decoded[:, :batch]
            )
        final_h, final_w = out_h, out_w
        pool = self._pool
        if pool is not None and not any(pool.get("pads", ())):
            source, steps = space["values"], []
            for axis, (kernel, stride) in enumerate(
                zip(pool["kernel_shape"], pool.get("strides") or (1, 1)), start=2
            ):
                count = (source.shape[axis] - kernel) // stride + 1
                out = np.empty(source.shape[:axis] + (count,) + source.shape[axis + 1 :], dtype)
                offsets = [slice(k, k + stride * (count - 1) + 1, stride) for k in range(kernel)]
                leading = (slice(None),) * axis
                steps.append(([source[(*leading, offset)] for offset in offsets], out))
                source = out
            space["pool"] = steps
            final_h, final_w = source.shape[2:]
        elif pool is not None:
            final_h, final_w = max_pool(np.zeros((1, 1, out_h, out_w), dtype), **pool).shape[2:]
        final = (outputs, batch, final_h, final_w)
        space["counts"] = np.empty(final, np.uint8)
        space["passed"] = np.empty((self._limits.shape[0], *final), np.bool_)
        return space
