"""For all small integer graphs: the runtime equals qonnx's execute_onnx on every tensor."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from lowbit.runtime import Runtime

from .graphs import QONNX_DOMAIN, make_model, run_qonnx, tensor


@st.composite
def integer_graphs(draw: st.DrawFn):
    """Quant → Cast → 1-3 × [ConvInteger → MultiThreshold → Cast → MaxPool?] → MatMul head."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch, channels = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    height, width = draw(st.integers(3, 9)), draw(st.integers(3, 9))
    input_shape = [channels, height, width]
    input_bits, signed = draw(st.integers(2, 8)), draw(st.booleans())
    nodes = [
        helper.make_node(
            "Quant",
            ["x", "scale", "zero", "input_bits"],
            ["q"],
            domain=QONNX_DOMAIN,
            signed=int(signed),
            narrow=0,
        ),
        helper.make_node(
            "Cast", ["q"], ["c0"], to=TensorProto.INT8 if signed else TensorProto.UINT8
        ),
    ]
    initializers = {
        "scale": np.array(2.0 ** -draw(st.integers(0, 4)), np.float32),
        "zero": np.array(0.0, np.float32),
        "input_bits": np.array(input_bits, np.float32),
    }
    datatypes = {"c0": f"{'' if signed else 'U'}INT{input_bits}"}
    code_max = 2 ** (input_bits - 1) if signed else 2**input_bits - 1
    for layer in range(1, draw(st.integers(1, 3)) + 1):
        kernel = draw(st.integers(1, min(3, height, width)))
        stride = draw(st.integers(1, 2))
        pads = [draw(st.integers(0, kernel - 1)) for _ in range(4)]
        outputs = draw(st.integers(1, 5))
        weight_max = 2 ** (draw(st.integers(2, 8)) - 1) - 1
        weights = rng.integers(-weight_max, weight_max + 1, (outputs, channels, kernel, kernel))
        initializers[f"w{layer}"] = weights.astype(np.int8)
        height = (height + pads[0] + pads[2] - kernel) // stride + 1
        width = (width + pads[1] + pads[3] - kernel) // stride + 1
        bits = draw(st.integers(1, 4))
        levels = 2**bits - 1
        spread = code_max * np.sqrt(kernel * kernel * channels) * weight_max / 2 + 1
        thresholds = rng.integers(-spread, spread + 1, (outputs, levels))
        if draw(st.booleans()):  # spec graphs have increasing rows; qonnx allows any
            thresholds = np.sort(thresholds, axis=1)
        initializers[f"t{layer}"] = thresholds.astype(np.float32)
        signed_codes = draw(st.booleans())  # out_bias -2^(bits-1): int8 codes
        threshold_input = f"acc{layer}"
        nodes.append(
            helper.make_node(
                "ConvInteger",
                [f"c{layer - 1}", f"w{layer}"],
                [f"acc{layer}"],
                pads=pads,
                strides=[stride, stride],
            )
        )
        if draw(st.booleans()):  # docs/int_graph.md: thresholds see float64 accumulators
            threshold_input = f"acc{layer}_f64"
            nodes.append(
                helper.make_node("Cast", [f"acc{layer}"], [threshold_input], to=TensorProto.DOUBLE)
            )
        nodes += [
            helper.make_node(
                "MultiThreshold",
                [threshold_input, f"t{layer}"],
                [f"mt{layer}"],
                domain=QONNX_DOMAIN,
                out_dtype=f"INT{bits + 1}" if signed_codes else f"UINT{bits}",
                out_bias=-float(2 ** (bits - 1)) if signed_codes else 0.0,
                **({"data_layout": "NCHW"} if draw(st.booleans()) else {}),
            ),
            helper.make_node(
                "Cast",
                [f"mt{layer}"],
                [f"a{layer}"],
                to=TensorProto.INT8 if signed_codes else TensorProto.UINT8,
            ),
        ]
        current = f"a{layer}"
        pool = draw(st.integers(1, min(3, height, width)))
        if pool > 1:
            pool_stride = draw(st.integers(1, pool))
            pool_pads = [draw(st.integers(0, pool - 1)) for _ in range(4)]
            nodes.append(
                helper.make_node(
                    "MaxPool",
                    [current],
                    [f"p{layer}"],
                    kernel_shape=[pool, pool],
                    strides=[pool_stride, pool_stride],
                    pads=pool_pads,
                )
            )
            current = f"p{layer}"
            height = (height + pool_pads[0] + pool_pads[2] - pool) // pool_stride + 1
            width = (width + pool_pads[1] + pool_pads[3] - pool) // pool_stride + 1
        code_type = TensorProto.INT8 if signed_codes else TensorProto.UINT8
        nodes.append(helper.make_node("Cast", [current], [f"c{layer}"], to=code_type))  # a no-op
        channels, code_max = outputs, 2 ** (bits - 1) if signed_codes else levels
        datatypes[f"c{layer}"] = f"INT{bits + 1}" if signed_codes else f"UINT{bits}"
    features = channels * height * width
    initializers["head"] = rng.integers(-127, 128, (features, 3)).astype(np.int64)
    nodes += [
        helper.make_node("Flatten", [f"c{layer}"], ["flat"]),
        helper.make_node("Cast", ["flat"], ["f"], to=TensorProto.INT64),
        helper.make_node("MatMul", ["f", "head"], ["y"]),
    ]
    model = make_model(
        nodes,
        tensor("x", TensorProto.FLOAT, ["N", *input_shape]),
        [tensor("y", TensorProto.INT64, ["N", 3])],
        initializers,
        datatypes,
    )
    # ties and clamping both happen: x / scale spans beyond the code range on .5 steps
    x = rng.integers(-4 * 2**input_bits, 4 * 2**input_bits, (batch, *input_shape)) / 8
    return model, (x * initializers["scale"]).astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(integer_graphs())
def test_runtime_equals_qonnx_on_random_graphs(case):
    model, x = case
    expected = run_qonnx(model, x)
    runtime = Runtime(model)
    actual = runtime.run(x, keep_intermediates=True)
    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert np.array_equal(actual[name], value), name
    # without intermediates the requantizations run fused (fuse.py): the same output
    assert np.array_equal(runtime.run(x)["y"], expected["y"])
