"""The FINN and hls4ml graphs, built through lowbit.onnx_graph.GraphBuilder, pinned node by node.

A hand-made two-layer hand-off (bipolar then ternary weights, 2-bit codes, max-pools, an 8-bit
head) goes through both builders; every node (name, op, domain, inputs, outputs, attributes),
initializer (name, type, shape, sha256 of its values), opset, graph input/output, value_info and
FINN datatype annotation must equal target_graphs.json. hls4ml keys its configuration by node
name and reads shapes from value_info, FINN reads the datatype annotations: a change to any of
them changes what the toolchains build, and shows up here as a readable diff.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lowbit.targets.finn import build_finn_graph
from lowbit.targets.hls4ml import build_hls4ml_graph
from lowbit.targets.reader import ConvLayer, HandOff

EXPECTED = Path(__file__).with_name("target_graphs.json")


def handoff() -> HandOff:
    rng = np.random.default_rng(0)
    bipolar = np.where(rng.random((4, 3, 3, 3)) < 0.5, -1, 1).astype(np.int64)
    ternary = rng.integers(-1, 2, (4, 4, 3, 3)).astype(np.int64)
    same = {"out_bias": 0, "act_bits": 2, "signed": False, "pads": [1] * 4, "strides": [1, 1]}
    first = ConvLayer(
        "backbone.blocks.0.act", bipolar, 1, (-128, 127), 3456, 13,
        np.array([[-8, 0, 8]] * 4, np.int64), pool=True, **same,
    )  # fmt: skip
    second = ConvLayer(
        "backbone.blocks.1.act", ternary, 2, (0, 3), 108, 8,
        np.array([[-3, 1, 5]] * 4, np.int64), pool=True, **same,
    )  # fmt: skip
    head = rng.integers(-127, 128, (16, 3)).astype(np.int64)
    tail = np.array([0.5, 1.0, 2.0])
    return HandOff([3, 8, 8], 2.0**-6, 8, [first, second], head, 8, "cosine", tail, {})


def _value(attribute: onnx.AttributeProto):
    value = helper.get_attribute_value(attribute)
    return value.decode() if isinstance(value, bytes) else value


def _info(info: onnx.ValueInfoProto) -> list:
    tensor = info.type.tensor_type
    return [info.name, tensor.elem_type, [d.dim_value or d.dim_param for d in tensor.shape.dim]]


def structure(model: onnx.ModelProto) -> dict:
    """Everything of a graph a toolchain reads, as JSON values."""
    graph = model.graph
    return {
        "ir_version": model.ir_version,
        "opsets": sorted([o.domain, o.version] for o in model.opset_import),
        "graph": graph.name,
        "nodes": [
            [n.name, n.op_type, n.domain, list(n.input), list(n.output)]
            + [{a.name: _value(a) for a in n.attribute}]
            for n in graph.node
        ],
        "initializers": [
            [t.name, t.data_type, list(t.dims)]
            + [hashlib.sha256(numpy_helper.to_array(t).tobytes()).hexdigest()[:16]]
            for t in graph.initializer
        ],
        "inputs": [_info(v) for v in graph.input],
        "outputs": [_info(v) for v in graph.output],
        "value_info": [_info(v) for v in graph.value_info],
        "annotations": [
            [a.tensor_name, [[e.key, e.value] for e in a.quant_parameter_tensor_names]]
            for a in graph.quantization_annotation
        ],
        "metadata": [[p.key, p.value] for p in model.metadata_props],
    }


def built() -> dict:
    hls4ml_graph, plan = build_hls4ml_graph(handoff())
    graphs = {"finn": structure(build_finn_graph(handoff())), "hls4ml": structure(hls4ml_graph)}
    return json.loads(json.dumps({**graphs, "hls4ml_plan": plan}))  # tuples -> lists


def test_graphs_equal_the_pinned_structure():
    expected, got = json.loads(EXPECTED.read_text()), built()
    for kind in ("finn", "hls4ml"):
        for key in expected[kind]:
            assert got[kind][key] == expected[kind][key], f"{kind} {key}"
    assert got["hls4ml_plan"] == expected["hls4ml_plan"]


def test_graphs_pass_the_onnx_checker():
    onnx.checker.check_model(build_finn_graph(handoff()), full_check=True)
    onnx.checker.check_model(build_hls4ml_graph(handoff())[0])
