"""ConvRequantize (conv_requantize.py): the fused step equals the plain ops bit for bit."""

from __future__ import annotations

import logging
import threading

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from lowbit.runtime import Runtime
from lowbit.runtime.conv_requantize import ConvRequantize

from .graphs import QONNX_DOMAIN, conv4_model, make_model, tensor

BATCHES = (1, 2, 3, 64)


def fused_steps(runtime: Runtime) -> list[ConvRequantize]:
    return [step.run for step in runtime._fused_steps if isinstance(step.run, ConvRequantize)]


def assert_fused_equals_plain(runtime: Runtime, x: np.ndarray, **run_options) -> None:
    plain = runtime.run(x, keep_intermediates=True)
    fused = runtime.run(x, **run_options)
    for name, value in fused.items():
        assert value.dtype == plain[name].dtype and np.array_equal(value, plain[name]), name


@st.composite
def conv_requantize_graphs(draw: st.DrawFn):
    """ConvInteger (zero points, strides, pads) → [Cast f64] → MultiThreshold → Cast → [MaxPool]."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    channels, outputs = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    height, width = draw(st.integers(2, 9)), draw(st.integers(2, 9))
    kernel = draw(st.integers(1, min(3, height, width)))
    pads = [draw(st.integers(0, kernel - 1)) for _ in range(4)]
    stride = draw(st.integers(1, 2))
    x_type = draw(st.sampled_from([TensorProto.INT8, TensorProto.UINT8]))
    x_dtype = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8}
    info = np.iinfo(x_dtype[x_type])
    code_bits = draw(st.integers(1, 4))  # annotated input range: float32x2 plans for small ones
    low, high = (0, 2**code_bits - 1) if info.min == 0 else (-(2**code_bits), 2**code_bits - 1)
    weight_max = 2 ** draw(st.integers(0, 7)) - 1 or 1
    weights = rng.integers(-weight_max, weight_max + 1, (outputs, channels, kernel, kernel))
    initializers = {"w": weights.astype(np.int8)}
    conv_inputs = ["x", "w"]
    if draw(st.booleans()):  # zero points: the input's, and per-channel weights'
        initializers["xz"] = np.array(rng.integers(low, high + 1), x_dtype[x_type])
        initializers["wz"] = rng.integers(-2, 3, outputs).astype(np.int8)
        conv_inputs += ["xz", "wz"]
    levels = 2 ** draw(st.integers(1, 4)) - 1
    spread = max(abs(low), high) * weight_max * kernel * np.sqrt(channels) + 2
    thresholds = np.sort(rng.uniform(-spread, spread, (outputs, levels)), axis=1)
    if draw(st.booleans()):
        thresholds = np.round(thresholds)  # integer thresholds: ties happen
    if draw(st.booleans()):  # unreachable thresholds on both sides
        thresholds[:, 0], thresholds[:, -1] = -1e30, 1e30
    initializers["t"] = thresholds.astype(np.float32)
    signed_codes = draw(st.booleans())
    nodes = [helper.make_node("ConvInteger", conv_inputs, ["acc"], pads=pads, strides=[stride] * 2)]
    threshold_input = "acc"
    if draw(st.booleans()):
        threshold_input = "acc_f64"
        nodes.append(helper.make_node("Cast", ["acc"], ["acc_f64"], to=TensorProto.DOUBLE))
    nodes += [
        helper.make_node(
            "MultiThreshold",
            [threshold_input, "t"],
            ["mt"],
            domain=QONNX_DOMAIN,
            out_bias=-float((levels + 1) // 2) if signed_codes else 0.0,
            data_layout="NCHW",
        ),
        helper.make_node(
            "Cast", ["mt"], ["y"], to=TensorProto.INT8 if signed_codes else TensorProto.UINT8
        ),
    ]
    out_h = (height + pads[0] + pads[2] - kernel) // stride + 1
    out_w = (width + pads[1] + pads[3] - kernel) // stride + 1
    pool = draw(st.integers(1, min(3, out_h, out_w)))
    output, final_h, final_w = "y", out_h, out_w
    if pool > 1:
        pool_pads = [draw(st.integers(0, pool - 1)) for _ in range(4)]
        pool_pads = pool_pads if draw(st.booleans()) else [0, 0, 0, 0]
        pool_stride = draw(st.integers(1, pool))
        nodes.append(
            helper.make_node(
                "MaxPool",
                ["y"],
                ["pooled"],
                kernel_shape=[pool, pool],
                strides=[pool_stride] * 2,
                pads=pool_pads,
            )
        )
        output = "pooled"
        final_h = (out_h + pool_pads[0] + pool_pads[2] - pool) // pool_stride + 1
        final_w = (out_w + pool_pads[1] + pool_pads[3] - pool) // pool_stride + 1
    code_type = TensorProto.INT8 if signed_codes else TensorProto.UINT8
    annotation = f"{'U' if info.min == 0 else ''}INT{code_bits + (info.min != 0)}"
    model = make_model(
        nodes,
        tensor("x", x_type, ["N", channels, height, width]),
        [tensor(output, code_type, ["N", outputs, final_h, final_w])],
        initializers,
        {"x": annotation} if draw(st.booleans()) else {},
    )
    return model, x_dtype[x_type], (low, high)


@settings(max_examples=40, deadline=None)
@given(conv_requantize_graphs(), st.integers(0, 2**32 - 1))
def test_fused_equals_plain_on_random_graphs(case, seed):
    model, x_dtype, (low, high) = case
    runtime = Runtime(model)
    assert fused_steps(runtime), "the graph should fuse"
    rng = np.random.default_rng(seed)
    shape = runtime._graph.input_shape[1:]
    for batch in BATCHES:
        x = rng.integers(low, high + 1, (batch, *shape)).astype(x_dtype)
        assert_fused_equals_plain(runtime, x)
        assert_fused_equals_plain(runtime, x, batch_size=64)


def test_codes_outside_the_annotation_fall_back_exactly(caplog):
    """Annotated codes are checked, unless a requantization upstream proves their range."""
    weights = np.full((1, 600, 1, 1), 127, np.int8)
    expected = 255 * 127 * 600 - 127  # odd, above 2^24: float32 would round it
    nodes = [
        helper.make_node("ConvInteger", ["x", "w"], ["acc"]),
        helper.make_node("MultiThreshold", ["acc", "t"], ["mt"], domain=QONNX_DOMAIN),
        helper.make_node("Cast", ["mt"], ["y"], to=TensorProto.UINT8),
    ]
    thresholds = np.array([[expected, expected + 1]], np.float64)
    model = make_model(
        nodes,
        tensor("x", TensorProto.UINT8, ["N", 600, 1, 1]),
        [tensor("y", TensorProto.UINT8, ["N", 1, 1, 1])],
        {"w": weights, "t": thresholds},
        {"x": "UINT2"},
    )
    runtime = Runtime(model)
    (step,) = fused_steps(runtime)
    assert step._check_range and runtime.layer_plan()[0]["gemm_dtype"] == "float32"
    x = np.full((3, 600, 1, 1), 255, np.uint8)
    x[:, 0] = 254
    with caplog.at_level(logging.WARNING, logger="lowbit.runtime"):
        assert runtime.run(x)["y"].reshape(-1).tolist() == [1, 1, 1]
    assert "outside [0, 3]" in caplog.text
    conv4 = Runtime(conv4_model(np.random.default_rng(0)))
    # conv4: INT8 adds nothing to int8's range; the UINT2 codes come from requantizations
    assert [s._check_range for s in fused_steps(conv4)] == [False] * 4


def test_float64_plan():
    """uint8 codes × int8 weights over 576 taps: a bound above 2^24, float64 GEMM."""
    rng = np.random.default_rng(9)
    nodes = [
        helper.make_node("ConvInteger", ["x", "w"], ["acc"], pads=[1, 1, 1, 1]),
        helper.make_node("MultiThreshold", ["acc", "t"], ["mt"], domain=QONNX_DOMAIN),
        helper.make_node("Cast", ["mt"], ["y"], to=TensorProto.UINT8),
    ]
    thresholds = np.sort(rng.integers(2**23 - 2**20, 2**23 + 2**20, (4, 3)), axis=1)
    model = make_model(
        nodes,
        tensor("x", TensorProto.UINT8, ["N", 64, 5, 5]),
        [tensor("y", TensorProto.UINT8, ["N", 4, 5, 5])],
        {"w": rng.integers(120, 128, (4, 64, 3, 3), np.int8), "t": thresholds.astype(np.float32)},
    )
    runtime = Runtime(model)
    assert runtime.layer_plan()[0]["gemm_dtype"] == "float64" and fused_steps(runtime)
    for batch in BATCHES:
        assert_fused_equals_plain(runtime, rng.integers(0, 256, (batch, 64, 5, 5), np.uint8))


def test_conv4_plans_and_batches():
    """conv4 at 32x32: float32 first layer, float32x2 pairs after (bands at batch 1)."""
    runtime = Runtime(conv4_model(np.random.default_rng(3)))
    steps = fused_steps(runtime)
    assert [s._pairs for s in steps] == [False, True, True, True]
    rng = np.random.default_rng(4)
    for batch in (*BATCHES, 33, 65):
        x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        assert_fused_equals_plain(runtime, x)
    assert steps[1]._workspace((1, 64, 16, 16))["bands"] is not None


def test_concurrent_runs_are_exact():
    """Two threads share one Runtime: each has its own workspaces, so each gets its results."""
    runtime = Runtime(conv4_model(np.random.default_rng(5)))
    rng = np.random.default_rng(6)
    inputs = [rng.standard_normal((batch, 3, 32, 32)).astype(np.float32) for batch in (1, 7)]
    expected = [runtime.run(x, keep_intermediates=True)["logits"] for x in inputs]
    failures = []

    def work(index: int) -> None:
        for _ in range(5):
            if not np.array_equal(runtime.run(inputs[index])["logits"], expected[index]):
                failures.append(index)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1, 0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_outputs_are_not_workspaces():
    """A graph output made by the fused step is copied: the next run does not change it."""
    model = conv4_model(np.random.default_rng(7), channels=(3, 4))
    del model.graph.node[len(model.graph.node) - 11 :]  # cut the head: codes1 is the output
    del model.graph.output[:]
    model.graph.output.append(tensor("codes1", TensorProto.UINT8, ["N", 4, 16, 16]))
    runtime = Runtime(model)
    assert fused_steps(runtime)
    rng = np.random.default_rng(8)
    first_input = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    first = runtime.run(first_input)["codes1"]
    kept = first.copy()
    for batch_size in (32, 1):
        runtime.run(rng.standard_normal((2, 3, 32, 32)).astype(np.float32), batch_size=batch_size)
    assert np.array_equal(first, kept)
    chunked = runtime.run(first_input, batch_size=1)["codes1"]
    assert np.array_equal(chunked, kept)
