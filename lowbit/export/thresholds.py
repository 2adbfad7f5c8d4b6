"""Integer thresholds that reproduce a float requantizer on every reachable accumulator value.

A quantized layer computes `code = q(f(acc · S))`: exact integer accumulator `acc`, its scale `S`,
then the float model's own BatchNorm / scaling / rounding operations. For one channel, `code` is a
monotone step function of `acc` (BN slope > 0: non-decreasing; < 0: non-increasing; 0: constant),
so it equals QONNX/FINN `MultiThreshold` semantics, `code = #{t : acc ≥ t} + out_bias`, with one
threshold per level: the smallest accumulator that reaches that level. We find each threshold by
binary search, evaluating the float model's own operations (passed in as `requant`), so the tie
rule (round half to even) and every float32 rounding are reproduced, not re-derived.

A non-increasing channel is searched on `acc' = -acc`; the caller negates that channel's weight
row, so thresholds stay increasing and the graph stays a valid MultiThreshold graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# requant(acc) -> codes: float64 array [M, C] of integer accumulators in, integer codes [M, C] out.
Requant = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Thresholds:
    """Per-channel thresholds [C, levels], row signs (+1 / -1), and MultiThreshold's out_bias."""

    values: np.ndarray  # int64 [C, L], non-decreasing per row, within [lo', hi' + 1]
    sign: np.ndarray  # int64 [C]: -1 where the weight row must be negated
    out_bias: int


def derive_thresholds(
    requant: Requant, lo: np.ndarray, hi: np.ndarray, *, levels: int, out_bias: int
) -> Thresholds:
    """Returns thresholds reproducing `requant` on every integer acc in [lo_c, hi_c] per channel.

    `levels` is the number of thresholds (2^bits - 1); codes lie in [out_bias, out_bias + levels].
    """
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    channels = lo.shape[0]
    ends = np.stack([lo, hi]).astype(np.float64)
    code_lo, code_hi = requant(ends)
    sign = np.where(code_hi < code_lo, -1, 1).astype(np.int64)
    # search space in the (possibly negated) accumulator: [low, high]
    low = np.where(sign > 0, lo, -hi)
    high = np.where(sign > 0, hi, -lo)

    def count(acc_signed: np.ndarray) -> np.ndarray:
        codes = requant((acc_signed * sign[None, :]).astype(np.float64))
        return np.asarray(codes, dtype=np.int64) - out_bias

    # For level k (1..L): smallest a in [low, high + 1] with count(a) >= k; high + 1 = never.
    target = np.arange(1, levels + 1, dtype=np.int64)[:, None]  # [L, 1]
    left = np.broadcast_to(low, (levels, channels)).copy()
    right = np.broadcast_to(high + 1, (levels, channels)).copy()
    while np.any(left < right):
        mid = (left + right) // 2  # floor, also for negative values
        reached = count(mid) >= target
        right = np.where(reached & (left < right), mid, right)
        left = np.where(~reached & (left < right), mid + 1, left)
    values = left.T.copy()  # [C, L]
    _check_monotone(values, count, low, high)
    return Thresholds(values=values, sign=sign, out_bias=out_bias)


def _check_monotone(values: np.ndarray, count: Callable, low: np.ndarray, high: np.ndarray) -> None:
    """Internal invariant: rows sorted; the count at low and at high matches the thresholds."""
    assert np.all(np.diff(values, axis=1) >= 0), "thresholds not sorted"
    for probe in (low, high):
        expected = (values <= probe[:, None]).sum(axis=1)
        got = count(probe[None, :])[0]
        assert np.array_equal(expected, got), "requant is not monotone over the reachable range"


def apply_thresholds(acc: np.ndarray, values: np.ndarray, out_bias: int) -> np.ndarray:
    """Returns MultiThreshold(acc) for acc [M, C]: #{t in row c : acc ≥ t} + out_bias."""
    return (acc[:, :, None] >= values[None, :, :]).sum(axis=2) + out_bias
