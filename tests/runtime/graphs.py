"""Graph builders and trusted executors for runtime tests (reusable by other test folders).

`conv4_model` builds a model.int.onnx-shaped graph (docs/int_graph.md) from random codes;
`run_qonnx` and `run_onnxruntime` are the witnesses the runtime is compared against.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QONNX_DOMAIN = "qonnx.custom_op.general"
OPSET = 17


def make_model(
    nodes: Sequence[onnx.NodeProto],
    graph_input: onnx.ValueInfoProto,
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: dict[str, np.ndarray] | None = None,
    datatypes: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """An opset-17 model with the qonnx domain imported and `finn_datatype` annotations.

    Output shapes left out are filled in by ONNX shape inference where it can.
    """
    graph = helper.make_graph(
        list(nodes),
        "lowbit_test",
        [graph_input],
        list(outputs),
        initializer=[numpy_helper.from_array(v, k) for k, v in (initializers or {}).items()],
    )
    for name, datatype in (datatypes or {}).items():
        annotation = onnx.TensorAnnotation(tensor_name=name)
        annotation.quant_parameter_tensor_names.add(key="finn_datatype", value=datatype)
        graph.quantization_annotation.append(annotation)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(QONNX_DOMAIN, 1)],
    )
    model.ir_version = 8
    # fill in output shapes the caller left out (the checker wants them) where ONNX can infer
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph.output
    except onnx.shape_inference.InferenceError:  # deliberately broken test graphs
        return model
    del model.graph.output[:]
    model.graph.output.extend(inferred)
    return model


def tensor(name: str, elem_type: int, shape: Sequence[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def single_node_model(
    node: onnx.NodeProto,
    x: np.ndarray,
    output_type: int,
    initializers: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """One node whose first input is the graph input (batch dim symbolic) and the rest constants."""
    elem_type = helper.np_dtype_to_tensor_dtype(x.dtype)
    graph_input = tensor(node.input[0], elem_type, ["N", *x.shape[1:]])
    return make_model(
        [node], graph_input, [tensor(node.output[0], output_type, None)], initializers
    )


def increasing_thresholds(
    rng: np.random.Generator, channels: int, count: int, spread: float
) -> np.ndarray:
    """[channels, count] float32 integer thresholds, non-decreasing per row, in ±spread."""
    values = rng.integers(-int(spread) - 1, int(spread) + 2, size=(channels, count))
    return np.sort(values, axis=1).astype(np.float32)


def conv4_model(
    rng: np.random.Generator,
    channels: Sequence[int] = (3, 64, 64, 64, 64),
    size: int = 32,
    classes: int = 10,
    activation_bits: int = 2,
    weight_bits: int = 2,
    input_scale: float = 1 / 32,
) -> onnx.ModelProto:
    """The integer conv4: Div → Quant(INT8) → Cast int8 → 4 × [ConvInteger 3x3 pad 1 → Cast
    float64 → MultiThreshold → Cast uint8 → MaxPool 2x2] → Flatten → Cast int64 → MatMul / Σf²
    → float64 cosine tail `logits = coef_c · d_c / max(√n, 1)`, as docs/int_graph.md lays out.

    Weight codes: 8-bit in the first layer, `weight_bits` signed narrow after (2 → ternary).
    Thresholds are spread over about one accumulator standard deviation so codes vary.
    """
    levels = 2**activation_bits - 1
    nodes = [
        helper.make_node("Div", ["input", "input_scale"], ["scaled"], name="input_div"),
        helper.make_node(
            "Quant",
            ["scaled", "one", "zero", "eight"],
            ["quantized"],
            domain=QONNX_DOMAIN,
            signed=1,
            narrow=0,
            rounding_mode="ROUND",
            name="input_quant",
        ),
        helper.make_node("Cast", ["quantized"], ["codes0"], to=TensorProto.INT8, name="cast0"),
    ]
    initializers = {
        "input_scale": np.array(input_scale, np.float32),
        "one": np.array(1.0, np.float32),
        "zero": np.array(0.0, np.float32),
        "eight": np.array(8.0, np.float32),
    }
    datatypes = {"codes0": "INT8"}
    x_square_mean = (1 / input_scale) ** 2  # unit-variance input
    for layer, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:]), start=1):
        high = 127 if layer == 1 else 2 ** (weight_bits - 1) - 1
        weights = rng.integers(-high, high + 1, size=(c_out, c_in, 3, 3)).astype(np.int8)
        spread = np.sqrt(9 * c_in * x_square_mean * np.mean(weights.astype(float) ** 2))
        x_square_mean = levels**2 / 3
        initializers[f"w{layer}"] = weights
        initializers[f"t{layer}"] = increasing_thresholds(rng, c_out, levels, spread)
        nodes += [
            helper.make_node(
                "ConvInteger",
                [f"codes{layer - 1}", f"w{layer}"],
                [f"acc{layer}"],
                pads=[1, 1, 1, 1],
                name=f"conv{layer}",
                doc_string="",
            ),
            # docs/int_graph.md: qonnx thresholds float64 holding the int32 accumulator
            helper.make_node("Cast", [f"acc{layer}"], [f"acc{layer}_f64"], to=TensorProto.DOUBLE),
            helper.make_node(
                "MultiThreshold",
                [f"acc{layer}_f64", f"t{layer}"],
                [f"mt{layer}"],
                domain=QONNX_DOMAIN,
                out_dtype=f"UINT{activation_bits}",
                data_layout="NCHW",
                name=f"threshold{layer}",
            ),
            helper.make_node("Cast", [f"mt{layer}"], [f"act{layer}"], to=TensorProto.UINT8),
            helper.make_node(
                "MaxPool",
                [f"act{layer}"],
                [f"codes{layer}"],
                kernel_shape=[2, 2],
                strides=[2, 2],
                name=f"pool{layer}",
            ),
        ]
        datatypes[f"act{layer}"] = datatypes[f"codes{layer}"] = f"UINT{activation_bits}"
    last = len(channels) - 1
    features = channels[-1] * (size // 2**last) ** 2
    class_weights = rng.integers(-127, 128, size=(features, classes)).astype(np.int64)
    initializers.update(
        class_weights=class_weights,
        feature_axis=np.array([1], np.int64),
        one_double=np.array(1.0, np.float64),
        coef=(8.0 / np.linalg.norm(class_weights, axis=0)).astype(np.float64),
    )
    nodes += [
        helper.make_node("Flatten", [f"codes{last}"], ["flat"], axis=1, name="flatten"),
        helper.make_node("Cast", ["flat"], ["f"], to=TensorProto.INT64, name="cast_f"),
        helper.make_node("MatMul", ["f", "class_weights"], ["d"], name="head_matmul"),
        helper.make_node("Mul", ["f", "f"], ["f_squared"], name="square"),
        helper.make_node(
            "ReduceSum", ["f_squared", "feature_axis"], ["n"], keepdims=1, name="sum_squares"
        ),
        helper.make_node("Cast", ["d"], ["d_double"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["n"], ["n_double"], to=TensorProto.DOUBLE),
        helper.make_node("Sqrt", ["n_double"], ["norm"]),
        helper.make_node("Max", ["norm", "one_double"], ["norm_clamped"]),
        helper.make_node("Div", ["d_double", "norm_clamped"], ["cosine"]),
        helper.make_node("Mul", ["cosine", "coef"], ["logits"], name="logits"),
    ]
    datatypes["f"] = f"UINT{activation_bits}"
    return make_model(
        nodes,
        tensor("input", TensorProto.FLOAT, ["N", channels[0], size, size]),
        [tensor("logits", TensorProto.DOUBLE, ["N", classes])],
        initializers,
        datatypes,
    )


def run_qonnx(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """qonnx `execute_onnx` with the full context: every tensor, by name.

    Two adaptations, neither of which changes a value: the batch dimension is fixed to x's
    (qonnx allocates its context from static shapes), and a MultiThreshold fed by integers has
    its output declared float64, because qonnx's `multithreshold` returns float64 for integer
    input (count.astype(int32) * out_scale) and onnxruntime rejects it as float32.
    """
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    model = copy.deepcopy(model)
    for value in [*model.graph.input, *model.graph.output]:
        if value.type.tensor_type.HasField("shape"):
            value.type.tensor_type.shape.dim[0].dim_value = x.shape[0]
    wrapper = ModelWrapper(model).transform(InferShapes())
    integer_tensors = {v.name for v in wrapper.graph.value_info if _is_integer(v)}
    integer_tensors |= {v.name for v in wrapper.graph.input if _is_integer(v)}
    integer_tensors |= {
        t.name
        for t in wrapper.graph.initializer
        if np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).kind in "iu"
    }
    for node in wrapper.graph.node:
        if node.op_type == "MultiThreshold" and node.input[0] in integer_tensors:
            for value in wrapper.graph.value_info:
                if value.name == node.output[0]:
                    value.type.tensor_type.elem_type = TensorProto.DOUBLE
    context = execute_onnx(wrapper, {wrapper.graph.input[0].name: x}, True)
    return {name: value for name, value in context.items() if name}


def _is_integer(value: onnx.ValueInfoProto) -> bool:
    dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    return np.dtype(dtype).kind in "iu"


def run_onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """onnxruntime's outputs for a model of standard ops only."""
    import onnxruntime

    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {session.get_inputs()[0].name: x})
