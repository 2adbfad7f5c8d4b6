"""QONNX and QCDQ graphs: qonnx's executor and onnxruntime give the fake-quant codes exactly."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.transformation.infer_shapes import InferShapes

from lowbit.errors import ModelFileError
from lowbit.export.qcdq import QONNX_DOMAINS, quant_to_qcdq
from lowbit.export.qonnx_export import export_qonnx_model
from lowbit.quant import get_recipe
from lowbit.verify.capture import ort_qcdq_codes, qonnx_codes, torch_codes
from lowbit.verify.compare import tail_tolerance

from .helpers import calibrated, sample_inputs
from .test_lower import CODE_TENSORS, MATRIX


@functools.cache
def exported(recipe: str, backbone: str):
    """(model, qonnx graph, qcdq graph, inputs, torch codes): shared, read-only."""
    model = calibrated(recipe, backbone)
    qonnx_graph = export_qonnx_model(model)
    x = sample_inputs(model)
    return model, qonnx_graph, quant_to_qcdq(qonnx_graph), x, torch_codes(model, x)


def assert_codes_equal(expected: dict, got: dict) -> None:
    assert set(got) == set(expected)  # every code tensor is named in the graph
    for name, codes in expected.items():
        assert np.array_equal(got[name], codes), name


@pytest.mark.parametrize(("recipe", "backbone"), MATRIX)
def test_qcdq_in_onnxruntime_equals_torch_codes(recipe: str, backbone: str) -> None:
    model, _, qcdq, x, (codes, _, logits) = exported(recipe, backbone)
    assert len(codes) == CODE_TENSORS[backbone]
    got, got_logits = ort_qcdq_codes(qcdq, x, list(codes))
    assert_codes_equal(codes, got)
    # same float32 head in both; tolerance as verify states it for the float tail
    assert np.abs(got_logits - logits).max() <= tail_tolerance(10.0, model.feature_dim())


@pytest.mark.parametrize(("recipe", "backbone"), MATRIX)
def test_qonnx_graph_in_qonnx_equals_torch_codes(recipe: str, backbone: str) -> None:
    model, qonnx_graph, _, x, (codes, _, logits) = exported(recipe, backbone)
    got, got_logits = qonnx_codes(qonnx_graph, x, list(codes))
    assert_codes_equal(codes, got)
    assert np.abs(got_logits - logits).max() <= tail_tolerance(10.0, model.feature_dim())


@pytest.mark.parametrize(("recipe", "backbone"), MATRIX)
def test_qcdq_uses_standard_ops_only(recipe: str, backbone: str) -> None:
    _, qonnx_graph, qcdq, _, _ = exported(recipe, backbone)
    onnx.checker.check_model(qcdq)
    assert all(node.domain in ("", "ai.onnx") for node in qcdq.graph.node)
    assert not {op.domain for op in qcdq.opset_import} & set(QONNX_DOMAINS)
    weight_bits = get_recipe(recipe).weight_bits
    bipolar = [node for node in qonnx_graph.graph.node if node.op_type == "BipolarQuant"]
    inits = {init.name for init in qonnx_graph.graph.initializer}
    if weight_bits == 1:
        body_convs = 3 if backbone == "conv4" else 2 * 3 + 2  # resnet8: 2 per block + 2 shortcuts
        assert len(bipolar) == body_convs
        assert all(node.input[0] in inits for node in bipolar)  # weights only, never activations
        codes = [
            numpy_helper.to_array(init)
            for init in qcdq.graph.initializer
            if init.name in {f"{node.output[0]}.codes" for node in bipolar}
        ]
        assert len(codes) == body_convs
        assert all(c.dtype == np.int8 and set(np.unique(c).tolist()) <= {-1, 1} for c in codes)
    else:
        assert bipolar == []


def test_w1a1_activations_are_unsigned_one_bit_quant() -> None:
    """Brevitas exports every 1-bit quantizer as BipolarQuant; a 1-bit ReLU is {0, 1}, not ±1."""
    _, qonnx_graph, _, x, (codes, _, _) = exported("w1a1", "conv4")
    activations = [n for n in qonnx_graph.graph.node if n.output[0].endswith(".act")]
    assert len(activations) == 4
    inits = {init.name: numpy_helper.to_array(init) for init in qonnx_graph.graph.initializer}
    for node in activations:
        assert node.op_type == "Quant"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["signed"] == 0 and float(inits[node.input[3]]) == 1.0
    for name, code in codes.items():
        if name.endswith(".act"):
            assert set(np.unique(code).tolist()) == {0, 1}, name


# --- quant_to_qcdq on small hand-built QONNX graphs --------------------------------------------


def quant_graph(
    *, bits: int, signed: bool, narrow: bool, scale: float = 0.5, rounding: str = "ROUND"
) -> onnx.ModelProto:
    """input [1, N] -> Quant -> output."""
    inits = [
        numpy_helper.from_array(np.float32(scale), "scale"),
        numpy_helper.from_array(np.float32(0.0), "zero"),
        numpy_helper.from_array(np.float32(bits), "bits"),
    ]
    node = helper.make_node(
        "Quant",
        ["input", "scale", "zero", "bits"],
        ["output"],
        domain="qonnx.custom_op.general",
        signed=int(signed),
        narrow=int(narrow),
        rounding_mode=rounding,
    )
    graph = helper.make_graph(
        [node],
        "q",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, None])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, None])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("qonnx.custom_op.general", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def run_qonnx(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for info in list(fixed.graph.input) + list(fixed.graph.output):
        info.type.tensor_type.shape.dim[1].dim_value = x.shape[1]
    wrapper = ModelWrapper(fixed).transform(InferShapes())
    return execute_onnx(wrapper, {"input": x})["output"]


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options)
    return session.run(None, {"input": x})[0]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.integers(1, 8),
    st.booleans(),
    st.booleans(),
    st.lists(st.integers(-300, 300), min_size=1, max_size=32),
)
def test_quant_to_qcdq_equals_qonnx_quant_on_ties(bits, signed, narrow, halves) -> None:
    """Every input is a tie or an integer multiple of scale / 2, also far out of range."""
    assume(not (signed and bits == 1))  # signed 1-bit is BipolarQuant's job
    model = quant_graph(bits=bits, signed=signed, narrow=narrow)
    x = (np.array(halves, np.float32) * np.float32(0.25))[None, :]  # scale 0.5: k/2 steps
    assert np.array_equal(run_ort(quant_to_qcdq(model), x), run_qonnx(model, x))


def test_bipolar_weight_zero_maps_to_plus_one() -> None:
    weights = np.array([[0.0, -0.3], [0.2, -0.0]], np.float32)
    inits = [
        numpy_helper.from_array(weights, "w"),
        numpy_helper.from_array(np.float32(0.5), "scale"),
    ]
    nodes = [
        helper.make_node("BipolarQuant", ["w", "scale"], ["wq"], domain="qonnx.custom_op.general"),
        helper.make_node("MatMul", ["input", "wq"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "b",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("qonnx.custom_op.general", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    x = np.array([[1.0, 10.0]], np.float32)
    qcdq = quant_to_qcdq(model)
    codes = numpy_helper.to_array(next(i for i in qcdq.graph.initializer if i.name == "wq.codes"))
    assert codes.tolist() == [[1, -1], [1, 1]]  # sign(0) = sign(-0) = +1
    assert np.array_equal(run_ort(qcdq, x), run_qonnx(model, x))
    assert run_ort(qcdq, x).tolist() == [[0.5 + 5.0, -0.5 + 5.0]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rounding": "FLOOR"}, "rounding_mode"),
        ({"bits": 9}, "int8"),
    ],
)
def test_quant_to_qcdq_refuses_what_it_cannot_lower(change: dict, message: str) -> None:
    model = quant_graph(**{"bits": 4, "signed": True, "narrow": False, **change})
    with pytest.raises(ModelFileError, match=message):
        quant_to_qcdq(model)


def test_quant_to_qcdq_refuses_zero_point_and_dynamic_scale() -> None:
    model = quant_graph(bits=4, signed=True, narrow=False)
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.float32(1.0), "zero"))
    with pytest.raises(ModelFileError, match="zero point"):
        quant_to_qcdq(model)
    model = quant_graph(bits=4, signed=True, narrow=False)
    del model.graph.initializer[0]  # scale now comes from nowhere constant
    with pytest.raises(ModelFileError, match="scale"):
        quant_to_qcdq(model)
