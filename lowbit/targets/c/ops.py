"""Per-op C emitters of the C target: one function per op type of docs/int_graph.md, in `C_OPS`.

Each takes the plan (plan.py) and one node, and adds constants, kernels and steps. Patterns:
`Div(input) → Quant → Cast` is the input quantizer; `[Cast int → float] → MultiThreshold → Cast`
one threshold kernel on the integers (for an integer x, `float(x) ≥ t ⇔ x ≥ ceil(t)`);
`Flatten` / `Reshape` / same-type `Cast` are aliases; every other op an inline loop.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
from onnx import helper

from lowbit.errors import ConfigError
from lowbit.targets.c import templates as T
from lowbit.targets.c.bitserial import KERNELS, bitserial_planes, conv_bitserial, conv_dot
from lowbit.targets.c.pack import c_number, c_type, smallest_signed
from lowbit.targets.c.plan import CPlan, Tensor

ELEMENTWISE = {"Add": "{0} + {1}", "Mul": "{0} * {1}", "Div": "{0} / {1}"}
LAYOUTS = {2: "NC", 3: "NWC", 4: "NCHW"}  # qonnx MultiThreshold's default by rank


# --- input quantizer: Div -> Quant -> Cast -----------------------------------------------------
def div(plan: CPlan, node: onnx.NodeProto) -> None:
    if node.input[0] != plan.input.name:
        return elementwise(plan, node)
    scale = plan.inits.get(node.input[1])
    if scale is None or scale.size != 1 or scale.dtype != np.float32:
        raise plan.error(node, "the input division needs a float32 scalar initializer")
    plan.input_scale = float(scale.reshape(-1)[0])


def quant(plan: CPlan, node: onnx.NodeProto) -> None:
    source = plan.producer.get(node.input[0])
    if source is None or source.op_type != "Div" or source.input[0] != plan.input.name:
        raise plan.error(node, "the C target supports Quant only as Div(input) -> Quant")
    scale, zero, bits = (plan.inits.get(n) for n in node.input[1:4])
    if scale is None or zero is None or bits is None or scale != 1 or zero != 0:
        raise plan.error(node, "needs constant scale 1 and zero point 0 (docs/int_graph.md)")
    attrs = plan.attrs(node)
    plan.input_bits, signed = int(bits), attrs.get("signed", 1)
    half = 2 ** (plan.input_bits - 1)
    if signed:
        low, high = (-half + 1 if attrs.get("narrow", 1) else -half), half - 1
    else:
        low, high = 0, 2 * half - (2 if attrs.get("narrow", 1) else 1)
    divided = f"input[i] / {c_number(plan.input_scale, np.float32)}"
    if plan.input_bits == 1 and signed:  # qonnx's bipolar sign, 0 -> +1
        plan.quantize_body = f"        codes[i] = ({divided}) >= 0.0f ? 1 : -1;\n"
    else:
        plan.kernels.setdefault("round", T.ROUND)
        plan.quantize_body = (
            f"        float v = {divided}; /* the graph's float32 Div */\n"
            f"        if (v > {high}.0f) v = {high}.0f; /* Quant: clamp, then round */\n"
            f"        if (v < {low}.0f) v = {low}.0f;\n"
            f"        codes[i] = lb_round_half_even(v);\n"
        )


# --- casts: input codes, fused thresholds, aliases, conversions --------------------------------
def cast(plan: CPlan, node: onnx.NodeProto) -> None:
    to = np.dtype(helper.tensor_dtype_to_np_dtype(plan.attrs(node)["to"]))
    source = plan.producer.get(node.input[0])
    if source is not None and source.op_type == "Quant":
        if to.kind not in "iu":
            raise plan.error(node, "input codes must be cast to an integer type")
        plan.code_dtype = to
        plan.tensors[node.output[0]] = Tensor(node.output[0], to, plan.input_shape, "codes", None)
        return plan.emit("", plan.tensors[node.output[0]])
    if source is not None and source.op_type == "MultiThreshold":
        return _threshold(plan, source, node, to)
    x = plan.get(node.input[0], node)
    consumers = plan.consumers[node.output[0]]
    if (
        x.dtype.kind in "iu"
        and to.kind == "f"
        and consumers
        and all(c.op_type == "MultiThreshold" for c in consumers)
    ):
        plan.float_views[node.output[0]] = x.name  # thresholds compare the integers
        return None
    if x.dtype == to:
        return _alias(plan, node, x.shape)
    if x.dtype.kind == "f" and to.kind in "iu":
        raise plan.error(node, "float -> integer casts exist only after Quant/MultiThreshold")
    plan.loop(node, to, x.shape, "(" + c_type(to) + ")({0})", [x])


def multithreshold(plan: CPlan, node: onnx.NodeProto) -> None:
    consumers = plan.consumers[node.output[0]]
    if (
        node.input[0] not in plan.float_views
        or not consumers
        or any(c.op_type != "Cast" for c in consumers)
    ):
        raise plan.error(node, "needs Cast(integer -> float) before and Cast to int after it")


def _threshold(plan: CPlan, mt: onnx.NodeProto, cast: onnx.NodeProto, to: np.dtype) -> None:
    x = plan.tensors[plan.float_views[mt.input[0]]]
    attrs = plan.attrs(mt)
    bias = attrs.get("out_bias", 0.0)
    raw = plan.inits[mt.input[1]].astype(np.float64)
    if attrs.get("out_scale", 1.0) != 1.0 or bias != int(bias) or raw.ndim != 2:
        raise plan.error(mt, "the C target needs out_scale 1, an integer out_bias, [C, T]")
    layout = attrs.get("data_layout") or LAYOUTS.get(len(x.shape), "")
    axis = layout.index("C") if "C" in layout else 1
    channels, count = x.shape[axis], raw.shape[1]
    info, out_info = np.iinfo(x.dtype), np.iinfo(to)
    if raw.shape[0] not in (1, channels) or not (
        out_info.min <= bias and bias + count <= out_info.max
    ):
        raise plan.error(mt, f"thresholds {list(raw.shape)} or codes do not fit {to}")
    # x >= t <=> x >= ceil(t) for integer x; clipping to [min, max + 1] of x's type keeps
    # every comparison (NaN and +inf: never reached; -inf: always)
    values = np.ceil(np.nan_to_num(raw, nan=np.inf, posinf=info.max + 1.0, neginf=float(info.min)))
    values = np.clip(values, info.min, info.max + 1).astype(np.int64)
    ordered = bool(np.all(np.diff(values, axis=1) >= 0))
    dtype = smallest_signed(values)
    layer = cast.output[0]
    var = plan.const(f"lb_t{len(plan.constants)}", dtype, values)
    plan.sizes[layer]["thresholds"] = (var, values.size * dtype.itemsize)
    names = [T.SHORT_TYPES[c_type(d)] for d in (x.dtype, dtype, to)]
    fn = plan.kernel(
        f"threshold_{'_'.join(names)}",
        T.THRESHOLD,
        x=names[0],
        t=names[1],
        y=names[2],
        X=c_type(x.dtype),
        T=c_type(dtype),
        Y=c_type(to),
    )
    out = plan.buffer(layer, to, x.shape)
    plan.code_ranges[layer] = (int(bias), int(bias) + count)
    outer, plane = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1 :])
    search = int(ordered and count >= 16)
    plan.emit(
        f"    {fn}({x.var}, {outer}, {channels}, {plane}, {var}, "
        f"{int(raw.shape[0] > 1)}, {count}, {search}, {int(bias)}, {out.var});\n",
        out,
        x,
    )


# --- convolution, pooling, head ----------------------------------------------------------------
def _spatial(plan: CPlan, node: onnx.NodeProto, x: Tensor, kernel: list[int]) -> tuple[list, ...]:
    attrs = plan.attrs(node)
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    strides = list(attrs.get("strides", [1, 1]))
    if (
        len(x.shape) != 4
        or any(d != 1 for d in attrs.get("dilations", [1, 1]))
        or (attrs.get("group", 1) != 1 or attrs.get("ceil_mode", 0) or len(pads) != 4)
    ):
        raise plan.error(node, "the C target runs 2-D, group 1, undilated, floor-mode ops")
    size = [(x.shape[2 + i] + pads[i] + pads[i + 2] - kernel[i]) // strides[i] + 1 for i in (0, 1)]
    return pads, strides, size


def conv_integer(plan: CPlan, node: onnx.NodeProto) -> None:
    x = plan.get(node.input[0], node)
    weights = plan.inits.get(node.input[1])
    zero_points = [plan.inits.get(n) for n in node.input[2:] if n]
    if weights is None or weights.ndim != 4 or any(np.any(z != 0) for z in zero_points):
        raise plan.error(node, "needs 4-D initializer weights and zero zero-points")
    # one bit of int32 headroom: lb_tap adds, then removes, one wrapped product per position
    if json.loads(node.doc_string or "{}").get("accumulator_bits", 0) > 31:
        raise plan.error(node, "the C target needs accumulator_bits <= 31 (int32, 1 bit spare)")
    pads, strides, (ho, wo) = _spatial(plan, node, x, list(weights.shape[2:]))
    layer = node.output[0].removesuffix(".acc")
    bits = plan.weight_bits(layer, node)
    if plan.conv_kernel == "bitserial":
        planes = bitserial_planes(plan, x, bits)
        if planes is not None:
            conv_bitserial(plan, node, x, weights, bits, planes, pads, strides, (ho, wo))
        else:
            conv_dot(plan, node, x, weights, bits, pads, strides, (ho, wo))
        return
    var = plan.packed(layer, weights, bits)
    short = T.SHORT_TYPES[c_type(x.dtype)]
    fn = plan.kernel(f"conv_{short}", T.CONV, x=short, X=c_type(x.dtype))
    m, c, kh, kw = weights.shape
    out = plan.buffer(node.output[0], np.int32, (1, m, ho, wo))
    plan.emit(
        f"    {fn}({x.var}, {c}, {x.shape[2]}, {x.shape[3]}, {var}, {bits}u, {m}, {kh}, "
        f"{kw}, {strides[0]}, {strides[1]}, {pads[0]}, {pads[1]}, {ho}, {wo}, "
        f"{out.var});\n",
        out,
        x,
    )


def max_pool(plan: CPlan, node: onnx.NodeProto) -> None:
    x = plan.get(node.input[0], node)
    kernel = list(plan.attrs(node)["kernel_shape"])
    pads, strides, (ho, wo) = _spatial(plan, node, x, kernel)
    if x.dtype.kind not in "iu":
        raise plan.error(node, "the C target pools integer codes only")
    ctype, short = c_type(x.dtype), T.SHORT_TYPES[c_type(x.dtype)]
    low = c_number(np.iinfo(x.dtype).min, x.dtype)
    fn = plan.kernel(f"maxpool_{short}", T.MAXPOOL, x=short, X=ctype, MIN=low)
    out = plan.buffer(node.output[0], x.dtype, (1, x.shape[1], ho, wo))
    if x.name in plan.code_ranges:  # padding never wins: the codes keep their range
        plan.code_ranges[out.name] = plan.code_ranges[x.name]
    plan.emit(
        f"    {fn}({x.var}, {x.shape[1]}, {x.shape[2]}, {x.shape[3]}, {kernel[0]}, "
        f"{kernel[1]}, {strides[0]}, {strides[1]}, {pads[0]}, {pads[1]}, {ho}, {wo}, "
        f"{out.var});\n",
        out,
        x,
    )


def matmul(plan: CPlan, node: onnx.NodeProto) -> None:
    x = plan.get(node.input[0], node)
    weights = plan.inits.get(node.input[1])
    if weights is None or weights.ndim != 2 or len(x.shape) != 2 or x.dtype.kind not in "iu":
        raise plan.error(node, "the C target needs integer [1, F] x initializer [F, K]")
    if plan.class_dots is not None:
        raise plan.error(node, "the C target supports one MatMul (the head)")
    bits = plan.weight_bits("head", node)
    var = plan.packed("head", weights.T, bits)  # class-major [K][F]
    names = [T.SHORT_TYPES[c_type(x.dtype)], "i64"]
    fn = plan.kernel(
        f"matmul_{names[0]}_i64", T.MATMUL, x=names[0], y="i64", X=c_type(x.dtype), Y="int64_t"
    )
    out = plan.buffer(node.output[0], np.int64, (1, weights.shape[1]))
    plan.head_input, plan.class_dots = x, out
    plan.emit(
        f"    {fn}({x.var}, {weights.shape[0]}, {weights.shape[1]}, {var}, {bits}u, {out.var});\n",
        out,
        x,
    )


# --- layout-only ops and inline loops ----------------------------------------------------------
def _alias(plan: CPlan, node: onnx.NodeProto, shape: tuple[int, ...]) -> None:
    x = plan.get(node.input[0], node)
    if math.prod(shape) != x.size:
        raise plan.error(node, f"cannot view {list(x.shape)} as {list(shape)}")
    plan.tensors[node.output[0]] = Tensor(node.output[0], x.dtype, shape, x.var, x.root)
    if x.name in plan.code_ranges:
        plan.code_ranges[node.output[0]] = plan.code_ranges[x.name]
    plan.emit("", plan.tensors[node.output[0]], x)


def flatten(plan: CPlan, node: onnx.NodeProto) -> None:
    shape = plan.get(node.input[0], node).shape
    axis = plan.attrs(node).get("axis", 1) % len(shape)
    _alias(plan, node, (math.prod(shape[:axis]), math.prod(shape[axis:])))


def reshape(plan: CPlan, node: onnx.NodeProto) -> None:
    x = plan.get(node.input[0], node)
    target = [int(d) for d in plan.inits[node.input[1]].reshape(-1)]
    target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    if -1 in target:
        target[target.index(-1)] = x.size // -math.prod(target)
    _alias(plan, node, tuple(target))


def reduce_sum(plan: CPlan, node: onnx.NodeProto) -> None:
    x = plan.get(node.input[0], node)
    axes = sorted(int(a) % len(x.shape) for a in plan.inits[node.input[1]].reshape(-1))
    if not axes or axes != list(range(axes[0], axes[-1] + 1)):
        raise plan.error(node, "the C target sums over one contiguous block of axes")
    outer = math.prod(x.shape[: axes[0]])
    reduced, tail = (
        math.prod(x.shape[axes[0] : axes[-1] + 1]),
        math.prod(x.shape[axes[-1] + 1 :]),
    )
    keep = plan.attrs(node).get("keepdims", 1)
    shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape) if keep or i not in axes)
    out = plan.buffer(node.output[0], x.dtype, shape)
    squares = plan.producer.get(node.input[0])
    if squares is not None and squares.op_type == "Mul" and squares.input[0] == squares.input[1]:
        plan.feature_sq = out
    ctype = c_type(x.dtype)
    plan.emit(
        f"    {{ long o, r, t; for (o = 0; o < {outer}; ++o) for (t = 0; t < {tail}; ++t) {{\n"
        f"        {ctype} sum = 0;\n"
        f"        for (r = 0; r < {reduced}; ++r)\n"
        f"            sum += {x.var}[(o * {reduced} + r) * {tail} + t];\n"
        f"        {out.var}[o * {tail} + t] = sum;\n    }} }}\n",
        out,
        x,
    )


def elementwise(plan: CPlan, node: onnx.NodeProto) -> None:
    operands = [plan.get(name, node) for name in node.input]
    shape = tuple(np.broadcast_shapes(*(t.shape for t in operands)))
    if node.op_type == "Max":
        pattern = "{0}"
        for k in range(1, len(operands)):
            pattern = f"(({pattern}) > {{{k}}} ? ({pattern}) : {{{k}}})"
    elif node.op_type == "Sqrt":
        pattern = "sqrt({0})" if operands[0].dtype == np.float64 else "sqrtf({0})"
    else:
        pattern = ELEMENTWISE[node.op_type]
    plan.loop(node, operands[0].dtype, shape, f"({c_type(operands[0].dtype)})({pattern})", operands)


C_OPS = {
    "Add": elementwise,
    "Cast": cast,
    "ConvInteger": conv_integer,
    "Div": div,
    "Flatten": flatten,
    "MatMul": matmul,
    "Max": elementwise,
    "MaxPool": max_pool,
    "Mul": elementwise,
    "MultiThreshold": multithreshold,
    "Quant": quant,
    "ReduceSum": reduce_sum,
    "Reshape": reshape,
    "Sqrt": elementwise,
}
"""The op types the C target emits: the whole whitelist of docs/int_graph.md."""


def build_plan(
    model: onnx.ModelProto, description: dict, label: str, kernel: str = "bitserial"
) -> CPlan:
    """Returns the checked C plan of an integer graph (nodes in file order, batch 1).

    `kernel`: "bitserial" (bitserial.py: popcount kernels where the weights have 1 or 2 bits,
    int16 dot products elsewhere) or "scalar" (the reference kernels only).
    """
    if kernel not in KERNELS:
        raise ConfigError(f"C target: kernel {kernel!r}, choose one of {', '.join(KERNELS)}")
    plan = CPlan(model, description, label, kernel)
    for node in model.graph.node:
        emitter = C_OPS.get(node.op_type)
        if emitter is None:
            raise plan.error(node, "op not supported by the C target (docs/int_graph.md)")
        emitter(plan, node)
    plan.finish()
    return plan
