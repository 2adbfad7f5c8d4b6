"""MultiThreshold and Quant against qonnx: its plain function and its executor, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from qonnx.custom_op.general.multithreshold import multithreshold as qonnx_multithreshold

from lowbit.runtime import Runtime
from lowbit.runtime.threshold import multithreshold

from .graphs import QONNX_DOMAIN, make_model, run_qonnx, tensor

rng = np.random.default_rng(7)


def thresholds_with_hits(x: np.ndarray, rows: int, count: int) -> np.ndarray:
    """Sorted float32 thresholds, half of them drawn from x's own values (exact equality)."""
    drawn = rng.choice(x.reshape(-1), size=(rows, count)).astype(np.float32)
    low, high = float(x.min()) - 1, float(x.max()) + 1
    spread = rng.uniform(low, high, size=(rows, count)).astype(np.float32)
    mixed = np.where(rng.random((rows, count)) < 0.5, drawn, spread)
    return np.sort(mixed, axis=1)


@pytest.mark.parametrize("count", [1, 3, 15, 16, 255])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.uint8, np.float32])
def test_multithreshold_function(count: int, per_channel: bool, dtype: type):
    if dtype == np.float32:
        x = rng.integers(-300, 300, size=(2, 6, 5, 5)).astype(np.float32) / 4
    else:
        info = np.iinfo(dtype)
        x = rng.integers(max(info.min, -1000), min(info.max, 1000) + 1, (2, 6, 5, 5))
        x = x.astype(dtype)
    if dtype == np.int8 and count > 127:
        pytest.skip("qonnx casts the count to int8 and wraps; lowbit counts exactly")
    thresholds = thresholds_with_hits(x, 6 if per_channel else 1, count)
    expected = qonnx_multithreshold(x, thresholds)
    actual = multithreshold(x, thresholds)
    assert actual.dtype == expected.dtype  # x's float type, float64 for integer x
    assert np.array_equal(actual, expected)


def test_multithreshold_fractional_unsorted_and_out_of_range_thresholds():
    """Non-integer, unsorted, ±inf, NaN and beyond-int32 thresholds on int32 codes."""
    x = rng.integers(-50, 50, size=(3, 4, 6)).astype(np.int32)
    thresholds = np.array(
        [
            [2.5, -3.5, 0.0, 10.0],
            [-np.inf, np.inf, 1.0, -1.0],
            [np.nan, 5.0, -5.0, 3e9],
            [-3e9, 0.5, 0.5, -0.5],
        ],
        np.float32,
    )
    actual = multithreshold(x, thresholds, data_layout="NCW")
    assert np.array_equal(actual, qonnx_multithreshold(x, thresholds))


def test_multithreshold_scale_and_bias():
    x = rng.integers(-20, 20, size=(2, 3, 4, 4)).astype(np.int32)
    thresholds = np.sort(rng.integers(-20, 20, size=(3, 7)), axis=1).astype(np.float32)
    expected = qonnx_multithreshold(x, thresholds, out_scale=0.5, out_bias=-1.5)
    actual = multithreshold(x, thresholds, out_scale=0.5, out_bias=-1.5)
    assert actual.dtype == expected.dtype == np.float64
    assert np.array_equal(actual, expected)


@pytest.mark.parametrize(
    "shape, data_layout",
    [((2, 5, 4, 4), "NCHW"), ((2, 4, 4, 5), "NHWC"), ((3, 5), ""), ((2, 6, 5), "")],
)
def test_multithreshold_node_vs_execute_onnx(shape: tuple[int, ...], data_layout: str):
    """Through both executors, with the data_layout rule (rank 3 without one means NWC)."""
    x = rng.integers(-30, 30, size=shape).astype(np.float32)
    channels = 5
    thresholds = thresholds_with_hits(x, channels, 3)
    attributes = {"out_dtype": "UINT2"}
    if data_layout:
        attributes["data_layout"] = data_layout
    node = helper.make_node("MultiThreshold", ["x", "t"], ["y"], domain=QONNX_DOMAIN, **attributes)
    model = make_model(
        [node],
        tensor("x", TensorProto.FLOAT, ["N", *shape[1:]]),
        [tensor("y", TensorProto.FLOAT, ["N", *shape[1:]])],
        {"t": thresholds},
    )
    expected = run_qonnx(model, x)["y"]
    assert np.array_equal(Runtime(model).run(x)["y"], expected)


TIES = np.array(
    [-130.5, -128.5, -127.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 126.5, 127.5, 200.0, -0.0],
    np.float32,
)


@pytest.mark.parametrize(
    "bitwidth, signed, narrow",
    [(8, 1, 0), (8, 1, 1), (8, 0, 0), (4, 1, 0), (2, 1, 1), (2, 0, 0), (1, 1, 0), (1, 0, 0)],
)
@pytest.mark.parametrize("scale", [1.0, 0.25, 0.1])
def test_quant_vs_execute_onnx(bitwidth: int, signed: int, narrow: int, scale: float):
    """Exact .5 ties (half to even), clamping both ends, bipolar 1-bit, non-unit scales."""
    x = np.concatenate([TIES * np.float32(scale), rng.standard_normal(50).astype(np.float32) * 20])
    x = x.reshape(2, -1)
    node = helper.make_node(
        "Quant",
        ["x", "scale", "zero", "bits"],
        ["y"],
        domain=QONNX_DOMAIN,
        signed=signed,
        narrow=narrow,
        rounding_mode="ROUND",
    )
    model = make_model(
        [node],
        tensor("x", TensorProto.FLOAT, ["N", x.shape[1]]),
        [tensor("y", TensorProto.FLOAT, ["N", x.shape[1]])],
        {
            "scale": np.array(scale, np.float32),
            "zero": np.array(0.0, np.float32),
            "bits": np.array(bitwidth, np.float32),
        },
    )
    expected = run_qonnx(model, x)["y"]
    actual = Runtime(model).run(x)["y"]
    assert actual.dtype == np.float32
    assert np.array_equal(actual, expected)


def test_quant_rounds_half_to_even():
    """The tie rule itself (DESIGN.md): 0.5 → 0, 1.5 → 2, 2.5 → 2, -2.5 → -2."""
    node = helper.make_node(
        "Quant", ["x", "one", "zero", "bits"], ["y"], domain=QONNX_DOMAIN, signed=1, narrow=0
    )
    model = make_model(
        [node],
        tensor("x", TensorProto.FLOAT, ["N", 4]),
        [tensor("y", TensorProto.FLOAT, ["N", 4])],
        {
            "one": np.array(1.0, np.float32),
            "zero": np.array(0.0, np.float32),
            "bits": np.array(8.0, np.float32),
        },
    )
    x = np.array([[0.5, 1.5, 2.5, -2.5]], np.float32)
    assert Runtime(model).run(x)["y"].tolist() == [[0.0, 2.0, 2.0, -2.0]]
