"""C99 text of the C target: the kernels (one per op and type combination used) and the file frames.

Placeholders are `string.Template` fields ($name): C itself never uses `$`. Every kernel is
integer-only; `lb_round_half_even` is the one float operation of the input quantizer, and the
float64 tail is emitted inline by plan.py.
"""

from __future__ import annotations

from string import Template

SHORT_TYPES = {
    "int8_t": "i8",
    "uint8_t": "u8",
    "int16_t": "i16",
    "uint16_t": "u16",
    "int32_t": "i32",
    "int64_t": "i64",
    "uint64_t": "u64",
    "float": "f32",
    "double": "f64",
}

WEIGHT_READER = """\
/* Field `index` of a little-endian bit stream of `bits`-wide fields: 1 bit is bipolar
   (0 -> -1, 1 -> +1), wider fields are two's complement (see lowbit/targets/c/pack.py). */
static int32_t lb_weight(const uint8_t *packed, uint32_t index, unsigned bits)
{
    uint32_t bit = index * bits, byte = bit >> 3;
    unsigned shift = bit & 7u, have = 8u - shift;
    uint32_t field = (uint32_t)packed[byte] >> shift;
    while (have < bits) {
        field |= (uint32_t)packed[++byte] << have;
        have += 8u;
    }
    field &= (1u << bits) - 1u;
    if (bits == 1u) return field ? 1 : -1;
    return (int32_t)(field ^ (1u << (bits - 1u))) - (int32_t)(1u << (bits - 1u));
}
"""

ROUND = """\
/* Round half to even of a finite float (QONNX ROUND, numpy.round) for |v| < 2^23; no libm. */
static int32_t lb_round_half_even(float v)
{
    int32_t whole = (int32_t)v; /* toward zero */
    float rest = v - (float)whole; /* exact: |v| < 2^23 */
    if (rest > 0.5f || (rest == 0.5f && (whole & 1))) return whole + 1;
    if (rest < -0.5f || (rest == -0.5f && (whole & 1))) return whole - 1;
    return whole;
}
"""

CONV = Template("""\
/* Stride-1 "same" convolution tap (dy, dx): plane[p] += weight * x[p + dy*w + dx] over the
   flattened plane in one contiguous loop, then the terms whose input column wrapped into a
   neighbour row taken back out (exact: int32 headroom, see ops.conv_integer). */
static void lb_tap_$x(const $X *restrict channel, int h, int w, int dy, int dx,
                     int32_t weight, int32_t *restrict plane)
{
    int oy0 = dy < 0 ? -dy : 0, oy1 = dy > 0 ? h - dy : h, oy, ox;
    long d = (long)dy * w + dx, p, start, end;
    if (oy0 >= oy1) return;
    start = (long)oy0 * w + (dx < 0 ? -dx : 0);
    end = (long)oy1 * w - (dx > 0 ? dx : 0);
    for (p = start; p < end; ++p) plane[p] += weight * (int32_t)channel[p + d];
    for (oy = oy0; dx != 0 && oy < oy1; ++oy) {
        int low = dx < 0 ? 0 : w - dx, high = dx < 0 ? -dx : w; /* wrapped: ox + dx outside */
        for (ox = low; ox < high; ++ox) {
            p = (long)oy * w + ox;
            if (p >= start && p < end) plane[p] -= weight * (int32_t)channel[p + d];
        }
    }
}

/* ONNX ConvInteger (group 1, no zero points), NCHW, batch 1: int32 acc[M][HO][WO].
   Weight by weight: acc plane += w * shifted input plane (zero weights skipped). */
static void lb_conv_$x(const $X *restrict x, int cin, int h, int w,
                      const uint8_t *packed, unsigned bits, int cout, int kh, int kw,
                      int sh, int sw, int pt, int pl, int ho, int wo, int32_t *restrict acc)
{
    uint32_t index = 0;
    int co, ci, ky, kx, oy, ox, i;
    int same = sh == 1 && sw == 1 && ho == h && wo == w && pl < w && kw - pl <= w;
    for (co = 0; co < cout; ++co) {
        int32_t *plane = acc + (long)co * ho * wo;
        for (i = 0; i < ho * wo; ++i) plane[i] = 0;
        for (ci = 0; ci < cin; ++ci) {
            const $X *channel = x + (long)ci * h * w;
            for (ky = 0; ky < kh; ++ky) {
                for (kx = 0; kx < kw; ++kx, ++index) {
                    int32_t weight = lb_weight(packed, index, bits);
                    int first, end;
                    if (weight == 0) continue;
                    if (same) {
                        lb_tap_$x(channel, h, w, ky - pt, kx - pl, weight, plane);
                        continue;
                    }
                    /* output columns ox with 0 <= ox*sw - pl + kx < w */
                    first = pl - kx > 0 ? (pl - kx + sw - 1) / sw : 0;
                    end = (w + pl - kx + sw - 1) / sw;
                    if (end > wo) end = wo;
                    for (oy = 0; oy < ho; ++oy) {
                        int iy = oy * sh - pt + ky;
                        const $X *row;
                        int32_t *out = plane + (long)oy * wo;
                        if (iy < 0 || iy >= h) continue;
                        row = channel + (long)iy * w;
                        for (ox = first; ox < end; ++ox)
                            out[ox] += weight * (int32_t)row[ox * sw - pl + kx];
                    }
                }
            }
        }
    }
}
""")

THRESHOLD = Template("""\
/* qonnx MultiThreshold + Cast: y = #{t in row c : x >= t} + bias.
   Layout [outer][channels][plane]; `per_channel` 0: one row for all channels. `search` (a row
   sorted increasing): a binary search per element; else one pass over the plane per threshold,
   sixteen elements at a time (a loop compilers vectorize). */
static void lb_threshold_${x}_${t}_$y(const $X *restrict x, long outer, long channels,
                                   long plane, const $T *thresholds, int per_channel,
                                   int count, int search, int bias, $Y *restrict y)
{
    long o, c, i, j, blocks = plane - plane % 16;
    for (o = 0; o < outer; ++o) {
        for (c = 0; c < channels; ++c) {
            const $T *row = thresholds + (per_channel ? c * count : 0);
            const $X *in = x + (o * channels + c) * plane;
            $Y *out = y + (o * channels + c) * plane;
            int k;
            if (search) {
                for (i = 0; i < plane; ++i) { /* n = number of t <= v */
                    int n = 0, high = count;
                    while (n < high) {
                        int mid = (n + high) / 2;
                        if (in[i] >= row[mid]) n = mid + 1; else high = mid;
                    }
                    out[i] = ($Y)(n + bias);
                }
                continue;
            }
            for (i = 0; i < plane; ++i) out[i] = ($Y)bias;
            for (k = 0; k < count; ++k) {
                const $T t = row[k];
                for (i = 0; i < blocks; i += 16)
                    for (j = 0; j < 16; ++j) out[i + j] = ($Y)(out[i + j] + (in[i + j] >= t));
                for (i = blocks; i < plane; ++i) out[i] = ($Y)(out[i] + (in[i] >= t));
            }
        }
    }
}
""")

MAXPOOL = Template("""\
/* ONNX MaxPool (floor mode, dilation 1) on codes; padding never wins. Without padding every
   window lies inside the input: no bounds tests. */
static void lb_maxpool_$x(const $X *restrict x, int c, int h, int w, int kh, int kw, int sh,
                         int sw, int pt, int pl, int ho, int wo, $X *restrict y)
{
    int ch, oy, ox, ky, kx;
    for (ch = 0; ch < c; ++ch) {
        const $X *plane = x + (long)ch * h * w;
        for (oy = 0; oy < ho; ++oy) {
            for (ox = 0; ox < wo; ++ox) {
                $X best = $MIN;
                if (pt == 0 && pl == 0) {
                    const $X *window = plane + (long)oy * sh * w + (long)ox * sw;
                    for (ky = 0; ky < kh; ++ky)
                        for (kx = 0; kx < kw; ++kx)
                            if (window[ky * w + kx] > best) best = window[ky * w + kx];
                } else {
                    for (ky = 0; ky < kh; ++ky) {
                        int iy = oy * sh - pt + ky;
                        if (iy < 0 || iy >= h) continue;
                        for (kx = 0; kx < kw; ++kx) {
                            int ix = ox * sw - pl + kx;
                            if (ix >= 0 && ix < w && plane[iy * w + ix] > best)
                                best = plane[iy * w + ix];
                        }
                    }
                }
                y[((long)ch * ho + oy) * wo + ox] = best;
            }
        }
    }
}
""")

MATMUL = Template("""\
/* ONNX MatMul [1, F] x [F, K] with packed integer weights stored class-major [K][F];
   exact int64 accumulation. */
static void lb_matmul_${x}_$y(const $X *restrict x, int features, int classes,
                             const uint8_t *packed, unsigned bits, $Y *restrict y)
{
    int c, f;
    for (c = 0; c < classes; ++c) {
        int64_t sum = 0;
        for (f = 0; f < features; ++f)
            sum += (int64_t)lb_weight(packed, (uint32_t)(c * features + f), bits) * (int64_t)x[f];
        y[c] = ($Y)sum;
    }
}
""")

LOGSUMEXP = """\
/* log sum_c exp(logits[c]) with the largest logit `*top` subtracted first, so no exp
   overflows (lowbit/core/scores.py: _logsumexp). */
static double lb_logsumexp(const double *logits, int count, double *top)
{
    double best = logits[0], sum = 0.0;
    int c;
    for (c = 1; c < count; ++c)
        if (logits[c] > best) best = logits[c];
    for (c = 0; c < count; ++c) sum += exp(logits[c] - best);
    *top = best;
    return best + log(sum);
}
"""

UNIT_FEATURES = Template("""\
/* z = f / sqrt(n) with n = sum f^2 exact; an all-zero row stays zero. Bit-identical to numpy's
   lowbit.core.feature_scores.normalize_rows: n < 2^53 is exact in double and sqrt and division
   are correctly rounded in IEEE-754. */
static void lb_unit_features_$x(const $X *f, long count, int64_t n, double *z)
{
    double norm = sqrt((double)n);
    long i;
    for (i = 0; i < count; ++i) z[i] = n > 0 ? (double)f[i] / norm : 0.0;
}
""")

WHITE_DISTANCES = """\
/* distances[c] = sum_r ((W z)_r - centers[c][r])^2 for W [rows][features] and centers
   [count][rows]: squared distances of whitened features (lowbit/core/feature_scores.py).
   The projection is computed once per row r and the distances summed over r in order. */
static void lb_white_distances(const double *z, long features, const double *white, long rows,
                               const double *centers, int count, double *distances)
{
    long r, i;
    int c;
    for (c = 0; c < count; ++c) distances[c] = 0.0;
    for (r = 0; r < rows; ++r) {
        const double *w = white + r * features;
        double projection = 0.0;
        for (i = 0; i < features; ++i) projection += z[i] * w[i];
        for (c = 0; c < count; ++c) {
            double d = projection - centers[(long)c * rows + r];
            distances[c] += d * d;
        }
    }
}
"""

RESIDUAL_NORM = """\
/* sqrt(sum_r ((z - mean) . complement[r])^2) for an orthonormal basis complement
   [rows][features] of the directions outside the training features' principal subspace: the
   norm of z's centered part outside it (lowbit/core/feature_scores.py: residual_norm).
   Overwrites z with z - mean, rounded as numpy's subtraction. */
static double lb_residual_norm(double *z, long features, const double *mean,
                               const double *complement, long rows)
{
    double sum = 0.0;
    long r, i;
    for (i = 0; i < features; ++i) z[i] -= mean[i];
    for (r = 0; r < rows; ++r) {
        const double *c = complement + r * features;
        double projection = 0.0;
        for (i = 0; i < features; ++i) projection += z[i] * c[i];
        sum += projection * projection;
    }
    return sqrt(sum);
}
"""

PROTOTYPE = """\
/* max_c z . prototypes[c] for unit prototypes [count][features]: the cosine to the nearest
   class prototype (lowbit/core/feature_scores.py: prototype_score). */
static double lb_prototype_score(const double *z, long features, const double *prototypes,
                                 int count)
{
    double best = 0.0;
    long i;
    int c;
    for (c = 0; c < count; ++c) {
        const double *p = prototypes + (long)c * features;
        double dot = 0.0;
        for (i = 0; i < features; ++i) dot += z[i] * p[i];
        if (c == 0 || dot > best) best = dot;
    }
    return best;
}
"""

HEADER = Template("""\
/* $guard: generated by lowbit ($lowbit_version) from model.int.onnx; do not edit.
 *
 * Recipe $recipe, backbone $backbone, $head head, $classes classes, input $input_shape.
 * Integer-only C99 program of the integer graph (docs/int_graph.md): same codes, bit for bit,
 * as lowbit's numpy runtime; float only in the input quantizer (float32 division and round
 * half to even, as the graph's Div + Quant), in the float64 logit tail and in the float64
 * unknown-type score. No malloc.
 * Convolutions: $conv_kernels
 *
 * Bit-exact logits need IEEE-754 arithmetic evaluated in its own precision
 * (FLT_EVAL_METHOD == 0, e.g. x86-64 SSE, AArch64) and no FMA contraction
 * (GCC/Clang: -ffp-contract=off). Integer outputs are exact on any C99 compiler.
 * The unknown-type score `ood_score` is not bit-exact: its dot products sum in another order
 * than numpy's BLAS and libm's exp/log are not numpy's. It equals lowbit's score to within
 * 1e-12 * (1 + |score| + the sum of its absolute terms) (lowbit/targets/c/ood.py), so `known`
 * equals `lowbit predict`'s decision except for a score within that distance of the threshold.
 *
 * Storage (bytes): $weight_bytes of packed weights, $threshold_bytes of thresholds,
 * $ood_bytes of unknown-type statistics, $scratch_bytes of scratch.
$size_comment */
#ifndef $guard
#define $guard

#include <stdint.h>

#define ${PREFIX}_INPUT_CHANNELS $channels
#define ${PREFIX}_INPUT_HEIGHT $height
#define ${PREFIX}_INPUT_WIDTH $width
#define ${PREFIX}_INPUT_SIZE $input_size /* CHW elements */
#define ${PREFIX}_CLASSES $classes
#define ${PREFIX}_INPUT_SCALE $input_scale /* input code q: x = q * scale */

$ood_defines

typedef $code_type ${prefix}_code_t; /* input code type ($input_bits-bit) */

/* Integer head values, the float64 tail and the unknown-type decision of one image. */
typedef struct {
    int64_t class_dots[${PREFIX}_CLASSES]; /* d_c = sum_f w_c[f] * f (head weight codes) */
    int64_t feature_sq; /* n = sum_f f^2 (cosine head; 0 for a linear head) */
    double logits[${PREFIX}_CLASSES]; /* the graph's output `logits` */
    int argmax; /* first index of the largest logit */
    double ood_score; /* ${PREFIX}_OOD_SCORE of the image: higher = more like a known class */
    int known; /* 1: ood_score >= ${PREFIX}_OOD_THRESHOLD (always 1 without a threshold);
                  0: an unknown type */
} ${prefix}_result;

/* Every intermediate buffer, one typed pool per C type; reused across layers. */
typedef struct {
    ${prefix}_code_t input_codes[${PREFIX}_INPUT_SIZE];
$pool_members} ${prefix}_scratch;

/* Float32 normalized CHW image (the graph's input) -> input codes: clamp(round_half_even(
   x / INPUT_SCALE)), computed in float32 exactly as the graph's Div + Quant. Input finite. */
void ${prefix}_quantize_input(const float *input, ${prefix}_code_t *codes);

/* Integer body and head on input codes (once per view, ${PREFIX}_OOD_VIEWS); fills *result and
   returns its argmax. `scratch`: caller-provided (stack, static, any memory), or NULL for a
   static one (not reentrant). */
int ${prefix}_infer_codes(const ${prefix}_code_t *codes, ${prefix}_result *result,
    ${prefix}_scratch *scratch);

/* quantize_input + infer_codes (input codes go to scratch->input_codes). */
int ${prefix}_infer(const float *input, ${prefix}_result *result, ${prefix}_scratch *scratch);

/* Storage of each layer: sizeof its packed weights and of its thresholds. */
typedef struct {
    const char *name; /* model.json layer name ("head" for the head) */
    unsigned long weight_bytes;
    unsigned long threshold_bytes;
} ${prefix}_layer_size;
extern const ${prefix}_layer_size ${prefix}_model_sizes[];
extern const int ${prefix}_model_size_count;
extern const unsigned long ${prefix}_scratch_bytes; /* sizeof(${prefix}_scratch) */

#ifdef ${PREFIX}_ENABLE_TAP
/* Debug hook: called after every tensor is computed, with the graph's tensor name, its ONNX
   element type (TensorProto: 2 uint8, 3 int8, 6 int32, 7 int64, 11 double) and its elements. */
typedef void (*${prefix}_tap_fn)(const char *name, int onnx_type, const void *data,
    unsigned long count);
extern ${prefix}_tap_fn ${prefix}_tap;
#endif

#endif /* $guard */
""")

SOURCE = Template("""\
/* Generated by lowbit ($lowbit_version) from model.int.onnx; do not edit. See $header. */
#include "$header"

#include <math.h>
#include <stddef.h>

#ifdef ${PREFIX}_ENABLE_TAP
${prefix}_tap_fn ${prefix}_tap = NULL;
#define LB_TAP(name, type, data, count) \\
    do { if (${prefix}_tap) ${prefix}_tap(name, type, data, count); } while (0)
#else
#define LB_TAP(name, type, data, count) ((void)0)
#endif

#ifndef ${PREFIX}_NO_STATIC_SCRATCH
static ${prefix}_scratch lb_static_scratch;
#endif

/* ---- constants: packed weights, thresholds, tail factors ---- */
$constants
const ${prefix}_layer_size ${prefix}_model_sizes[] = {
$size_rows};
const int ${prefix}_model_size_count = $size_count;
const unsigned long ${prefix}_scratch_bytes = sizeof(${prefix}_scratch);

/* ---- kernels ---- */
$kernels
void ${prefix}_quantize_input(const float *input, ${prefix}_code_t *codes)
{
    long i;
    for (i = 0; i < ${PREFIX}_INPUT_SIZE; ++i) {
$quantize_body    }
}

/* One pass of the integer body and head over input codes, the graph's steps in its order; what
   they compute stays in the scratch pools for ${prefix}_infer_codes to read. */
static void lb_forward(const ${prefix}_code_t *codes, ${prefix}_scratch *s)
{
    long i;
    (void)i;
$forward_declarations
$body}

int ${prefix}_infer_codes(const ${prefix}_code_t *codes, ${prefix}_result *result,
    ${prefix}_scratch *scratch)
{
    ${prefix}_scratch *s = scratch;
    long i;
#ifndef ${PREFIX}_NO_STATIC_SCRATCH
    if (s == NULL) s = &lb_static_scratch;
#endif
$declarations
    lb_forward(codes, s);
$tail
    return result->argmax;
}

int ${prefix}_infer(const float *input, ${prefix}_result *result, ${prefix}_scratch *scratch)
{
#ifndef ${PREFIX}_NO_STATIC_SCRATCH
    if (scratch == NULL) scratch = &lb_static_scratch;
#endif
    ${prefix}_quantize_input(input, scratch->input_codes);
    return ${prefix}_infer_codes(scratch->input_codes, result, scratch);
}
""")
