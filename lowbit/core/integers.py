"""Integer codes: the range a bit width holds, and the one rounding rule that maps floats onto it.

A quantized tensor is x = scale · q with q an integer in `int_range(bits, signed, narrow)`
(QONNX `Quant` semantics: a narrow range drops the most negative signed code, -2^(bits-1), or
the largest unsigned one, 2^bits - 1, so that a signed range is symmetric). Rounding is
half to even, like torch.round, np.round and QONNX's ROUND, and a quantizer that reproduces the
float model must reproduce its ties too (DESIGN.md, quantization semantics).
"""

from __future__ import annotations

import numpy as np


def int_range(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """Returns (lowest, highest) integer code of a `bits`-bit quantizer."""
    if signed:
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1 - int(narrow)


def round_half_even(x: np.ndarray) -> np.ndarray:
    """Returns x rounded to the nearest integer, ties to even, in x's float dtype."""
    return np.round(x)


def quantize(x: np.ndarray, scale: float | np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Returns the codes clip(round_half_even(x / scale), lo, hi), in the float dtype of x / scale.

    Brevitas rounds then clamps and QONNX clamps then rounds: with integer bounds both give
    these codes (tests/core/test_integers.py).
    """
    return np.clip(round_half_even(np.asarray(x) / scale), lo, hi)
