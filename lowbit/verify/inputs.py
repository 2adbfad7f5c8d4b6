"""Verification inputs: real images, seeded random images, and input-quantizer ties."""

from __future__ import annotations

import numpy as np

from lowbit.core.integers import int_range


def random_inputs(count: int, size: int, *, max_abs: float, seed: int) -> np.ndarray:
    """Returns `count` seeded images: half uniform over the input range, half Gaussian."""
    rng = np.random.default_rng(seed)
    half = count // 2
    uniform = rng.uniform(-max_abs, max_abs, size=(half, 3, size, size))
    gaussian = np.clip(
        rng.normal(0.0, max_abs / 2, size=(count - half, 3, size, size)), -max_abs, max_abs
    )
    return np.concatenate([uniform, gaussian]).astype(np.float32)


def tie_inputs(
    count: int, size: int, *, input_scale: float, input_bits: int, seed: int
) -> np.ndarray:
    """Returns images whose every pixel lies exactly on a rounding tie of the input quantizer.

    Each value is (k + 1/2) · scale for a random integer k, so x / scale is exactly k + 1/2 and the
    quantizer must round half to even; half of the images use even k, half odd k.
    """
    rng = np.random.default_rng(seed)
    low, high = int_range(input_bits, signed=True)
    k = rng.integers(low, high, size=(count, 3, size, size))
    k[: count // 2] &= ~1  # even k: ties round down to k (toward even)
    k[count // 2 :] |= 1  # odd k: ties round up to k + 1
    k = np.clip(k, low, high - 1)
    return ((k + 0.5) * input_scale).astype(np.float32)
