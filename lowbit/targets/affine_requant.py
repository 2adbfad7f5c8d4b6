"""Fixed-point affine requantizers equal to a threshold row: for toolchains without MultiThreshold.

A `MultiThreshold` row maps an integer accumulator to `code = #{t : acc >= t} + out_bias`. A
toolchain that only has "scale, add, round half to even, saturate" (hls4ml's BatchNormalization
followed by a QONNX `Quant` with `rounding_mode=ROUND`, i.e. `AP_RND_CONV`, `AP_SAT`) computes
`code = clamp(rhe(a·acc + b), qmin, qmax)`. For each channel we look for dyadic `a >= 0`, `b`
(exact in fixed point) such that both agree on every accumulator of the reachable range
`[lo, hi]`. Both sides are monotone in `acc`, so agreement at each threshold and just below it
(or at the range ends for levels reached everywhere / never) is agreement everywhere.

The conditions are linear in (a, b), half-open at the tie `k - 1/2` according to round half to
even, so they are solved exactly with `Fraction`s: first the interval of feasible `a` (pairs of a
lower and an upper condition), then its simplest dyadic point, then the interval of `b`. A
threshold row that came from a float requantizer whose pre-rounding value is affine in `acc`
(BN + power-of-two scales) is always representable, planted ties included. A row that no
affine map reproduces (float rounding artefacts of a non-power-of-two model) raises ConfigError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from lowbit.errors import ConfigError

MAX_FRACTION_BITS = 40  # the affine parameters must stay exact in float64 and in ap_fixed


@dataclass(frozen=True)
class _Bound:
    acc: int
    level: Fraction  # the code boundary v - 1/2
    lower: bool  # True: a·acc + b >= level (reach code v); False: <= level (stay below v)
    strict: bool  # the tie itself rounds the other way


def _conditions(row: np.ndarray, lo: int, hi: int, out_bias: int) -> list[_Bound]:
    bounds: set[_Bound] = set()
    for k, threshold in enumerate(row.tolist(), start=1):
        code = k + out_bias
        level = Fraction(2 * code - 1, 2)
        reach = _Bound(max(threshold, lo), level, True, strict=code % 2 != 0)
        below = _Bound(min(threshold - 1, hi), level, False, strict=code % 2 == 0)
        if threshold > lo:
            bounds.add(below)
        if threshold <= hi:
            bounds.add(reach)
    return sorted(bounds, key=lambda b: (b.acc, b.level, b.lower))


def _simplest_dyadic(low, low_strict, high, high_strict) -> Fraction | None:
    """Returns the dyadic with the fewest fraction bits in the interval (None: no such dyadic)."""

    def inside(x: Fraction) -> bool:
        above = low is None or (x > low if low_strict else x >= low)
        below = high is None or (x < high if high_strict else x <= high)
        return above and below

    if inside(Fraction(0)):
        return Fraction(0)
    for bits in range(MAX_FRACTION_BITS + 1):
        unit = Fraction(1, 2**bits)
        if low is not None and low >= 0:
            candidate = math.ceil(low / unit) * unit
            if candidate == low and low_strict:
                candidate += unit
        else:
            candidate = math.floor(high / unit) * unit
            if candidate == high and high_strict:
                candidate -= unit
        if inside(candidate):
            return candidate
    return None


def solve_row(row: np.ndarray, lo: int, hi: int, out_bias: int) -> tuple[Fraction, Fraction]:
    """Returns dyadic (a, b) with clamp(rhe(a·acc + b)) == MultiThreshold(row) on [lo, hi].

    Raises ValueError when no dyadic pair with at most MAX_FRACTION_BITS fraction bits exists.
    """
    bounds = _conditions(np.asarray(row, dtype=np.int64), int(lo), int(hi), int(out_bias))
    lowers = [b for b in bounds if b.lower]
    uppers = [b for b in bounds if not b.lower]
    a_low, a_low_strict, a_high, a_high_strict = Fraction(0), False, None, False
    for low_bound in lowers:
        for up in uppers:
            span, gap = up.acc - low_bound.acc, up.level - low_bound.level
            strict = low_bound.strict or up.strict
            if span == 0:
                if gap < 0 or (gap == 0 and strict):
                    raise ValueError(f"contradictory conditions at acc={up.acc}")
                continue
            limit = gap / span
            if span > 0 and (a_high is None or limit < a_high or (limit == a_high and strict)):
                a_high, a_high_strict = limit, strict
            elif span < 0 and (limit > a_low or (limit == a_low and strict)):
                a_low, a_low_strict = limit, strict
    a = _simplest_dyadic(a_low, a_low_strict, a_high, a_high_strict)
    if a is None:
        raise ValueError(f"no dyadic slope in [{a_low}, {a_high}]")
    b_low = b_high = None
    b_low_strict = b_high_strict = False
    for bound in bounds:
        edge = bound.level - a * bound.acc
        if bound.lower and (b_low is None or edge > b_low or (edge == b_low and bound.strict)):
            b_low, b_low_strict = edge, bound.strict
        if not bound.lower and (
            b_high is None or edge < b_high or (edge == b_high and bound.strict)
        ):
            b_high, b_high_strict = edge, bound.strict
    b = _simplest_dyadic(b_low, b_low_strict, b_high, b_high_strict)
    if b is None:
        raise ValueError(f"no dyadic offset in [{b_low}, {b_high}] for slope {a}")
    return a, b


def affine_code(a: Fraction, b: Fraction, acc: int, qmin: int, qmax: int) -> int:
    """Returns clamp(round_half_even(a·acc + b), qmin, qmax), exactly."""
    return min(max(round(a * acc + b), qmin), qmax)  # round(Fraction) is half to even


def solve_layer(
    thresholds: np.ndarray, lo: np.ndarray, hi: np.ndarray, out_bias: int, where: str
) -> list[tuple[Fraction, Fraction]]:
    """Returns per-channel (a, b); ConfigError naming `where` and the channel if one has none."""
    pairs = []
    levels = thresholds.shape[1]
    for channel, row in enumerate(thresholds):
        try:
            a, b = solve_row(row, lo[channel], hi[channel], out_bias)
        except ValueError as error:
            raise ConfigError(
                f"{where} channel {channel}: its thresholds have no exact fixed-point affine "
                f"form ({error}); export with power-of-two scales (pow2_scales=True)"
            ) from None
        for bound in _conditions(row, lo[channel], hi[channel], out_bias):  # internal invariant
            code = affine_code(a, b, bound.acc, out_bias, out_bias + levels)
            expected = int((row <= bound.acc).sum()) + out_bias
            assert code == expected, f"{where} channel {channel}: affine form disagrees"
        pairs.append((a, b))
    return pairs


def fraction_bits(values: list[Fraction]) -> int:
    """Returns the fraction bits that represent every dyadic in `values` exactly."""
    return max((int(v.denominator).bit_length() - 1 for v in values), default=0)
