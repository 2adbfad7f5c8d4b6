"""derive_thresholds reproduces a float32 requantizer on every reachable accumulator and tie."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from qonnx.custom_op.general.multithreshold import multithreshold
from qonnx.custom_op.general.quant import quant as qonnx_quant

from lowbit.export.thresholds import apply_thresholds, derive_thresholds

ACC_LIMIT = 3000  # |acc| bound: small enough to check every integer


def make_requant(acc_scale, slope, offset, out_scale, code_lo, code_hi):
    """The float model's ops after the integer part, one float32 rounding per op.

    x = float32(acc) * S; y = x * a + b (two ops, as AffineBatchNorm2d); code = clip(round(y / s)).
    np.round is round half to even, like torch.round and QONNX ROUND.
    """
    acc_scale = np.asarray(acc_scale, np.float32)[None, :]
    slope = np.asarray(slope, np.float32)[None, :]
    offset = np.asarray(offset, np.float32)[None, :]
    out_scale = np.float32(out_scale)

    def requant(acc: np.ndarray) -> np.ndarray:
        x = acc.astype(np.float32) * acc_scale
        y = x * slope
        y = y + offset
        return np.clip(np.round(y / out_scale), code_lo, code_hi).astype(np.int64)

    return requant


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def every_reachable(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Returns [M, C]: column c runs over every integer of [lo_c, hi_c] (ends repeated)."""
    grid = np.arange(lo.min(), hi.max() + 1, dtype=np.int64)[:, None]
    return np.clip(grid, lo[None, :], hi[None, :])


def derive(requant, lo, hi, bits: int, signed: bool):
    code_lo, _ = code_range(bits, signed)
    lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
    return derive_thresholds(requant, lo, hi, levels=2**bits - 1, out_bias=code_lo)


def thresholded(result, acc: np.ndarray) -> np.ndarray:
    """What the graph computes: the weight row of a sign -1 channel is negated at export."""
    return apply_thresholds(acc * result.sign[None, :], result.values, result.out_bias)


@st.composite
def layers(draw):
    """A random quantized layer: per-channel scale, BN slope/offset, output scale and range."""
    channels = draw(st.integers(1, 4))
    signed = draw(st.booleans())
    bits = draw(st.integers(3, 5)) if signed else draw(st.integers(1, 4))
    pow2 = draw(st.booleans())

    def scale(low_exp: int = -10) -> float:
        if pow2:
            return 2.0 ** draw(st.integers(low_exp, 0))
        return draw(st.floats(2.0**-10, 1.0, width=32))

    acc_scale = [scale() for _ in range(channels)]
    slope = draw(
        st.lists(
            st.one_of(
                st.just(0.0),
                st.sampled_from([1.0, -1.0, 0.5, -0.25]),
                st.floats(-4.0, 4.0, width=32),
            ),
            min_size=channels,
            max_size=channels,
        )
    )
    lo = np.array([draw(st.integers(-ACC_LIMIT, ACC_LIMIT)) for _ in range(channels)])
    hi = np.array([draw(st.integers(int(low), ACC_LIMIT)) for low in lo])
    # an output scale that spreads the reachable values over the codes (plus some saturation)
    span = float(np.max(np.abs(np.array(acc_scale) * np.array(slope)) * (hi - lo + 1)))
    if span > 0 and draw(st.integers(0, 3)) > 0:
        out_scale = span / (2**bits - 1) * draw(st.floats(0.2, 2.0))
        if pow2:
            out_scale = 2.0 ** np.round(np.log2(out_scale))
    else:
        out_scale = scale(low_exp=-6)
    out_scale = max(out_scale, 1e-6)
    # offsets in output steps, centring the range on the codes; half-integers make ties likely
    levels = 2**bits
    offset = []
    for c in range(channels):
        centre = -acc_scale[c] * slope[c] * (lo[c] + hi[c]) / 2 / out_scale
        steps = draw(
            st.one_of(
                st.floats(-levels, levels),
                st.integers(-levels, levels).map(lambda k: k + 0.5),
            )
        )
        offset.append((centre + steps) * out_scale if draw(st.booleans()) else steps * out_scale)
    code_lo, code_hi = code_range(bits, signed)
    requant = make_requant(acc_scale, slope, offset, out_scale, code_lo, code_hi)
    return requant, lo, hi, bits, signed


@settings(max_examples=300, deadline=None, derandomize=True)
@given(layers())
def test_thresholds_equal_requant_on_every_reachable_accumulator(layer) -> None:
    requant, lo, hi, bits, signed = layer
    result = derive(requant, lo, hi, bits, signed)
    acc = every_reachable(lo, hi)
    assert np.array_equal(thresholded(result, acc), requant(acc.astype(np.float64)))
    # MultiThreshold's own definition (qonnx) agrees with apply_thresholds
    signed_acc = (acc * result.sign[None, :]).astype(np.float64)
    expected = multithreshold(signed_acc, result.values.astype(np.float64), 1.0, result.out_bias)
    assert np.array_equal(expected, thresholded(result, acc))
    # invariants of a valid MultiThreshold graph
    assert np.all(np.diff(result.values, axis=1) >= 0)
    assert result.values.shape == (len(lo), 2**bits - 1)


@pytest.mark.parametrize("slope", [0.0, -0.0])
def test_zero_slope_channel_is_constant(slope: float) -> None:
    requant = make_requant([0.25, 0.25], [slope, 1.0], [2.3, 0.0], 1.0, 0, 3)
    lo, hi = np.array([-100, -100]), np.array([100, 100])
    result = derive(requant, lo, hi, 2, False)
    acc = every_reachable(lo, hi)
    codes = thresholded(result, acc)
    assert np.all(codes[:, 0] == 2)  # round(2.3) everywhere
    assert np.array_equal(codes, requant(acc.astype(np.float64)))
    assert result.sign[0] == 1
    # thresholds of a constant channel: reached from the start (low) or never (high + 1)
    assert set(result.values[0].tolist()) <= {-100, 101}


def test_negative_slope_negates_the_row() -> None:
    requant = make_requant([1.0], [-0.5], [0.0], 1.0, 0, 3)
    result = derive(requant, [-10], [10], 2, False)
    assert result.sign.tolist() == [-1]
    acc = every_reachable(np.array([-10]), np.array([10]))
    assert np.array_equal(thresholded(result, acc), requant(acc.astype(np.float64)))


# --- ties: accumulators whose scaled value lands exactly on k + 1/2 --------------------------


def codes_on(requant_args, lo: int, hi: int, bits: int, signed: bool) -> np.ndarray:
    code_lo, code_hi = code_range(bits, signed)
    requant = make_requant(*requant_args, code_lo, code_hi)
    result = derive(requant, [lo], [hi], bits, signed)
    acc = np.arange(lo, hi + 1)[:, None]
    codes = thresholded(result, acc)[:, 0]
    assert np.array_equal(codes, requant(acc.astype(np.float64))[:, 0])
    return codes


def test_tie_every_accumulator_half_to_even() -> None:
    # S = 1, a = 1, b = 0.5 * s_out: y / s_out = acc + 1/2 for every acc
    codes = codes_on(([1.0], [1.0], [0.5], 1.0), -1, 6, 4, False)
    assert codes.tolist() == [0, 0, 2, 2, 4, 4, 6, 6]  # -0.5, 0.5, 1.5, ... to even


def test_tie_thresholds_values() -> None:
    code_lo, code_hi = code_range(3, False)
    requant = make_requant([1.0], [1.0], [0.5], 1.0, code_lo, code_hi)
    result = derive(requant, [-5], [20], 3, False)
    # level k is reached at the first acc with round_half_even(acc + 0.5) >= k
    assert result.values[0].tolist() == [1, 1, 3, 3, 5, 5, 7]


def test_tie_pow2_scales() -> None:
    # S = 2^-3, s_out = 2^-2: y / s_out = acc / 2, a tie at every odd acc
    codes = codes_on(([0.125], [1.0], [0.0], 0.25), 0, 7, 3, False)
    assert codes.tolist() == [0, 0, 1, 2, 2, 2, 3, 4]


def test_tie_negative_slope() -> None:
    # y = 7.5 - acc: ties everywhere, falling
    codes = codes_on(([1.0], [-1.0], [7.5], 1.0), 0, 7, 4, False)
    assert codes.tolist() == [8, 6, 6, 4, 4, 2, 2, 0]


def test_tie_signed_output() -> None:
    # y = acc / 2 into a signed 3-bit code [-4, 3], acc = -9 .. 7
    codes = codes_on(([0.5], [1.0], [0.0], 1.0), -9, 7, 3, True)
    #   y:  -4.5 -4 -3.5 -3 -2.5 -2 -1.5 -1 -0.5 0 0.5 1 1.5 2 2.5 3 3.5
    assert codes.tolist() == [-4, -4, -4, -3, -2, -2, -2, -1, 0, 0, 0, 1, 2, 2, 2, 3, 3]


def test_ties_matter_half_up_gives_other_thresholds() -> None:
    """The tie rule is not a detail: a half-up requantizer gives different thresholds."""
    code_lo, code_hi = code_range(3, False)
    half_even = make_requant([1.0], [1.0], [0.5], 1.0, code_lo, code_hi)

    def half_up(acc: np.ndarray) -> np.ndarray:
        y = acc.astype(np.float32) + np.float32(0.5)
        return np.clip(np.floor(y + np.float32(0.5)), code_lo, code_hi).astype(np.int64)

    even = derive(half_even, [-5], [20], 3, False).values
    up = derive(half_up, [-5], [20], 3, False).values
    assert up[0].tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert not np.array_equal(even, up)


# --- QONNX clamps then rounds, Brevitas rounds then clamps -----------------------------------

values_with_ties = st.one_of(
    st.floats(-300.0, 300.0, allow_nan=False, width=32),
    st.integers(-300, 300).map(lambda k: k + 0.5),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.lists(values_with_ties, min_size=1, max_size=64),
    st.integers(-200, 200),
    st.integers(0, 200),
)
def test_clamp_then_round_equals_round_then_clamp_for_integer_bounds(values, lo, width) -> None:
    x = np.array(values, dtype=np.float32)
    hi = lo + width
    qonnx_order = np.round(np.clip(x, lo, hi))
    brevitas_order = np.clip(np.round(x), lo, hi)
    assert np.array_equal(qonnx_order, brevitas_order)
    torch_order = torch.clamp(torch.round(torch.from_numpy(x)), lo, hi).numpy()
    assert np.array_equal(torch_order, brevitas_order)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(values_with_ties, min_size=1, max_size=64),
    st.integers(2, 8),  # qonnx treats 1-bit signed as a special (bipolar-like) range
    st.booleans(),
    st.booleans(),
)
def test_qonnx_quant_equals_round_then_clamp(values, bits, signed, narrow) -> None:
    x = np.array(values, dtype=np.float32)
    if signed:
        lo, hi = -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1 - int(narrow)
    got = qonnx_quant(
        x, np.float32(1.0), np.float32(0.0), np.float32(bits), signed, narrow, "ROUND"
    )
    assert np.array_equal(got, np.clip(np.round(x), lo, hi))


def test_non_integer_bounds_would_break_the_equivalence() -> None:
    x = np.array([2.5, 2.7], np.float32)
    assert not np.array_equal(np.round(np.clip(x, 0, 2.5)), np.clip(np.round(x), 0, 2.5))


def test_round_half_to_even_hand_cases() -> None:
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5], np.float32)
    assert np.round(x).tolist() == [-2, -2, -0, 0, 2, 2, 4]
    assert torch.round(torch.from_numpy(x)).tolist() == [-2, -2, -0, 0, 2, 2, 4]
