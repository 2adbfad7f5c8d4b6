"""PatchCore's local aggregation on integer codes: a k x k box sum, still integers."""

from __future__ import annotations

import numpy as np


def aggregate_pads(k: int) -> tuple[int, int]:
    """Return (before, after): the zero padding of each spatial axis that keeps the map's size.

    Position y sums rows y - k//2 ... y - k//2 + k - 1: centred for odd k, one row more above
    than below for even k.
    """
    return k // 2, k - 1 - k // 2


def aggregate(codes: np.ndarray, k: int) -> np.ndarray:
    """Return the int64 k x k sums of codes [N, C, H, W] over a zero-padded window, same size.

    PatchCore (Roth et al., CVPR 2022, Sec. 3.1) pools each patch feature with its
    neighbourhood; a sum instead of a mean keeps the codes integers (the 1/k² scales every
    distance alike and changes no nearest neighbour).
    """
    if k < 1:
        raise ValueError(f"aggregation size must be at least 1, got {k}")
    codes = np.asarray(codes).astype(np.int64)
    if k == 1:
        return codes
    _, _, h, w = codes.shape
    before, after = aggregate_pads(k)
    padded = np.pad(codes, ((0, 0), (0, 0), (before, after), (before, after)))
    return sum(padded[:, :, i : i + h, j : j + w] for i in range(k) for j in range(k))


def aggregated_range(code_range: tuple[int, int], k: int) -> tuple[int, int]:
    """Return [low, high] of k x k sums of codes in `code_range` (zero padding included)."""
    low, high = (int(v) for v in code_range)
    return k * k * min(low, 0), k * k * max(high, 0)
