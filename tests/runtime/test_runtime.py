"""The Runtime end to end: a conv4 integer graph against qonnx, chunking, input checks, errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lowbit.errors import InputError, ModelFileError
from lowbit.runtime import Runtime, run_model

from .graphs import QONNX_DOMAIN, conv4_model, make_model, run_qonnx, tensor


@pytest.fixture(scope="module")
def conv4() -> onnx.ModelProto:
    return conv4_model(np.random.default_rng(0))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((5, 3, 32, 32)).astype(np.float32)


def test_conv4_every_tensor_equals_qonnx(conv4, images):
    expected = run_qonnx(conv4, images)
    actual = Runtime(conv4).run(images, keep_intermediates=True)
    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert actual[name].shape == value.shape, name
        assert np.array_equal(actual[name], value), name
    for layer in range(1, 5):  # codes really vary: the comparison is not vacuous
        assert set(np.unique(actual[f"act{layer}"])) == {0, 1, 2, 3}


def test_conv4_dtypes_and_layout(conv4, images):
    """ONNX dtypes, C-contiguous NCHW arrays, and only the logits without keep_intermediates."""
    runtime = Runtime(conv4)
    assert runtime.input_name == "input"
    assert runtime.output_names == ["logits"]
    outputs = runtime.run(images)
    assert list(outputs) == ["logits"]
    assert outputs["logits"].dtype == np.float64
    tensors = runtime.run(images, keep_intermediates=True)
    expected = {"codes0": np.int8, "acc1": np.int32, "acc1_f64": np.float64, "mt1": np.float64}
    expected |= {"act1": np.uint8}
    expected |= {"codes4": np.uint8, "f": np.int64, "d": np.int64, "n": np.int64}
    for name, dtype in expected.items():
        assert tensors[name].dtype == dtype, name
    assert tensors["acc2"].shape == (5, 64, 16, 16)
    assert all(t.flags.c_contiguous for t in tensors.values())


def test_chunks_do_not_change_results(conv4, images):
    runtime = Runtime(conv4)
    whole = runtime.run(images, keep_intermediates=True)
    chunked = runtime.run(images, keep_intermediates=True, batch_size=2)
    assert set(whole) == set(chunked)
    for name in whole:
        assert np.array_equal(whole[name], chunked[name]), name
    assert np.array_equal(run_model(conv4, images)["logits"], whole["logits"])


def test_layer_plan(conv4):
    plan = Runtime(conv4).layer_plan()
    assert [entry["name"] for entry in plan] == ["conv1", "conv2", "conv3", "conv4", "head_matmul"]
    first = plan[0]
    assert first["input_range"] == [-128, 127]
    weights = conv4.graph.initializer[[t.name for t in conv4.graph.initializer].index("w1")]
    w1 = onnx.numpy_helper.to_array(weights).reshape(64, -1).astype(np.int64)
    # int8 codes in [-128, 127]: a term x·w spans [min(127w, -128w), max(127w, -128w)]
    upper = np.maximum(127 * w1, -128 * w1).sum(axis=1)
    lower = np.minimum(127 * w1, -128 * w1).sum(axis=1)
    assert first["accumulator_bound"] == max(upper.max(), -lower.min())
    assert first["accumulator_bits"] == first["accumulator_bound"].bit_length() + 1
    # 2-bit codes × ternary weights: B = 3 · Σ|w| < 2^11, two samples per float32
    assert [entry["gemm_dtype"] for entry in plan] == ["float32"] + ["float32x2"] * 3 + ["float32"]
    assert plan[1]["input_range_source"] == "finn_datatype UINT2 of 'codes1'"
    # the head's int64 features are the pooled UINT2 codes, reached through Flatten and Cast
    assert plan[4]["input_range"] == [0, 3]
    assert plan[4]["input_range_source"] == "finn_datatype UINT2 of 'f'"


def test_float64_input_is_accepted_only_when_exact(conv4, images):
    runtime = Runtime(conv4)
    expected = runtime.run(images)["logits"]
    assert np.array_equal(runtime.run(images.astype(np.float64))["logits"], expected)
    inexact = images.astype(np.float64)
    inexact[0, 1, 2, 3] += 1e-12
    with pytest.raises(InputError, match=r"index \[0, 1, 2, 3\]"):
        runtime.run(inexact)


@pytest.mark.parametrize(
    "x, message",
    [
        (np.zeros((2, 3, 32, 32), np.int32), "must be float32, got int32"),
        (np.zeros((2, 3, 16, 32), np.float32), r"must have shape \['N', 3, 32, 32\]"),
        (np.zeros((3, 32, 32), np.float32), "must have shape"),
        (np.zeros((0, 3, 32, 32), np.float32), "empty batch"),
        ([[0.0]], "must be a numpy array"),
    ],
)
def test_bad_inputs(conv4, x, message):
    with pytest.raises(InputError, match=message):
        Runtime(conv4).run(x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_names_the_first_index(conv4, bad):
    x = np.zeros((2, 3, 32, 32), np.float32)
    x[1, 2, 5, 7] = bad
    x[1, 2, 9, 9] = bad
    with pytest.raises(InputError, match=r"index \[1, 2, 5, 7\]"):
        Runtime(conv4).run(x)


def test_bad_batch_size(conv4, images):
    with pytest.raises(InputError, match="batch_size"):
        Runtime(conv4).run(images, batch_size=0)


def small_graph(nodes, initializers=None) -> onnx.ModelProto:
    return make_model(
        nodes,
        tensor("x", TensorProto.INT32, ["N", 4]),
        [tensor("y", TensorProto.INT32, ["N", 4])],
        initializers if initializers is not None else {"c": np.ones(4, np.int32)},
    )


def test_unknown_op_names_the_node():
    model = small_graph([helper.make_node("Relu", ["x"], ["y"], name="act")])
    with pytest.raises(ModelFileError, match=r"node 'act' \(Relu\).*whitelist"):
        Runtime(model)


def test_bipolar_quant_is_not_whitelisted():
    node = helper.make_node("BipolarQuant", ["x", "c"], ["y"], name="bq", domain=QONNX_DOMAIN)
    with pytest.raises(ModelFileError, match=r"node 'bq' \(BipolarQuant\)"):
        Runtime(small_graph([node]))


def test_wrong_domain():
    node = helper.make_node("MultiThreshold", ["x", "c"], ["y"], name="mt", domain="custom")
    with pytest.raises(ModelFileError, match=r"node 'mt' \(MultiThreshold\): domain 'custom'"):
        Runtime(small_graph([node]))


def test_missing_initializer():
    model = small_graph([helper.make_node("Add", ["x", "bias"], ["y"], name="add")])
    with pytest.raises(ModelFileError, match=r"node 'add' \(Add\) input 'bias'.*initializer"):
        Runtime(model)
    node = helper.make_node("ConvInteger", ["x", "w"], ["y"], name="conv")
    with pytest.raises(ModelFileError, match=r"node 'conv' \(ConvInteger\).*'w' must be an init"):
        Runtime(small_graph([node]))


def test_cycle():
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"], name="first"),
        helper.make_node("Add", ["a", "c"], ["b"], name="second"),
        helper.make_node("Add", ["b", "c"], ["y"], name="third"),
    ]
    with pytest.raises(ModelFileError, match=r"cycle: nodes 'first' \(Add\)"):
        Runtime(small_graph(nodes))


def test_unsorted_graph_is_sorted():
    nodes = [
        helper.make_node("Add", ["a", "c"], ["y"], name="second"),
        helper.make_node("Mul", ["x", "c"], ["a"], name="first"),
    ]
    x = np.arange(8, dtype=np.int32).reshape(2, 4)
    assert np.array_equal(Runtime(small_graph(nodes)).run(x)["y"], x + 1)


@pytest.mark.parametrize(
    "node, message",
    [
        (helper.make_node("Cast", ["x"], ["y"]), "missing attribute 'to'"),
        (helper.make_node("Cast", ["x"], ["y"], to=1, foo=2), "unsupported attribute 'foo'"),
        (
            helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2], ceil_mode=1),
            "ceil_mode=1 is not supported",
        ),
        (helper.make_node("Sqrt", ["x", "c"], ["y"]), "has 2 inputs"),
    ],
)
def test_unsupported_attributes_and_arity(node, message):
    with pytest.raises(ModelFileError, match=message):
        Runtime(small_graph([node]))


def test_checker_errors_become_model_file_errors():
    model = small_graph([helper.make_node("Add", ["x", "c"], ["y"])])
    model.opset_import[0].version = 3  # ReduceSum-era opsets: Add-3 needs attributes it lacks
    with pytest.raises(ModelFileError, match="ONNX checker"):
        Runtime(model)


def test_file_errors(tmp_path, conv4):
    with pytest.raises(ModelFileError, match="no such model file"):
        Runtime(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx model\xff" * 10)
    with pytest.raises(ModelFileError, match="garbage.onnx: not a readable ONNX model"):
        Runtime(garbage)
    path = tmp_path / "model.int.onnx"
    onnx.save(conv4, path)
    assert Runtime(path).output_names == ["logits"]
