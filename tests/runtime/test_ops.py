"""Every standard op of the whitelist against onnxruntime on small random single-node graphs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from lowbit.runtime import Runtime

from .graphs import make_model, run_onnxruntime, single_node_model, tensor

rng = np.random.default_rng(20240601)


def codes(dtype: type, shape: tuple[int, ...], low: int | None = None, high: int | None = None):
    info = np.iinfo(dtype)
    low = info.min if low is None else low
    high = info.max if high is None else high
    return rng.integers(low, high + 1, size=shape).astype(dtype)


def assert_matches_onnxruntime(model, x: np.ndarray) -> np.ndarray:
    """Runtime output == onnxruntime output, bit for bit and dtype for dtype."""
    (expected,) = run_onnxruntime(model, x)
    actual = Runtime(model).run(x)[model.graph.output[0].name]
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert np.array_equal(actual, expected, equal_nan=True)
    return actual


ELEMENTWISE_CASES = [
    ("Add", codes(np.int32, (2, 4, 3, 3), -(2**20), 2**20), codes(np.int32, (1, 4, 1, 1))),
    ("Add", codes(np.int64, (3, 5), -(2**40), 2**40), codes(np.int64, (5,), -(2**40), 2**40)),
    ("Add", rng.standard_normal((2, 3)), rng.standard_normal((3,))),
    ("Mul", codes(np.int32, (2, 4, 3, 3), -1000, 1000), np.array(8, np.int32)),  # shift × 2^3
    ("Mul", codes(np.int64, (3, 5), -(2**20), 2**20), codes(np.int64, (3, 5), -(2**20), 2**20)),
    ("Mul", rng.standard_normal((2, 3)), rng.standard_normal((1, 3))),
    ("Div", rng.standard_normal((2, 3, 4, 4)).astype(np.float32), np.array(0.1, np.float32)),
    ("Div", rng.standard_normal((4, 3)), np.abs(rng.standard_normal((4, 1))) + 0.5),
    ("Div", codes(np.int32, (4, 6), -100, 100), np.array([3, -3, 7, -7, 1, 2], np.int32)),
    ("Max", rng.standard_normal((4, 1)), np.array(0.3, np.float64)),
    ("Sub", codes(np.int32, (2, 4, 3, 3), -(2**20), 2**20), codes(np.int32, (1, 4, 1, 1))),
    ("Sub", codes(np.int64, (3, 5), -(2**40), 2**40), codes(np.int64, (5,), -(2**40), 2**40)),
]


@pytest.mark.parametrize("op, x, constant", ELEMENTWISE_CASES)
def test_binary_op(op: str, x: np.ndarray, constant: np.ndarray):
    node = helper.make_node(op, ["x", "c"], ["y"])
    dtype = helper.np_dtype_to_tensor_dtype(x.dtype)
    assert_matches_onnxruntime(single_node_model(node, x, dtype, {"c": constant}), x)


def test_add_of_two_activations():
    """A residual sum: both operands computed from the input."""
    x = codes(np.int32, (2, 3, 4, 4), -(2**20), 2**20)
    nodes = [
        helper.make_node("Mul", ["x", "shift"], ["shifted"]),
        helper.make_node("Add", ["x", "shifted"], ["y"]),
    ]
    model = make_model(
        nodes,
        tensor("x", TensorProto.INT32, ["N", 3, 4, 4]),
        [tensor("y", TensorProto.INT32, None)],
        {"shift": np.array(4, np.int32)},
    )
    assert_matches_onnxruntime(model, x)


def test_sqrt():
    x = np.abs(rng.standard_normal((5, 3))) * 1e6
    node = helper.make_node("Sqrt", ["x"], ["y"])
    assert_matches_onnxruntime(single_node_model(node, x, TensorProto.DOUBLE), x)


@pytest.mark.parametrize(
    "x, to",
    [
        (rng.integers(-128, 128, (3, 2, 4, 4)).astype(np.float32), TensorProto.INT8),
        (rng.integers(0, 256, (3, 2, 4, 4)).astype(np.float32), TensorProto.UINT8),
        (rng.integers(-(2**24), 2**24, (3, 7)).astype(np.float32), TensorProto.INT32),
        (codes(np.uint8, (3, 7)), TensorProto.INT64),
        (codes(np.int64, (3, 7), -(2**50), 2**50), TensorProto.DOUBLE),
        (codes(np.int32, (3, 7)), TensorProto.FLOAT),
    ],
)
def test_cast(x: np.ndarray, to: int):
    node = helper.make_node("Cast", ["x"], ["y"], to=to)
    assert_matches_onnxruntime(single_node_model(node, x, to), x)


CONV_CASES = [  # x dtype, w dtype, shape, out channels, kernel, pads, strides, zero points
    (np.int8, np.int8, (2, 3, 8, 8), 5, 3, [1, 1, 1, 1], [1, 1], None),
    (np.uint8, np.int8, (2, 4, 7, 9), 3, 3, [0, 1, 2, 1], [2, 1], None),
    (np.uint8, np.int8, (1, 2, 6, 6), 4, 1, [0, 0, 0, 0], [1, 1], None),
    (np.uint8, np.uint8, (2, 3, 5, 5), 2, 3, [1, 1, 1, 1], [1, 1], (7, 3)),
    (np.int8, np.int8, (2, 3, 5, 6), 4, 2, [1, 0, 0, 1], [2, 2], (-5, 0)),
]


@pytest.mark.parametrize(
    "x_dtype, w_dtype, shape, outputs, kernel, pads, strides, zeros", CONV_CASES
)
def test_conv_integer(x_dtype, w_dtype, shape, outputs, kernel, pads, strides, zeros):
    x = codes(x_dtype, shape)
    initializers = {"w": codes(w_dtype, (outputs, shape[1], kernel, kernel))}
    inputs = ["x", "w"]
    if zeros is not None:
        initializers.update(x_zero=np.array(zeros[0], x_dtype), w_zero=np.array(zeros[1], w_dtype))
        inputs += ["x_zero", "w_zero"]
    node = helper.make_node("ConvInteger", inputs, ["y"], pads=pads, strides=strides)
    assert_matches_onnxruntime(single_node_model(node, x, TensorProto.INT32, initializers), x)


@pytest.mark.parametrize(
    "dtype, kernel, strides, pads",
    [
        (np.uint8, [2, 2], [2, 2], None),
        (np.int8, [3, 3], [1, 1], [1, 1, 1, 1]),
        (np.int8, [3, 3], [2, 2], [0, 1, 1, 0]),
        (np.uint8, [3, 2], [1, 2], [1, 0, 1, 1]),
        (np.float32, [2, 2], [1, 1], [1, 1, 0, 0]),
    ],
)
def test_max_pool(dtype, kernel, strides, pads):
    x = codes(dtype, (2, 3, 7, 8)) if dtype != np.float32 else rng.standard_normal((2, 3, 7, 8))
    x = x.astype(dtype)
    attributes = {"kernel_shape": kernel, "strides": strides}
    if pads is not None:
        attributes["pads"] = pads
    node = helper.make_node("MaxPool", ["x"], ["y"], **attributes)
    elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    assert_matches_onnxruntime(single_node_model(node, x, elem_type), x)


@pytest.mark.parametrize(
    "dtype, axes, keepdims",
    [(np.int32, [2, 3], 1), (np.int32, [2, 3], 0), (np.int64, [1], 1), (np.int64, [-1], 0)],
)
def test_reduce_sum(dtype, axes, keepdims):
    x = codes(dtype, (2, 3, 4, 5), -(2**20), 2**20)
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=keepdims)
    elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    model = single_node_model(node, x, elem_type, {"axes": np.array(axes, np.int64)})
    assert_matches_onnxruntime(model, x)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8])
@pytest.mark.parametrize("axes, keepdims", [([1], 0), ([1, 2], 0), ([2, 3], 1), (None, 1)])
def test_reduce_max(dtype, axes, keepdims):
    bounds = (None, None) if dtype == np.uint8 else (-(2**20), 2**20)
    x = codes(dtype, (2, 3, 4, 5), *bounds)
    attributes = {"keepdims": keepdims} | ({} if axes is None else {"axes": axes})
    node = helper.make_node("ReduceMax", ["x"], ["y"], **attributes)
    elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    assert_matches_onnxruntime(single_node_model(node, x, elem_type), x)


@pytest.mark.parametrize("axis", [1, 2, -1])
def test_flatten(axis: int):
    x = codes(np.uint8, (2, 3, 4, 5))
    node = helper.make_node("Flatten", ["x"], ["y"], axis=axis)
    assert_matches_onnxruntime(single_node_model(node, x, TensorProto.UINT8), x)


def test_reshape():
    x = codes(np.int64, (2, 3, 4, 5))
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    model = single_node_model(node, x, TensorProto.INT64, {"shape": np.array([0, -1, 5], np.int64)})
    assert_matches_onnxruntime(model, x)


@pytest.mark.parametrize(
    "x, w",
    [
        (codes(np.int64, (4, 16), 0, 3), codes(np.int64, (16, 5), -127, 127)),  # float32 path
        (codes(np.int64, (4, 16), -(2**30), 2**30), codes(np.int64, (16, 5), -127, 127)),
        (codes(np.int64, (3, 8), -(2**40), 2**40), codes(np.int64, (8, 2), -(2**20), 2**20)),
        (rng.standard_normal((3, 4)), rng.standard_normal((4, 2))),
    ],
)
def test_matmul(x: np.ndarray, w: np.ndarray):
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    elem_type = helper.np_dtype_to_tensor_dtype(x.dtype)
    assert_matches_onnxruntime(single_node_model(node, x, elem_type, {"w": w}), x)


def test_float_input_chain():
    """The input end of the graph: float32 Div then Cast, as onnxruntime computes it."""
    x = rng.standard_normal((3, 3, 4, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Div", ["x", "s"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["y"], to=TensorProto.INT32),
    ]
    model = make_model(
        nodes,
        tensor("x", TensorProto.FLOAT, ["N", 3, 4, 4]),
        [tensor("y", TensorProto.INT32, None)],
        {"s": np.array(1 / 64, np.float32)},
    )
    assert_matches_onnxruntime(model, x)
