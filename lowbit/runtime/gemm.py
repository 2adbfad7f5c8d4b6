"""Exact integer GEMMs (ConvInteger, MatMul), run through float BLAS where that is provably exact.

An integer dot product Σ_k x_k·w_k evaluated in floating point is exact if every partial sum,
in whatever order the BLAS adds, is an integer the float type represents. `accumulator_bound`
bounds every partial sum by B (at most max|x| · max_c Σ_k |w_ck|, less for one-signed codes),
and float32 (float64) represents every integer of magnitude ≤ 2^24 (2^53). So B < 2^24 runs
float32 BLAS, B < 2^53 float64 BLAS, and anything larger numpy's int64 matmul (no BLAS, ~10x
slower). This relies on the BLAS forming plain products and sums (no Strassen-like
recombination), which holds for OpenBLAS, MKL and Accelerate.

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


def accumulator_bound(weights: np.ndarray, low: int, high: int) -> int:
    """Largest |partial sum| of Σ_k x_k·w_ck over all outputs c, for codes x_k in [low, high].

    `weights` is (outputs, K), with zero points already subtracted (from low and high too).
    With H = max(high, 0) and L = max(-low, 0), a term x·w lies in an interval holding 0 —
    [-L·w, H·w] for w > 0, [H·w, -L·w] for w < 0 — so a sum over any subset of the terms, which
    is what a float accumulator holds at every step in any order, lies in [-(L·P + H·N),
    H·P + L·N], where P = Σ_{w>0} w and N = Σ_{w<0} |w| per output. Exact Python integers.
    """
    if weights.size == 0:
        return 0
    weights = weights.astype(np.int64)
    positive = np.where(weights > 0, weights, 0).sum(axis=1).tolist()
    negative = np.where(weights < 0, -weights, 0).sum(axis=1).tolist()
    above, below = max(high, 0), max(-low, 0)  # H and L
    return max(
        max(above * p + below * n, below * p + above * n) for p, n in zip(positive, negative)
    )


def data_range(x: np.ndarray, zero_point: int = 0) -> tuple[int, int]:
    """[min, max] of the actual values minus the zero point ((0, 0) for an empty tensor)."""
    if x.size == 0:
        return 0, 0
    return int(x.min()) - zero_point, int(x.max()) - zero_point


def conv_weight_matrix(w: np.ndarray, w_zero_point: np.ndarray | None) -> np.ndarray:
    """ConvInteger weights minus their zero points as an int64 (M, kernel_h·kernel_w·C) matrix.

    Columns run (kernel row, kernel column, channel), the order of the patches below.
    """
    weights = shifted_conv_weights(w, w_zero_point)
    return weights.transpose(0, 2, 3, 1).reshape(weights.shape[0], -1)


def matmul_weight_matrix(b: np.ndarray) -> np.ndarray:
    """MatMul's right operand as (outputs, K) rows: one row per output column (and batch)."""
    b = b if b.ndim > 1 else b[:, None]
    return np.moveaxis(b, -1, -2).reshape(-1, b.shape[-2])


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
    if w.shape[1] != channels:  # numpy would only fail later, with a reshape message
        raise ValueError(f"input has {channels} channels, the weights expect {w.shape[1]}")
    if out_h < 1 or out_w < 1:
        raise ValueError(f"the {kernel_h}x{kernel_w} kernel is larger than the padded input")
    x_zero = 0 if x_zero_point is None else int(np.asarray(x_zero_point).reshape(-1)[0])
    weights = conv_weight_matrix(w, w_zero_point)
    if gemm_dtype is None:
        bound = accumulator_bound(weights, *data_range(x, x_zero))
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
    weight_matrix = weights.astype(dtype)
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


def matmul(a: np.ndarray, b: np.ndarray, *, gemm_dtype: str | None = None) -> np.ndarray:
    """ONNX MatMul; integer operands go through the exact GEMM dtype (None: from the data)."""
    if a.dtype.kind == "f":
        return np.matmul(a, b)
    if gemm_dtype is None:
        gemm_dtype = exact_gemm_dtype(accumulator_bound(matmul_weight_matrix(b), *data_range(a)))
    dtype = np.dtype(gemm_dtype)
    return _to_int(np.matmul(a.astype(dtype), b.astype(dtype)), a.dtype)
