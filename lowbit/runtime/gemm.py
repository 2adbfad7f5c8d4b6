"""Exact integer GEMMs (ConvInteger, MatMul), run through float BLAS where that is provably exact.

An integer dot product Σ_k x_k·w_k evaluated in floating point is exact if every partial sum,
in whatever order the BLAS adds, is an integer the float type represents. With |x_k| ≤ X and
Σ_k |w_ck| ≤ S for every output c, every partial sum has magnitude ≤ B = X·S, and float32
(float64) represents every integer of magnitude ≤ 2^24 (2^53). So B < 2^24 runs float32 BLAS,
B < 2^53 float64 BLAS, and anything larger numpy's int64 matmul (no BLAS, ~10x slower). This
relies on the BLAS forming plain products and sums (no Strassen-like recombination), which
holds for OpenBLAS, MKL and Accelerate.

Small bounds go further ("float32x2"): a convolution is linear in its input, so two samples
packed into one float32, a + 2^12·b, give conv(a) + 2^12·conv(b). Every partial sum is then an
integer of magnitude ≤ B·(1 + 2^12), below 2^24 for B < 2^11, and since |conv(a)| < 2^11, the
pair decodes exactly: conv(b) = rint(r / 2^12), conv(a) = r - 2^12·conv(b). Half the patches,
half the GEMM, for low-bit layers (2-bit codes × ternary weights: B ≤ 3·Σ|w|).

The convolution is an im2col + GEMM in channel-major memory: activations are (C, N, H, W) in
memory, so the GEMM is weights (M, K) @ patches (K, N·H·W) and its result is already the next
channel-major tensor; `conv_integer` hands it back as an NCHW view (see ops.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FLOAT32_EXACT_LIMIT = 2**24
FLOAT64_EXACT_LIMIT = 2**53
PAIR_SHIFT = 2**12  # float32x2: the second sample's weight in a packed value
PAIR_EXACT_LIMIT = 2**11  # float32x2: B < 2^11, so B·(1 + 2^12) < 2^24 and |low| < 2^12 / 2


def exact_gemm_dtype(bound: int | None, pairs: bool = False) -> str:
    """The cheapest exact GEMM dtype for accumulator bound B (None: unbounded).

    `pairs`: the GEMM is a convolution, which may pack two samples per float32 ("float32x2").
    """
    if pairs and bound is not None and bound < PAIR_EXACT_LIMIT:
        return "float32x2"
    if bound is not None and bound < FLOAT32_EXACT_LIMIT:
        return "float32"
    if bound is not None and bound < FLOAT64_EXACT_LIMIT:
        return "float64"
    return "int64"


def code_abs_max(low: int, high: int, zero_point: int = 0) -> int:
    """max |x - zero_point| over the integer codes x in [low, high]."""
    return max(abs(low - zero_point), abs(high - zero_point))


def data_abs_max(x: np.ndarray, zero_point: int = 0) -> int:
    """max |x - zero_point| over the actual values (0 for an empty tensor)."""
    if x.size == 0:
        return 0
    return code_abs_max(int(x.min()), int(x.max()), zero_point)


def weight_abs_sum_max(weights: np.ndarray, reduce_axes: tuple[int, ...]) -> int:
    """max over outputs of Σ |w| over `reduce_axes` (the GEMM's K), as an exact Python int."""
    if weights.size == 0:
        return 0
    return int(np.abs(weights.astype(np.int64)).sum(axis=reduce_axes).max())


def shifted_conv_weights(w: np.ndarray, w_zero_point: np.ndarray | None) -> np.ndarray:
    """ConvInteger weights minus their (per-tensor or per-output-channel) zero point, as int64."""
    shifted = w.astype(np.int64)
    if w_zero_point is not None:
        shifted -= np.asarray(w_zero_point, dtype=np.int64).reshape(-1, 1, 1, 1)
    return shifted


def _to_int(result: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast an exact integer-valued GEMM result to `dtype`, wrapping like C on overflow."""
    if result.dtype == np.float64 and np.dtype(dtype).itemsize < 8:
        result = result.astype(np.int64)  # float64 → int32 is undefined out of range
    return result.astype(dtype)


def conv_integer(
    x: np.ndarray,
    w: np.ndarray,
    x_zero_point: np.ndarray | None = None,
    w_zero_point: np.ndarray | None = None,
    *,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    gemm_dtype: str | None = None,
) -> np.ndarray:
    """ONNX ConvInteger (2-D, group 1, dilation 1; the loader enforces these) → int32 NCHW.

    Inputs minus their zero points are convolved; padding therefore contributes 0, as in the
    ONNX reference. `gemm_dtype` (from the runtime's load-time plan) must be exact for the
    data; None derives it from the actual data, which is always exact.
    """
    batch, channels, height, width = x.shape
    outputs, _, kernel_h, kernel_w = w.shape
    pad_top, pad_left, pad_bottom, pad_right = pads or (0, 0, 0, 0)
    stride_h, stride_w = strides or (1, 1)
    out_h = (height + pad_top + pad_bottom - kernel_h) // stride_h + 1
    out_w = (width + pad_left + pad_right - kernel_w) // stride_w + 1
    x_zero = 0 if x_zero_point is None else int(np.asarray(x_zero_point).reshape(-1)[0])
    weights = shifted_conv_weights(w, w_zero_point)
    if gemm_dtype is None:
        bound = data_abs_max(x, x_zero) * weight_abs_sum_max(weights, (1, 2, 3))
        gemm_dtype = exact_gemm_dtype(bound, pairs=True)
    pairs = gemm_dtype == "float32x2"
    dtype = np.dtype(np.float32 if pairs else gemm_dtype)

    # channel-major padded input (C, N, H + pads, W + pads); `x.transpose` is free when x
    # already has channel-major memory, as every convolution output here does
    samples = batch + batch % 2 if pairs else batch  # pairs: a zero sample makes N even
    padded = np.zeros(
        (channels, samples, height + pad_top + pad_bottom, width + pad_left + pad_right), dtype
    )
    interior = padded[:, :batch, pad_top : pad_top + height, pad_left : pad_left + width]
    interior[...] = x.transpose(1, 0, 2, 3)
    if x_zero:
        interior -= x_zero
    if pairs:  # sample n + N/2 rides on sample n, 2^12 above it
        samples //= 2
        padded = padded[:, :samples] + np.float32(PAIR_SHIFT) * padded[:, samples:]
    # patches (kernel_h, kernel_w, C, N, out_h, out_w): one strided copy per kernel offset
    patches = np.empty((kernel_h, kernel_w, channels, samples, out_h, out_w), dtype)
    for i in range(kernel_h):
        for j in range(kernel_w):
            patches[i, j] = padded[
                :,
                :,
                i : i + stride_h * (out_h - 1) + 1 : stride_h,
                j : j + stride_w * (out_w - 1) + 1 : stride_w,
            ]
    weight_matrix = weights.transpose(0, 2, 3, 1).reshape(outputs, -1).astype(dtype)
    result = weight_matrix @ patches.reshape(weight_matrix.shape[1], -1)
    result = result.reshape(outputs, samples, out_h, out_w)
    if pairs:
        high = np.rint(result * np.float32(1 / PAIR_SHIFT))  # exact: |low| / 2^12 < 1/2
        result -= np.float32(PAIR_SHIFT) * high
        accumulators = np.empty((outputs, 2 * samples, out_h, out_w), np.int32)
        accumulators[:, :samples] = result
        accumulators[:, samples:] = high
        return accumulators[:, :batch].transpose(1, 0, 2, 3)
    return _to_int(result, np.int32).transpose(1, 0, 2, 3)


def matmul_bound(a_abs_max: int | None, b: np.ndarray) -> int | None:
    """Accumulator bound of a @ b for |a| ≤ a_abs_max: a_abs_max · max over columns Σ |b|."""
    if a_abs_max is None:
        return None
    return a_abs_max * weight_abs_sum_max(b if b.ndim > 1 else b[:, None], (-2,))


def matmul(a: np.ndarray, b: np.ndarray, *, gemm_dtype: str | None = None) -> np.ndarray:
    """ONNX MatMul; integer operands go through the exact GEMM dtype (None: from the data)."""
    if a.dtype.kind == "f":
        return np.matmul(a, b)
    if gemm_dtype is None:
        gemm_dtype = exact_gemm_dtype(matmul_bound(data_abs_max(a), b))
    dtype = np.dtype(gemm_dtype)
    return _to_int(np.matmul(a.astype(dtype), b.astype(dtype)), a.dtype)
