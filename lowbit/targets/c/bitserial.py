"""The C target's fast convolutions (`kernel="bitserial"`): bit-serial popcount kernels for 1- and
2-bit weight layers, vectorizable multiply-adds for the others.

A `ConvInteger` whose weights are bipolar 1-bit or 2-bit codes (model.json weight_bits) and whose
input is unsigned codes below 2^4 (the range its MultiThreshold gives, through MaxPool and
aliases) runs as two steps: `lb_pack_planes` writes the input's bit planes into a zero-padded
pixel grid (bitplanes.py: [ph][pw][words][planes], one bit per channel), then `lb_bitconv_*`
computes each accumulator as AND + popcount sums over the 64-bit words of its window, against
weight planes packed once at export with the output channel last ([kh][kw][words][planes][cout]).
One kernel is written per (activation planes, weight planes, kh, kw, words, cout), so its loops
have constant bounds, with up to three bodies picked at run time:
- vector (x86-64 with GCC >= 8 or Clang >= 10, cout a multiple of 8, a CPU with AVX-512
  VPOPCNTDQ): per window word, one loop over the output channels that the compiler turns into
  8-lane vector popcounts, at -O2 too (the body's target attribute);
- builtin: per output channel, the window's popcount terms written out with
  `__builtin_popcountll` (the POPCNT instruction where the CPU has it);
- portable: the same with a SWAR popcount (other compilers, or -DLOWBIT_NO_BUILTIN_POPCOUNT).
-DLOWBIT_NO_VECTOR_POPCOUNT leaves the vector body out. All three compute the same integers in
int32: every partial sum is at most sum_b 2^b sum_j |c_j| <= 15 x 3 = 45 times the window's taps
in magnitude, far inside int32 for any layer under 47 million taps. Every other convolution (the
8-bit first layer) runs as int16 dot products over a constant number of taps (each output row's
windows copied into columns, four output channels at a time): a loop compilers vectorize at -O2
(x86: pmaddwd). The accumulators are the graph's NCHW int32 tensors, equal to the scalar reference's
(`kernel="scalar"`, templates.CONV), which stays the oracle.
"""

from __future__ import annotations

from string import Template

import numpy as np
import onnx

from lowbit.targets.c import templates as T
from lowbit.targets.c.bitplanes import (
    MAX_ACTIVATION_BITS,
    MAX_WEIGHT_BITS,
    plane_coefficients,
    stored_weight_planes,
    words_per_pixel,
)
from lowbit.targets.c.pack import c_type
from lowbit.targets.c.plan import CPlan, Tensor

KERNELS = ("bitserial", "scalar")
"""`kernel=` of generate_c: the fast kernels of this module, or the scalar reference only."""

POPCOUNT = """\
/* Population count of a 64-bit word. GCC and Clang: __builtin_popcountll, one instruction
   where the target has one. On x86 without -mpopcnt the builtin would call libgcc, so each
   bit-serial kernel is compiled twice, with and without the POPCNT instruction, and picks one
   at run time (__builtin_cpu_supports). Other compilers, or -DLOWBIT_NO_BUILTIN_POPCOUNT: a
   portable SWAR count (Warren, "Hacker's Delight", 2nd ed., sec. 5-1). */
#if !defined(LOWBIT_NO_BUILTIN_POPCOUNT) && (defined(__GNUC__) || defined(__clang__))
#define LB_BUILTIN_POPCOUNT 1
#define lb_popcount_builtin(x) __builtin_popcountll(x)
#if (defined(__x86_64__) || defined(__i386__)) && !defined(__POPCNT__)
#define LB_POPCNT_AT_RUN_TIME 1
#define LB_POPCNT_TARGET __attribute__((target("popcnt")))
#else
#define LB_POPCNT_TARGET
#endif
#endif

/* The vector bodies (x86-64, GCC >= 8 or Clang >= 10): compiled for AVX-512 VPOPCNTDQ, with
   loop vectorization on, by function attributes, and called only where __builtin_cpu_supports
   finds the instruction. */
#if defined(LB_BUILTIN_POPCOUNT) && defined(__x86_64__) && !defined(LOWBIT_NO_VECTOR_POPCOUNT) \
    && ((defined(__clang__) && __clang_major__ >= 10) || (!defined(__clang__) && __GNUC__ >= 8))
#define LB_VECTOR_POPCOUNT 1
#if defined(__clang__) /* vectorizes at -O2 */
#define LB_VECTOR_TARGET __attribute__((target("popcnt,avx512f,avx512vpopcntdq")))
#else /* GCC before 12 vectorizes only from -O3, unless asked */
#define LB_VECTOR_TARGET \
    __attribute__((target("popcnt,avx512f,avx512vpopcntdq"), optimize("tree-vectorize")))
#endif
#endif

#if !defined(LB_BUILTIN_POPCOUNT) || defined(LB_POPCNT_AT_RUN_TIME)
static int lb_popcount_portable(uint64_t x)
{
    x = x - ((x >> 1) & UINT64_C(0x5555555555555555));
    x = (x & UINT64_C(0x3333333333333333)) + ((x >> 2) & UINT64_C(0x3333333333333333));
    x = (x + (x >> 4)) & UINT64_C(0x0f0f0f0f0f0f0f0f);
    return (int)((x * UINT64_C(0x0101010101010101)) >> 56);
}
#endif
"""

PACK_PLANES = """\
/* Unsigned codes (NCHW, batch 1, each < 2^planes) -> bit planes of the zero-padded input,
   [ph][pw][words][planes] 64-bit words: bit c % 64 of word c / 64 of plane b of padded pixel
   (y + pt, x + pl) is bit b of channel c's code. Padding pixels and channels past cin stay 0,
   the code ConvInteger pads with. */
static void lb_pack_planes(const uint8_t *restrict x, int cin, int h, int w, int pt, int pl,
                           int ph, int pw, int planes, uint64_t *restrict packed)
{
    int words = (cin + 63) / 64, c, y, i, b;
    long n;
    for (n = 0; n < (long)ph * pw * words * planes; ++n) packed[n] = 0;
    for (c = 0; c < cin; ++c) {
        const uint8_t *channel = x + (long)c * h * w;
        unsigned shift = (unsigned)c & 63u;
        for (y = 0; y < h; ++y) {
            uint64_t *word = packed + (((long)(y + pt) * pw + pl) * words + c / 64) * planes;
            for (i = 0; i < w; ++i, word += (long)words * planes) {
                uint64_t code = channel[(long)y * w + i];
                for (b = 0; b < planes; ++b) word[b] |= ((code >> b) & 1u) << shift;
            }
        }
    }
}
"""

CONV_DOT = Template("""\
/* ONNX ConvInteger (group 1, no zero points), NCHW, batch 1: int32 acc[M][HO][WO], as int16 dot
   products of $TAPS terms, a loop with constant bounds that compilers vectorize (x86: pmaddwd).
   The weights are decoded once per call into rows of $TAPS int16 (cin*kh*kw taps, zero-filled;
   cout rounded up to a multiple of 4), and per output row the window of each pixel into a
   column of $TAPS (padding pixels 0); four output channels at a time share the column.
   Exact: codes and weights of at most 16 bits fit int16, and every partial sum is bounded by
   the layer's accumulator bound (< 2^31). */
static void lb_conv_dot_${x}_$TAPS(const $X *restrict x, int cin, int h, int w,
                                 const uint8_t *packed, unsigned bits, int cout, int kh, int kw,
                                 int sh, int sw, int pt, int pl, int ho, int wo,
                                 int16_t *restrict weights, int16_t *restrict columns,
                                 int32_t *restrict acc)
{
    int taps = cin * kh * kw, co, ci, ky, kx, oy, ox, t;
    for (co = 0; co < (cout + 3) / 4 * 4; ++co) /* rows past cout: zero */
        for (t = 0; t < $TAPS; ++t)
            weights[co * $TAPS + t] = (int16_t)(co < cout && t < taps
                ? lb_weight(packed, (uint32_t)(co * taps + t), bits) : 0);
    for (oy = 0; oy < ho; ++oy) {
        for (ox = 0; ox < wo; ++ox) {
            int16_t *column = columns + (long)ox * $TAPS;
            t = 0;
            for (ci = 0; ci < cin; ++ci) {
                for (ky = 0; ky < kh; ++ky) {
                    int iy = oy * sh - pt + ky;
                    for (kx = 0; kx < kw; ++kx, ++t) {
                        int ix = ox * sw - pl + kx;
                        column[t] = (int16_t)(iy >= 0 && iy < h && ix >= 0 && ix < w
                                                  ? x[((long)ci * h + iy) * w + ix] : 0);
                    }
                }
            }
            for (; t < $TAPS; ++t) column[t] = 0;
        }
        for (co = 0; co < cout; co += 4) { /* four output channels share each column load */
            const int16_t *row = weights + (long)co * $TAPS;
            int32_t *out = acc + ((long)co * ho + oy) * wo;
            long next = (long)ho * wo;
            for (ox = 0; ox < wo; ++ox) {
                const int16_t *column = columns + (long)ox * $TAPS;
                int32_t sum0 = 0, sum1 = 0, sum2 = 0, sum3 = 0;
                for (t = 0; t < $TAPS; ++t) {
                    sum0 += (int32_t)column[t] * (int32_t)row[t];
                    sum1 += (int32_t)column[t] * (int32_t)row[$TAPS + t];
                    sum2 += (int32_t)column[t] * (int32_t)row[2 * $TAPS + t];
                    sum3 += (int32_t)column[t] * (int32_t)row[3 * $TAPS + t];
                }
                out[ox] = sum0;
                if (co + 1 < cout) out[next + ox] = sum1;
                if (co + 2 < cout) out[2 * next + ox] = sum2;
                if (co + 3 < cout) out[3 * next + ox] = sum3;
            }
        }
    }
}
""")


SIGNATURE = (
    "(const uint64_t *restrict packed, int pw,\n"
    "    const uint64_t *restrict weights, int sh, int sw, int ho, int wo, int32_t *restrict acc)"
)
VECTOR_LANES = 8
"""64-bit lanes of one AVX-512 register: a vector body needs cout to be a multiple of this."""


UNROLL_TERMS = 64
"""Popcount terms per output value up to which a kernel's window loop is written out."""


def _window_lines(planes: int, shape: tuple) -> list[str]:
    """C lines (inside the oy/ox loops) that copy the window's words into `taps`
    ([kh * kw * words][planes], the weights' order), shared by all output channels."""
    kh, kw, words = shape
    return [
        "            const uint64_t *window = packed + (oy * sh * row + ox * sw * pixel);",
        "            int32_t *out = acc + (long)oy * wo + ox;",
        f"            for (ky = 0; ky < {kh}; ++ky)",
        f"                for (k = 0; k < {kw * words * planes}; ++k)",
        f"                    taps[ky * {kw * words * planes} + k] = window[ky * row + k];",
    ]


def _bipolar_counts(popcount: str, planes: int, count: int) -> list[str]:
    """C lines: n_b = popcount of activation plane b over the window (bipolar weights)."""
    return [
        "            int32_t " + ", ".join(f"n{b} = 0" for b in range(planes)) + ";",
        f"            for (k = 0; k < {count}; ++k) {{",
        *(f"                n{b} += {popcount}(taps[k * {planes} + {b}]);" for b in range(planes)),
        "            }",
    ]


def _bitconv_body(popcount: str, planes: int, weight_bits: int, shape: tuple, cout: int) -> str:
    """The per-output-channel body of a bit-serial kernel (see bitconv_kernel), counting bits
    with `popcount`: the sum over the window is written out term by term when it has at most
    UNROLL_TERMS popcounts (conv4-64: 18 or 36), else it is a loop."""
    kh, kw, words = shape
    count = kh * kw * words  # words per plane in a window
    weight_planes = len(plane_coefficients(weight_bits))
    pairs = [(b, j) for b in range(planes) for j in range(weight_planes)]
    lines = [
        f"    const long pixel = {words * planes}, row = (long)pw * pixel;",
        f"    uint64_t taps[{count * planes}];",
        "    int oy, ox, co, ky, k;",
        "    for (oy = 0; oy < ho; ++oy) {",
        "        for (ox = 0; ox < wo; ++ox) {",
        *_window_lines(planes, shape),
    ]
    if weight_bits == 1:  # Σ a·w = Σ_b 2^b (2 popcount(a_b & w) - popcount(a_b)): n_b per window
        lines += _bipolar_counts(popcount, planes, count)
        total = " + ".join(f"{2 ** (b + 1)} * s{b}_0 - {2**b} * n{b}" for b in range(planes))
    else:
        total = " + ".join(
            f"({coefficient * 2**b}) * s{b}_{j}"
            for b in range(planes)
            for j, coefficient in enumerate(plane_coefficients(weight_bits))
        )
    lines += [
        f"            for (co = 0; co < {cout}; ++co) {{",
        "                const uint64_t *w = weights + co; /* [k][j][cout] */",
        "                int32_t " + ", ".join(f"s{b}_{j} = 0" for b, j in pairs) + ";",
    ]
    if count * len(pairs) <= UNROLL_TERMS:
        lines += [
            f"                s{b}_{j} += "
            f"{popcount}(taps[{k * planes + b}] & w[{(k * weight_planes + j) * cout}]);"
            for k in range(count)
            for b, j in pairs
        ]
    else:
        lines += [
            f"                for (k = 0; k < {count}; ++k) {{",
            *(
                f"                    s{b}_{j} += {popcount}(taps[k * {planes} + {b}]"
                f" & w[(k * {weight_planes} + {j}) * {cout}]);"
                for b, j in pairs
            ),
            "                }",
        ]
    lines += [
        f"                out[(long)co * ho * wo] = {total};",
        "            }",
        "        }",
        "    }",
    ]
    return "{\n" + "\n".join(lines) + "\n}\n"


def _bitconv_vector_body(planes: int, weight_bits: int, shape: tuple, cout: int) -> str:
    """The vector body of a bit-serial kernel: for each window word, every output channel's
    weighted popcounts in one loop over `cout` (a multiple of VECTOR_LANES) with unit-stride
    weights, which the compiler vectorizes under LB_VECTOR_TARGET."""
    kh, kw, words = shape
    count = kh * kw * words
    coefficients = plane_coefficients(weight_bits)
    if weight_bits == 1:  # 2^(b+1) popcount(a_b & w_0), less Σ_b 2^b n_b at the end
        terms = [(b, 0, 2 ** (b + 1)) for b in range(planes)]
    else:
        terms = [(b, j, c * 2**b) for b in range(planes) for j, c in enumerate(coefficients)]
    term = " + ".join(
        f"({weight}) * lb_popcount_builtin(a{b} & w[{j * cout} + co])" for b, j, weight in terms
    )
    lines = [
        f"    const long pixel = {words * planes}, row = (long)pw * pixel;",
        f"    uint64_t taps[{count * planes}];",
        f"    int32_t sum[{cout}];",
        "    int oy, ox, co, ky, k;",
        "    for (oy = 0; oy < ho; ++oy) {",
        "        for (ox = 0; ox < wo; ++ox) {",
        *_window_lines(planes, shape),
        f"            for (co = 0; co < {cout}; ++co) sum[co] = 0;",
        f"            for (k = 0; k < {count}; ++k) {{",
        f"                const uint64_t *w = weights + (long)k * {len(coefficients) * cout};",
        *(
            f"                const uint64_t a{b} = taps[k * {planes} + {b}];"
            for b in range(planes)
        ),
        f"                for (co = 0; co < {cout}; ++co) sum[co] += {term};",
        "            }",
    ]
    if weight_bits == 1:
        lines += _bipolar_counts("lb_popcount_builtin", planes, count)
        bias = " + ".join(f"{2**b} * n{b}" for b in range(planes))
        lines.append(f"            for (co = 0; co < {cout}; ++co) sum[co] -= {bias};")
    lines += [
        f"            for (co = 0; co < {cout}; ++co) out[(long)co * ho * wo] = sum[co];",
        "        }",
        "    }",
    ]
    return "{\n" + "\n".join(lines) + "\n}\n"


def bitconv_kernel(
    planes: int, weight_bits: int, shape: tuple[int, int, int], cout: int
) -> tuple[str, str]:
    """(name, C text) of the bit-serial ConvInteger for `planes` activation bit planes,
    `weight_bits` (1: bipolar), kernel (kh, kw), `words` 64-channel words per pixel and `cout`
    output channels."""
    kh, kw, words = shape
    name = f"lb_bitconv_a{planes}_w{weight_bits}_{kh}x{kw}_c{words}_o{cout}"
    args = "(packed, pw, weights, sh, sw, ho, wo, acc)"
    kind = "bipolar 1-bit weights" if weight_bits == 1 else f"{weight_bits}-bit weights"
    vector = cout % VECTOR_LANES == 0
    text = (
        f"/* Bit-serial ONNX ConvInteger, {kh}x{kw} kernel, {words} word(s) of 64 input channels"
        f" per pixel,\n   {planes} activation bit plane(s) x {kind}, {cout} output channels"
        " (lowbit/targets/c/bitplanes.py):\n"
        "   acc[co][oy][ox] = sum_b 2^b sum_j c_j popcount(a_b & w_j) over the window's words;\n"
        "   `packed`: lb_pack_planes' grid of width pw; `weights`: [kh][kw][words][planes][cout].\n"
        "   Bodies: vector, builtin and portable popcount (lowbit/targets/c/bitserial.py). */\n"
    )
    if vector:
        text += (
            "#ifdef LB_VECTOR_POPCOUNT\n"
            f"static void LB_VECTOR_TARGET {name}_vector{SIGNATURE}\n"
            + _bitconv_vector_body(planes, weight_bits, shape, cout)
            + "#endif\n"
        )
    text += (
        "#ifdef LB_BUILTIN_POPCOUNT\n"
        f"static void LB_POPCNT_TARGET {name}_builtin{SIGNATURE}\n"
        + _bitconv_body("lb_popcount_builtin", planes, weight_bits, shape, cout)
        + "#endif\n#if !defined(LB_BUILTIN_POPCOUNT) || defined(LB_POPCNT_AT_RUN_TIME)\n"
        f"static void {name}_portable{SIGNATURE}\n"
        + _bitconv_body("lb_popcount_portable", planes, weight_bits, shape, cout)
        + "#endif\n"
        f"static void {name}{SIGNATURE}\n{{\n"
    )
    if vector:
        text += (
            "#ifdef LB_VECTOR_POPCOUNT\n"
            f'    if (__builtin_cpu_supports("avx512vpopcntdq")) {{\n'
            f"        {name}_vector{args};\n"
            "        return;\n"
            "    }\n"
            "#endif\n"
        )
    return name, text + (
        "#if defined(LB_POPCNT_AT_RUN_TIME)\n"
        f'    if (__builtin_cpu_supports("popcnt")) {name}_builtin{args};\n'
        f"    else {name}_portable{args};\n"
        "#elif defined(LB_BUILTIN_POPCOUNT)\n"
        f"    {name}_builtin{args};\n"
        "#else\n"
        f"    {name}_portable{args};\n"
        "#endif\n}\n"
    )


def bitserial_planes(plan: CPlan, x: Tensor, bits: int) -> int | None:
    """Activation bit planes of a conv input that the bit-serial kernel takes, else None."""
    codes = plan.code_ranges.get(x.name)
    if x.dtype != np.uint8 or codes is None or not 1 <= bits <= MAX_WEIGHT_BITS:
        return None
    low, high = codes
    if low < 0 or high >= 2**MAX_ACTIVATION_BITS:
        return None
    return max(int(high).bit_length(), 1)


def conv_bitserial(
    plan: CPlan, node: onnx.NodeProto, x: Tensor, weights: np.ndarray, bits: int, planes: int,
    pads: list[int], strides: list[int], out_shape: tuple[int, int],
) -> Tensor:  # fmt: skip
    """Emits lb_pack_planes + the bit-serial kernel for one ConvInteger; returns the acc."""
    layer = node.output[0].removesuffix(".acc")
    cout, cin, kh, kw = weights.shape
    words = words_per_pixel(cin)
    packed_weights = stored_weight_planes(weights, bits, f"{plan.label}: {layer}")
    var = plan.const(f"lb_w{len(plan.constants)}", np.uint64, packed_weights)
    plan.sizes[layer]["weights"] = (var, packed_weights.nbytes)
    plan.kernels.setdefault("popcount", POPCOUNT)
    plan.kernels.setdefault("pack_planes", PACK_PLANES)
    name, text = bitconv_kernel(planes, bits, (kh, kw, words), cout)
    plan.kernels.setdefault(name, text)
    h, w = x.shape[2:]
    ph, pw = h + pads[0] + pads[2], w + pads[1] + pads[3]
    grid = plan.buffer(f"{node.output[0]}.planes", np.uint64, (ph * pw * words * planes,))
    plan.emit(
        f"    lb_pack_planes({x.var}, {cin}, {h}, {w}, {pads[0]}, {pads[1]}, {ph}, {pw}, "
        f"{planes}, {grid.var});\n",
        grid,
        x,
        tap=False,
    )
    ho, wo = out_shape
    out = plan.buffer(node.output[0], np.int32, (1, cout, ho, wo))
    plan.emit(
        f"    {name}({grid.var}, {pw}, {var}, {strides[0]}, {strides[1]}, {ho}, {wo}, "
        f"{out.var});\n",
        out,
        grid,
    )
    return out


def conv_dot(
    plan: CPlan, node: onnx.NodeProto, x: Tensor, weights: np.ndarray, bits: int,
    pads: list[int], strides: list[int], out_shape: tuple[int, int],
) -> Tensor:  # fmt: skip
    """Emits the vectorizable dot-product ConvInteger (lb_conv_dot_*); returns the acc."""
    layer = node.output[0].removesuffix(".acc")
    var = plan.packed(layer, weights, bits)
    cout, cin, kh, kw = weights.shape
    taps = -(-cin * kh * kw // 8) * 8
    short = T.SHORT_TYPES[c_type(x.dtype)]
    fn = plan.kernel(
        f"conv_dot_{short}_{taps}", CONV_DOT, x=short, X=c_type(x.dtype), TAPS=str(taps)
    )
    ho, wo = out_shape
    rows = plan.buffer(f"{node.output[0]}.weights", np.int16, (-(-cout // 4) * 4 * taps,))
    columns = plan.buffer(f"{node.output[0]}.columns", np.int16, (wo * taps,))
    plan.emit("", rows, tap=False)  # scratch of the next step only
    plan.emit("", columns, tap=False)
    out = plan.buffer(node.output[0], np.int32, (1, cout, ho, wo))
    h, w = x.shape[2:]
    plan.emit(
        f"    {fn}({x.var}, {cin}, {h}, {w}, {var}, {bits}u, {cout}, {kh}, {kw}, {strides[0]}, "
        f"{strides[1]}, {pads[0]}, {pads[1]}, {ho}, {wo}, {rows.var}, {columns.var}, "
        f"{out.var});\n",
        out,
        x,
        rows,
        columns,
    )
    return out
