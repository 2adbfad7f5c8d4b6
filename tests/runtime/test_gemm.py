"""The exact GEMM dtype: float32 below 2^24, float64 below 2^53, int64 beyond — and exact."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from onnx import TensorProto, helper

from lowbit.runtime import Runtime
from lowbit.runtime.gemm import conv_integer, exact_gemm_dtype

from .graphs import make_model, run_onnxruntime, tensor


def test_exact_gemm_dtype_thresholds():
    assert exact_gemm_dtype(0) == "float32"
    assert exact_gemm_dtype(2**24 - 1) == "float32"
    assert exact_gemm_dtype(2**24) == "float64"
    assert exact_gemm_dtype(2**53 - 1) == "float64"
    assert exact_gemm_dtype(2**53) == "int64"
    assert exact_gemm_dtype(None) == "int64"


def conv_model(weights: np.ndarray, x_datatype: str | None = None):
    """uint8 codes [N, C, 1, 1] → 1x1 ConvInteger → int32, optionally annotated."""
    channels = weights.shape[1]
    node = helper.make_node("ConvInteger", ["x", "w"], ["y"], name="conv")
    return make_model(
        [node],
        tensor("x", TensorProto.UINT8, ["N", channels, 1, 1]),
        [tensor("y", TensorProto.INT32, ["N", weights.shape[0], 1, 1])],
        {"w": weights},
        {"x": x_datatype} if x_datatype else None,
    )


def test_conv_dtype_flips_at_2_pow_24_and_stays_exact():
    """255 · Σ|w| = 2^24 - 1 runs float32; one more unit of weight runs float64, exactly.

    518 weights of 127 plus one of 7 sum to 65793, and 255 · 65793 = 2^24 - 1. Raising the 7
    to 8 makes B = 255 · 65794 ≥ 2^24, and an input that makes the sum odd and above 2^24
    (one 254 against a weight of 127) is then computed exactly — float32 could not hold it.
    """
    weights = np.full((1, 519, 1, 1), 127, np.int8)
    weights[0, -1] = 7
    below = Runtime(conv_model(weights))
    assert below.layer_plan()[0]["accumulator_bound"] == 2**24 - 1
    assert below.layer_plan()[0]["gemm_dtype"] == "float32"
    x = np.full((1, 519, 1, 1), 255, np.uint8)
    assert below.run(x)["y"].item() == 2**24 - 1

    weights[0, -1] = 8
    above = Runtime(conv_model(weights))
    assert above.layer_plan()[0]["accumulator_bound"] == 255 * 65794
    assert above.layer_plan()[0]["gemm_dtype"] == "float64"
    x[0, 0] = 254
    expected = 255 * 65794 - 127
    assert expected % 2 == 1 and expected > 2**24
    assert int(np.float32(expected)) != expected  # a float32 result would be rounded
    assert above.run(x)["y"].item() == expected
    (reference,) = run_onnxruntime(conv_model(weights), x)
    assert reference.item() == expected


def test_annotation_narrows_the_bound():
    """A UINT2 annotation bounds the codes by 3 instead of uint8's 255."""
    weights = np.full((2, 4, 1, 1), 100, np.int8)
    assert Runtime(conv_model(weights)).layer_plan()[0]["accumulator_bound"] == 255 * 400
    plan = Runtime(conv_model(weights, "UINT2")).layer_plan()[0]
    assert plan["accumulator_bound"] == 3 * 400
    assert plan["input_range"] == [0, 3]
    assert plan["input_range_source"] == "finn_datatype UINT2 of 'x'"


def test_codes_outside_their_annotation_are_still_exact(caplog):
    """An annotation is trusted for the plan but checked: beyond it the dtype comes from data."""
    weights = np.full((1, 600, 1, 1), 127, np.int8)
    runtime = Runtime(conv_model(weights, "UINT2"))
    assert runtime.layer_plan()[0]["gemm_dtype"] == "float32"
    x = np.full((1, 600, 1, 1), 255, np.uint8)
    x[0, 0] = 254
    with caplog.at_level(logging.WARNING, logger="lowbit.runtime"):
        result = runtime.run(x)["y"].item()
    assert result == 255 * 127 * 600 - 127 > 2**24
    assert "outside [0, 3]" in caplog.text


def matmul_model(weights: np.ndarray, x_datatype: str | None):
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="head")
    return make_model(
        [node],
        tensor("x", TensorProto.INT64, ["N", weights.shape[0]]),
        [tensor("y", TensorProto.INT64, ["N", weights.shape[1]])],
        {"w": weights},
        {"x": x_datatype} if x_datatype else None,
    )


@pytest.mark.parametrize(
    "weights, datatype, bound, gemm_dtype",
    [
        (np.array([[65792], [1]]), "UINT8", 2**24 - 1, "float32"),
        (np.array([[65793], [1]]), "UINT8", 255 * 65794, "float64"),
        (np.array([[2**21], [2**21 - 1]]), "INT32", 2**31 * (2**22 - 1), "float64"),
        (np.array([[2**21], [2**21]]), "INT32", 2**53, "int64"),
        (np.array([[3], [1]]), None, 2**63 * 4, "int64"),  # int64 codes: unbounded in practice
    ],
)
def test_matmul_dtype_choice_is_exact(weights, datatype, bound, gemm_dtype):
    model = matmul_model(weights.astype(np.int64), datatype)
    plan = Runtime(model).layer_plan()[0]
    assert (plan["accumulator_bound"], plan["gemm_dtype"]) == (bound, gemm_dtype)
    high = 2**31 - 1 if datatype == "INT32" else 255
    x = np.array([[high, high - 1], [high - 1, high], [-high if datatype else 7, 3]], np.int64)
    actual = Runtime(model).run(x)["y"]
    assert np.array_equal(actual, x @ weights.astype(np.int64))  # numpy int64: exact here
    assert np.array_equal(actual, run_onnxruntime(model, x)[0])


@pytest.mark.parametrize("batch", [1, 2, 3, 5])
def test_conv_packs_two_samples_per_float32_below_2_pow_11(batch: int):
    """B = 255 · 8 = 2040 < 2^11 packs two samples per float32; accumulators hit ±2040."""
    weights = np.stack([np.ones((8, 1, 1)), -np.ones((8, 1, 1))]).astype(np.int8)
    model = conv_model(weights)
    runtime = Runtime(model)
    assert runtime.layer_plan()[0]["accumulator_bound"] == 2040
    assert runtime.layer_plan()[0]["gemm_dtype"] == "float32x2"
    x = np.random.default_rng(batch).integers(0, 256, (batch, 8, 1, 1)).astype(np.uint8)
    x[0] = 255  # +2040 and -2040
    actual = runtime.run(x)["y"]
    assert actual[0, :, 0, 0].tolist() == [2040, -2040]
    assert np.array_equal(actual, run_onnxruntime(model, x)[0])


def test_conv_pairs_stop_at_2_pow_11():
    weights = np.ones((1, 9, 1, 1), np.int8)  # B = 255 · 9 = 2295
    runtime = Runtime(conv_model(weights))
    assert runtime.layer_plan()[0]["gemm_dtype"] == "float32"
    x = np.full((3, 9, 1, 1), 255, np.uint8)
    assert runtime.run(x)["y"].reshape(-1).tolist() == [2295] * 3


def test_conv_gemm_dtypes_agree_on_a_3x3_layer():
    """Every GEMM dtype the plan may pick gives the same accumulators on one convolution."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, (5, 16, 6, 7)).astype(np.uint8)
    w = rng.integers(-1, 2, (8, 16, 3, 3)).astype(np.int8)
    results = [
        conv_integer(x, w, pads=[1, 0, 1, 2], strides=[1, 2], gemm_dtype=dtype)
        for dtype in ("float32x2", "float32", "float64", "int64", None)
    ]
    for result in results[1:]:
        assert result.dtype == np.int32
        assert np.array_equal(result, results[0])


def test_input_range_follows_values_through_layout_ops_and_widening_casts():
    """UINT2 codes → MaxPool → Flatten → Cast int64 → MatMul: the head's codes are UINT2."""
    nodes = [
        helper.make_node("MaxPool", ["x"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Cast", ["flat"], ["wide"], to=TensorProto.INT64),
        helper.make_node("MatMul", ["wide", "w"], ["y"], name="head"),
    ]
    weights = np.full((4, 3), 1000, np.int64)
    model = make_model(
        nodes,
        tensor("x", TensorProto.UINT8, ["N", 4, 2, 2]),
        [tensor("y", TensorProto.INT64, ["N", 3])],
        {"w": weights},
        {"x": "UINT2"},
    )
    plan = Runtime(model).layer_plan()[0]
    assert plan["input_range"] == [0, 3]
    assert plan["input_range_source"] == "finn_datatype UINT2 of 'x'"
    assert (plan["accumulator_bound"], plan["gemm_dtype"]) == (12000, "float32")
    x = np.random.default_rng(0).integers(0, 4, (3, 4, 2, 2)).astype(np.uint8)
    assert np.array_equal(Runtime(model).run(x)["y"], run_onnxruntime(model, x)[0])
