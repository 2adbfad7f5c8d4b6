"""Fused requantization (fuse.py): found where its conditions hold, equal to the plain ops."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from lowbit.runtime import Runtime
from lowbit.runtime.fuse import requantization_fusions
from lowbit.runtime.graph import load_graph

from .graphs import QONNX_DOMAIN, conv4_model, make_model, tensor


def test_conv4_requantizations_fuse_with_their_pools():
    model = conv4_model(np.random.default_rng(0))
    fusions = requantization_fusions(load_graph(model))
    assert [[n.op_type for n in f.nodes] for f in fusions] == [
        ["Cast", "MultiThreshold", "Cast", "MaxPool"]
    ] * 4
    assert [f.inputs[0] for f in fusions] == ["acc1", "acc2", "acc3", "acc4"]
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32)
    runtime = Runtime(model)
    kept = runtime.run(x, keep_intermediates=True)
    assert np.array_equal(runtime.run(x)["logits"], kept["logits"])


def requantization_graph(out_scale: float = 1.0, out_bias: float = -2.0, expose: bool = False):
    """int32 → Cast f64 → MultiThreshold → Cast int8 → MaxPool 3x3 pad 1, signed 2-bit codes."""
    thresholds = np.array([[-5, 0, 5], [-1, 0, 1]], np.float32)
    nodes = [
        helper.make_node("Cast", ["x"], ["x_f64"], to=TensorProto.DOUBLE),
        helper.make_node(
            "MultiThreshold",
            ["x_f64", "t"],
            ["mt"],
            domain=QONNX_DOMAIN,
            out_dtype="INT2",
            out_scale=out_scale,
            out_bias=out_bias,
            data_layout="NCHW",
        ),
        helper.make_node("Cast", ["mt"], ["codes"], to=TensorProto.INT8),
        helper.make_node(
            "MaxPool", ["codes"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
    ]
    outputs = [tensor("y", TensorProto.INT8, ["N", 2, 3, 3])]
    if expose:
        outputs.append(tensor("mt", TensorProto.DOUBLE, ["N", 2, 5, 5]))
    return make_model(
        nodes, tensor("x", TensorProto.INT32, ["N", 2, 5, 5]), outputs, {"t": thresholds}
    )


def test_signed_codes_fuse_and_match():
    model = requantization_graph()
    (fusion,) = requantization_fusions(load_graph(model))
    assert len(fusion.nodes) == 4 and fusion.keywords["out_bias"] == -2
    x = np.random.default_rng(4).integers(-8, 9, (3, 2, 5, 5)).astype(np.int32)
    runtime = Runtime(model)
    kept = runtime.run(x, keep_intermediates=True)
    assert np.array_equal(runtime.run(x)["y"], kept["y"])
    assert kept["y"].min() == -2 and kept["y"].max() == 1


def test_no_fusion_when_conditions_fail():
    """A non-unit out_scale, or an inner tensor that is a graph output, keeps the plain ops."""
    assert requantization_fusions(load_graph(requantization_graph(out_scale=2.0))) == []
    assert requantization_fusions(load_graph(requantization_graph(expose=True))) == []
    model = requantization_graph(out_scale=2.0)
    x = np.random.default_rng(5).integers(-8, 9, (2, 2, 5, 5)).astype(np.int32)
    runtime = Runtime(model)
    assert np.array_equal(runtime.run(x)["y"], runtime.run(x, keep_intermediates=True)["y"])
