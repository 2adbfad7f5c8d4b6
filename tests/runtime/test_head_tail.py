"""The head as one step (head_tail.py) gives the unfused nodes' logits bit for bit."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from lowbit.export.lower import lower_model
from lowbit.runtime import Runtime
from lowbit.runtime.graph import load_graph
from lowbit.runtime.head_tail import HeadTail, head_fusion
from tests.export.helpers import make_calibrated

from .graphs import conv4_model


def bits(x: np.ndarray) -> np.ndarray:
    """The float64 values' bit patterns: equal only when every bit is (-0.0 differs from 0.0)."""
    return np.ascontiguousarray(x, np.float64).view(np.int64)


def head_step(runtime: Runtime):
    return runtime._fused_steps[-1].run


def assert_fused_equals_unfused(runtime: Runtime, x: np.ndarray) -> None:
    assert isinstance(head_step(runtime), HeadTail)
    fused = runtime.run(x)["logits"]
    every = runtime.run(x, keep_intermediates=True)["logits"]
    assert fused.dtype == every.dtype == np.float64
    assert np.array_equal(bits(fused), bits(every))


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_conv4_graph(batch):
    rng = np.random.default_rng(batch)
    runtime = Runtime(conv4_model(rng, channels=(3, 8, 8, 8, 8), size=32), threads=1)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    assert_fused_equals_unfused(runtime, x)
    assert not head_step(runtime)._check_range  # Flatten of requantized codes: proven


@pytest.mark.parametrize(
    "recipe, backbone, head",
    [
        ("w1a2", "conv4", "cosine"),
        ("w2a2", "resnet8", "cosine"),
        ("w2a2", "conv4", "linear"),
        ("w4a4", "resnet8", "linear"),
    ],
)
def test_exported_heads(recipe, backbone, head):
    graph, _, _ = lower_model(make_calibrated(recipe, backbone, head=head))
    runtime = Runtime(graph, threads=1)
    x = np.random.default_rng(0).uniform(-2, 2, (40, 3, 32, 32)).astype(np.float32)
    assert_fused_equals_unfused(runtime, x)
    # a run naming a tensor inside the head keeps every other fusion and runs the head unfused
    named = runtime.run(x, outputs=["head.class_dot"])
    every = runtime.run(x, keep_intermediates=True)
    assert runtime._steps_keeping(frozenset(["head.class_dot"])) is not None
    for name in ("head.class_dot", "logits"):
        assert np.array_equal(named[name], every[name]), name


def _with_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
    return model


def test_all_zero_features():
    """‖f‖ = 0: the Max floor keeps the cosine 0/1 = 0 on both paths."""
    rng = np.random.default_rng(0)
    model = conv4_model(rng, channels=(3, 4, 4, 4, 4), size=16, classes=3)
    unreachable = np.tile(np.array([1e9, 2e9, 3e9]), (4, 1))  # the last layer's codes: all 0
    runtime = Runtime(_with_initializer(model, "t4", unreachable), threads=1)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    assert not runtime.run(x, keep_intermediates=True)["f"].any()
    assert_fused_equals_unfused(runtime, x)
    assert not runtime.run(x)["logits"].any()


def test_features_outside_the_annotation_fall_back_to_an_exact_dtype(caplog):
    """The head trusts the features' annotated range only where it is proven; with a range
    annotation too narrow for the data, it warns and derives the GEMM dtype from the data."""
    rng = np.random.default_rng(1)
    model = conv4_model(rng, channels=(3, 4, 4, 4, 4), size=16, classes=3)
    # odd weights near 2^21: the plan's float32 GEMM is exact for features in [0, 1] (bound
    # 4·2^21 < 2^24), not for the features in [1, 4] this graph computes
    big = rng.integers(2**20, 2**21, size=(4, 3)).astype(np.int64) | 1
    model = _with_initializer(model, "class_weights", big)
    nodes = list(model.graph.node)
    flatten = next(i for i, n in enumerate(nodes) if n.op_type == "Flatten")
    # features pass through an Add, so the annotation ("f": UINT1 below) is all the plan has
    plus = helper.make_node("Add", ["flat", "one_uint8"], ["flat_plus"], name="plus_one")
    nodes.insert(flatten + 1, plus)
    for node in nodes:
        if node.op_type == "Cast" and list(node.input) == ["flat"]:
            node.input[0] = "flat_plus"
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.append(numpy_helper.from_array(np.array(1, np.uint8), "one_uint8"))
    for annotation in model.graph.quantization_annotation:
        if annotation.tensor_name == "f":
            annotation.quant_parameter_tensor_names[0].value = "UINT1"
    runtime = Runtime(model, threads=1)
    assert head_step(runtime)._check_range
    x = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="lowbit.runtime"):
        assert_fused_equals_unfused(runtime, x)
    assert "GEMM dtype from the data" in caplog.text


def test_no_fusion_when_an_inner_tensor_is_an_output():
    rng = np.random.default_rng(2)
    model = conv4_model(rng, channels=(3, 4, 4, 4, 4), size=16, classes=3)
    assert head_fusion(load_graph(model)) is not None
    model.graph.output.append(helper.make_tensor_value_info("n", onnx.TensorProto.INT64, ["N", 1]))
    assert head_fusion(load_graph(model)) is None
    runtime = Runtime(model, threads=1)
    assert not any(isinstance(step.run, HeadTail) for step in runtime._fused_steps)
