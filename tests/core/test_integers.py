"""int_range and quantize against the reference formulas: brute force over bit patterns,
qonnx's Quant (clamp then round) and torch / Brevitas (round then clamp), ties included."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from qonnx.custom_op.general.quant import max_int, min_int
from qonnx.custom_op.general.quant import quant as qonnx_quant

from lowbit.core.integers import int_range, quantize, round_half_even


def brute_force_range(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
    """Every value a `bits`-bit pattern holds (two's complement when signed), narrowed by
    QONNX's rule: a narrow signed range drops its lowest value, a narrow unsigned one its top."""
    values = sorted(
        pattern - 2**bits if signed and pattern >= 2 ** (bits - 1) else pattern
        for pattern in range(2**bits)
    )
    if narrow:
        values = values[1:] if signed else values[:-1]
    return values[0], values[-1]


@given(bits=st.integers(1, 12), signed=st.booleans(), narrow=st.booleans())
def test_int_range_is_every_value_of_the_bit_patterns(bits, signed, narrow):
    assert int_range(bits, signed, narrow) == brute_force_range(bits, signed, narrow)
    assert int_range(bits, signed, narrow) == (
        min_int(signed, narrow, bits),
        max_int(signed, narrow, bits),
    )
    if signed and narrow:
        low, high = int_range(bits, signed, narrow)
        assert low == -high  # symmetric: ternary {-1, 0, 1} at 2 bits


def test_round_half_even_rounds_ties_to_even():
    ties = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5], dtype=np.float32)
    assert np.array_equal(round_half_even(ties), [-2, -2, -0, 0, 2, 2])
    assert np.array_equal(round_half_even(ties), torch.round(torch.from_numpy(ties)).numpy())


@st.composite
def quantizer_inputs(draw):
    """(x float32, scale, bits, signed, narrow): a quarter of the values lie exactly on a rounding
    tie (k + 1/2) · scale of a power-of-two scale, some far outside the range."""
    bits, signed, narrow = draw(st.integers(2, 8)), draw(st.booleans()), draw(st.booleans())
    pow2 = draw(st.booleans())
    scale = (
        np.float32(2.0 ** draw(st.integers(-8, 2)))
        if pow2
        else np.float32(draw(st.floats(1e-3, 4.0, allow_nan=False)))
    )
    reach = float(scale) * 2 ** (bits + 1)
    floats = st.floats(-reach, reach, allow_nan=False, width=32)
    values = draw(st.lists(floats, min_size=1, max_size=64))
    if pow2:
        ks = draw(st.lists(st.integers(-(2 ** (bits + 1)), 2 ** (bits + 1)), max_size=16))
        values += [(k + 0.5) * float(scale) for k in ks]
    return np.asarray(values, dtype=np.float32), scale, bits, signed, narrow


@settings(max_examples=300, deadline=None)
@given(quantizer_inputs())
def test_quantize_equals_torch_round_then_clamp_and_qonnx_clamp_then_round(case):
    x, scale, bits, signed, narrow = case
    low, high = int_range(bits, signed, narrow)
    codes = quantize(x, scale, low, high)
    assert codes.dtype == np.float32
    # Brevitas' order (and torch.round's ties): round, then clamp
    brevitas = torch.clamp(torch.round(torch.from_numpy(x) / torch.tensor(scale)), low, high)
    assert np.array_equal(codes, brevitas.numpy())
    # QONNX Quant's order: clamp, then round; equal because the bounds are integers
    qonnx = qonnx_quant(x, scale, np.float32(0), np.float32(bits), signed, narrow, "ROUND")
    assert np.array_equal(codes * scale, qonnx)
    assert codes.min() >= low and codes.max() <= high
