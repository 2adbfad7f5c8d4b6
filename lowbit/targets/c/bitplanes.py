"""Bit planes of the C target's bit-serial convolution: weight and activation packing, in numpy.

A 1- or 2-bit weight layer times unsigned activation codes of at most 4 bits is a sum of
popcounts (Courbariaux et al. 2016, "Binarized Neural Networks", sec. 1.4; Umuroglu and Jahre
2017, "Streamlined deployment for quantized neural networks", sec. 3.1): with a = Σ_b 2^b a_b
and w = Σ_j c_j w_j,

    Σ_taps a·w = Σ_b Σ_j 2^b c_j · popcount(a_b AND w_j)

over 64 channels per 64-bit word. Weights: bipolar 1-bit codes {-1, +1} are one plane w_0 =
[code = +1] with Σ a·w = Σ_b 2^b (2 popcount(a_b AND w_0) - popcount(a_b)), since a_b is zero
wherever there is no tap; wider codes are their two's complement planes, c_j = 2^j and
c_{B-1} = -2^(B-1) (a narrow ternary {-1, 0, 1} code is then "nonzero" w_0 minus twice
"negative" w_1). Channel c of a pixel is bit c % 64 of word c // 64; channels past the layer's
count and pixels of the zero padding are 0 in every activation plane: the code the graph pads
with (ConvInteger without zero points pads with 0).

`weight_planes` packs a layer's weights once at export and `stored_weight_planes` puts the output
channel last, the order the C target stores (each window word's planes for every output channel
side by side, which a vector popcount reads in one load); `activation_planes` is the numpy twin
of the generated `lb_pack_planes` (tests), `plane_coefficients` the c_j.
"""

from __future__ import annotations

import numpy as np

from lowbit.targets.c.pack import weight_field

WORD_BITS = 64
MAX_WEIGHT_BITS = 2
MAX_ACTIVATION_BITS = 4


def words_per_pixel(channels: int) -> int:
    """64-bit words that hold one bit of every channel of a pixel."""
    return -(-channels // WORD_BITS)


def plane_coefficients(bits: int) -> list[int]:
    """c_j of the weight planes: [1] for bipolar 1-bit codes (see the module docstring), else
    two's complement: 2^j, the top plane -2^(bits-1)."""
    if bits == 1:
        return [1]
    return [2**j for j in range(bits - 1)] + [-(2 ** (bits - 1))]


def _pack_words(bits: np.ndarray) -> np.ndarray:
    """[..., words * 64] of 0/1 -> [..., words] uint64, bit c of word j = element 64 j + c."""
    shape = bits.shape[:-1] + (bits.shape[-1] // WORD_BITS, WORD_BITS)
    weights = np.left_shift(np.uint64(1), np.arange(WORD_BITS, dtype=np.uint64))
    return (bits.reshape(shape).astype(np.uint64) * weights).sum(axis=-1, dtype=np.uint64)


def weight_planes(weights: np.ndarray, bits: int, where: str = "weights") -> np.ndarray:
    """uint64 [cout, kh, kw, words, planes] of ConvInteger weight codes [cout, cin, kh, kw].

    planes = 1 for bipolar 1-bit codes (bit = code is +1), else `bits` two's complement
    planes; ConfigError (pack.weight_field) for codes outside the width.
    """
    cout, cin, kh, kw = weights.shape
    fields = weight_field(weights, bits, where).reshape(weights.shape)
    padded = np.zeros((cout, words_per_pixel(cin) * WORD_BITS, kh, kw), np.uint64)
    padded[:, :cin] = fields
    planes = (padded[..., None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)
    # [cout, channels, kh, kw, planes] -> [cout, kh, kw, planes, channels] -> pack channels
    words = _pack_words(planes.transpose(0, 2, 3, 4, 1))  # [cout, kh, kw, planes, words]
    return np.ascontiguousarray(words.transpose(0, 1, 2, 4, 3))


def stored_weight_planes(weights: np.ndarray, bits: int, where: str = "weights") -> np.ndarray:
    """uint64 [kh, kw, words, planes, cout]: weight_planes with the output channel last, the
    layout of the C target's bit-serial kernels."""
    return np.ascontiguousarray(np.moveaxis(weight_planes(weights, bits, where), 0, -1))


def activation_planes(
    codes: np.ndarray, planes: int, pads: tuple[int, int, int, int]
) -> np.ndarray:
    """uint64 [ph, pw, words, planes] of unsigned codes [channels, h, w] zero-padded by
    (top, left, bottom, right): the layout `lb_pack_planes` writes."""
    channels, h, w = codes.shape
    top, left, bottom, right = pads
    padded = np.zeros((words_per_pixel(channels) * WORD_BITS, h + top + bottom, w + left + right))
    padded = padded.astype(np.uint64)
    padded[:channels, top : top + h, left : left + w] = codes
    bits = (padded[..., None] >> np.arange(planes, dtype=np.uint64)) & np.uint64(1)
    words = _pack_words(bits.transpose(1, 2, 3, 0))  # [ph, pw, planes, words]
    return np.ascontiguousarray(words.transpose(0, 1, 3, 2))
