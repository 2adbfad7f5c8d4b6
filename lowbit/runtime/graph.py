"""Load an integer graph (docs/int_graph.md) and check it before anything runs.

`load_graph` returns a `Graph`: the nodes in a topological order, the initializers as arrays,
every tensor's dtype and the qonnx `finn_datatype` annotations. Every problem is a
`ModelFileError` whose message names the file and the node (name and op type) or field.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from lowbit.artifacts import load_onnx
from lowbit.errors import ModelFileError
from lowbit.runtime.ops import DOMAINS, OPS
from lowbit.runtime.untrusted import attribute_value, check_opsets, check_text, initializer_array

STANDARD_DOMAINS = ("", "ai.onnx")
RUNTIME_KEYWORDS = frozenset({"gemm_dtype"})
"""Keyword parameters of op functions that the runtime sets; a graph may not."""

NUMERIC_TYPES = frozenset(
    {
        TensorProto.FLOAT,
        TensorProto.DOUBLE,
        TensorProto.INT8,
        TensorProto.UINT8,
        TensorProto.INT16,
        TensorProto.UINT16,
        TensorProto.INT32,
        TensorProto.UINT32,
        TensorProto.INT64,
        TensorProto.UINT64,
    }
)


def _ones(values: Any) -> bool:
    return all(v == 1 for v in values)


ATTRIBUTE_RULES: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "Cast": {"to": (lambda v: v in NUMERIC_TYPES, "a numeric (u)int or float32/64 type")},
    "ConvInteger": {
        "group": (lambda v: v == 1, "1"),
        "dilations": (_ones, "all 1"),
        "auto_pad": (lambda v: v == "NOTSET", "NOTSET (explicit pads)"),
    },
    "MaxPool": {
        "dilations": (_ones, "all 1"),
        "auto_pad": (lambda v: v == "NOTSET", "NOTSET (explicit pads)"),
        "ceil_mode": (lambda v: v == 0, "0"),
        "storage_order": (lambda v: v == 0, "0"),
    },
    "Quant": {"rounding_mode": (lambda v: v.upper() in ("ROUND", "HALF_EVEN"), "ROUND")},
}
"""Attribute values the runtime supports where it supports fewer than the op's definition."""

INITIALIZER_INPUTS: dict[str, tuple[int, ...]] = {
    "ConvInteger": (1, 2, 3),
    "MultiThreshold": (1,),
    "Quant": (1, 2, 3),
    "ReduceSum": (1,),
    "Reshape": (1,),
}
"""Inputs that must be initializers (weights, thresholds, quantizer parameters, axes, shapes)."""

MAX_QUANT_BITS = 24
"""Widest Quant the runtime accepts: its float32 output holds every code exactly up to 2^24."""


@dataclass(frozen=True)
class Graph:
    """A checked integer graph, ready to plan."""

    label: str  # the file path, or a description of an in-memory model, for messages
    nodes: list[onnx.NodeProto]  # topologically sorted
    input_name: str
    input_shape: list[int | None]  # None where the dimension is symbolic or unknown
    output_names: list[str]
    initializers: dict[str, np.ndarray]
    dtypes: dict[str, np.dtype]  # every tensor
    attributes: dict[str, dict[str, Any]]  # node output name -> attribute values
    finn_datatypes: dict[str, str]  # tensor name -> qonnx DataType name, e.g. "UINT2"

    def where(self, node: onnx.NodeProto) -> str:
        """'<file>: node '<name>' (<op>)' for messages."""
        return f"{self.label}: node '{node.name or node.output[0]}' ({node.op_type})"


def finn_datatype_range(name: str) -> tuple[int, int] | None:
    """The integer range [low, high] of a qonnx DataType name, None if not an integer type."""
    fixed = {"BIPOLAR": (-1, 1), "BINARY": (0, 1), "TERNARY": (-1, 1)}
    if name in fixed:
        return fixed[name]
    match = re.fullmatch(r"(U?)INT(\d+)", name)
    if match is None or int(match[2]) == 0:
        return None
    bits = int(match[2])
    if match[1]:
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def load_graph(model: str | os.PathLike | onnx.ModelProto) -> Graph:
    """Load a model file (or take a ModelProto), check it, and return it sorted and typed."""
    if isinstance(model, onnx.ModelProto):
        label = f"<model '{model.graph.name}'>"
    else:
        label = os.fspath(model)
        model = load_onnx(label)
    graph = model.graph
    check_text(model, label)
    initializers = {t.name: initializer_array(t, label) for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1:
        names = [v.name for v in inputs]
        raise ModelFileError(f"{label}: graph must have exactly one input, found {names}")
    attributes = {}
    for index, node in enumerate(graph.node):
        if len(node.output) != 1 or not node.output[0]:
            name = node.name or f"#{index}"
            raise ModelFileError(f"{label}: node '{name}' ({node.op_type}) needs one output")
        attributes[node.output[0]] = _check_node(node, label, initializers)
    nodes = _topological_order(list(graph.node), inputs[0].name, initializers, label)
    produced = {n.output[0] for n in nodes} | {inputs[0].name} | set(initializers)
    for output in graph.output:
        if output.name not in produced:
            raise ModelFileError(f"{label}: graph output '{output.name}' is never computed")
    checked = copy.deepcopy(model)
    del checked.graph.node[:]
    checked.graph.node.extend(nodes)
    try:
        onnx.checker.check_model(checked, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        message = str(error).strip().splitlines()[0]
        raise ModelFileError(f"{label}: ONNX checker: {message}") from error
    check_opsets(model, label)  # the checker does not check custom domains' versions
    input_type = inputs[0].type.tensor_type
    if input_type.elem_type not in NUMERIC_TYPES or not input_type.HasField("shape"):
        raise ModelFileError(f"{label}: input '{inputs[0].name}' needs a numeric type and shape")
    input_dims = input_type.shape.dim
    return Graph(
        label=label,
        nodes=nodes,
        input_name=inputs[0].name,
        input_shape=[d.dim_value if d.HasField("dim_value") else None for d in input_dims],
        output_names=[v.name for v in graph.output],
        initializers=initializers,
        dtypes=_dtypes(nodes, inputs[0], initializers),
        attributes=attributes,
        finn_datatypes={
            a.tensor_name: e.value
            for a in graph.quantization_annotation
            for e in a.quant_parameter_tensor_names
            if e.key == "finn_datatype"
        },
    )


def _check_node(
    node: onnx.NodeProto, label: str, initializers: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Check op, domain, arity, attributes and constant inputs; return the attributes."""
    where = f"{label}: node '{node.name or node.output[0]}' ({node.op_type})"
    if node.op_type not in OPS:
        raise ModelFileError(
            f"{where}: op '{node.op_type}' (domain '{node.domain}') is not in the integer-graph"
            " whitelist (docs/int_graph.md)"
        )
    domain = DOMAINS.get(node.op_type)
    if (node.domain not in STANDARD_DOMAINS) if domain is None else (node.domain != domain):
        raise ModelFileError(
            f"{where}: domain '{node.domain}', expected '{domain or ''}' (docs/int_graph.md)"
        )
    parameters = inspect.signature(OPS[node.op_type]).parameters.values()
    positional = [p for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD]
    variadic = any(p.kind == p.VAR_POSITIONAL for p in parameters)
    required = sum(p.default is p.empty for p in positional)
    if len(node.input) < max(required, 1) or (not variadic and len(node.input) > len(positional)):
        raise ModelFileError(f"{where}: has {len(node.input)} inputs, the op takes {required}+")
    if any(not name for name in node.input[:required]):
        raise ModelFileError(f"{where}: a required input is empty")
    for index in INITIALIZER_INPUTS.get(node.op_type, ()):
        if index < len(node.input) and node.input[index] and node.input[index] not in initializers:
            raise ModelFileError(
                f"{where}: input {index} '{node.input[index]}' must be an initializer"
                " (missing initializer)"
            )
    keywords = {p.name: p for p in parameters if p.kind == p.KEYWORD_ONLY}
    values = {}
    for attribute in node.attribute:
        value = attribute_value(attribute, where)
        if attribute.name not in keywords or attribute.name in RUNTIME_KEYWORDS:
            raise ModelFileError(f"{where}: unsupported attribute '{attribute.name}'")
        rule = ATTRIBUTE_RULES.get(node.op_type, {}).get(attribute.name)
        try:
            supported = rule is None or rule[0](value)
        except (TypeError, AttributeError, ValueError):  # a value of the wrong type
            supported = False
        if not supported:
            raise ModelFileError(
                f"{where}: attribute {attribute.name}={value!r} is not supported, use {rule[1]}"
            )
        values[attribute.name] = value
    for name, parameter in keywords.items():
        if parameter.default is parameter.empty and name not in values:
            raise ModelFileError(f"{where}: missing attribute '{name}'")
    _check_shapes(node, where, values, initializers)
    return values


def _check_shapes(
    node: onnx.NodeProto, where: str, values: dict[str, Any], initializers: dict[str, np.ndarray]
) -> None:
    """Shape rules the ops rely on: 2-D convolutions, [C, T] thresholds, scalar bit widths."""
    if node.op_type == "ConvInteger":
        weights = initializers[node.input[1]]
        if weights.ndim != 4:
            raise ModelFileError(f"{where}: weight '{node.input[1]}' must be 4-D (2-D conv)")
        if list(values.get("kernel_shape", weights.shape[2:])) != list(weights.shape[2:]):
            raise ModelFileError(f"{where}: kernel_shape does not match the weight shape")
        if len(values.get("pads", [0] * 4)) != 4 or len(values.get("strides", [1] * 2)) != 2:
            raise ModelFileError(f"{where}: pads must have 4 and strides 2 entries")
        if len(node.input) > 2 and node.input[2] and initializers[node.input[2]].size != 1:
            raise ModelFileError(f"{where}: x_zero_point must be a scalar")
    if node.op_type == "MultiThreshold" and initializers[node.input[1]].ndim != 2:
        raise ModelFileError(f"{where}: thresholds '{node.input[1]}' must be 2-D [C, T]")
    if node.op_type == "Quant":
        bits, scale = initializers[node.input[3]], initializers[node.input[1]]
        if bits.size != 1:
            raise ModelFileError(f"{where}: bitwidth '{node.input[3]}' must be a scalar")
        if not (bits == np.round(bits) and 1 <= bits <= MAX_QUANT_BITS):
            raise ModelFileError(
                f"{where}: bitwidth {float(bits.reshape(-1)[0])} is not supported: use an"
                f" integer from 1 to {MAX_QUANT_BITS} (float32 holds such codes exactly)"
            )
        zero_point = initializers[node.input[2]]
        if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise ModelFileError(f"{where}: scale '{node.input[1]}' must be finite and positive")
        if not np.all(np.isfinite(zero_point)):
            raise ModelFileError(f"{where}: zero point '{node.input[2]}' must be finite")
    if node.op_type == "MaxPool":
        rank = len(values["kernel_shape"])
        if len(values.get("pads", [0] * 2 * rank)) != 2 * rank:
            raise ModelFileError(f"{where}: pads must have {2 * rank} entries")
        if len(values.get("strides", [1] * rank)) != rank:
            raise ModelFileError(f"{where}: strides must have {rank} entries")


def _topological_order(
    nodes: list[onnx.NodeProto], input_name: str, initializers: dict, label: str
) -> list[onnx.NodeProto]:
    """Kahn's algorithm, keeping file order among ready nodes; cycles and dangling inputs fail."""
    producer = {}
    for node in nodes:
        name = node.output[0]
        if name in producer or name in initializers or name == input_name:
            raise ModelFileError(f"{label}: tensor '{name}' is defined more than once")
        producer[name] = node
    for node in nodes:
        for name in node.input:
            if name and name not in producer and name not in initializers and name != input_name:
                raise ModelFileError(
                    f"{label}: node '{node.name or node.output[0]}' ({node.op_type}) input "
                    f"'{name}' is not the graph input, an initializer or a node output"
                    " (missing initializer?)"
                )
    done = {input_name, *initializers}
    ordered: list[onnx.NodeProto] = []
    pending = list(nodes)
    while pending:
        ready = [n for n in pending if all(not name or name in done for name in n.input)]
        if not ready:
            names = ", ".join(f"'{n.name or n.output[0]}' ({n.op_type})" for n in pending[:4])
            raise ModelFileError(f"{label}: graph has a cycle: nodes {names} cannot be ordered")
        for node in ready:
            done.add(node.output[0])
        ordered.extend(ready)
        pending = [n for n in pending if n.output[0] not in done]
    return ordered


def _dtypes(
    nodes: list[onnx.NodeProto],
    graph_input: onnx.ValueInfoProto,
    initializers: dict[str, np.ndarray],
) -> dict[str, np.dtype]:
    """Every tensor's dtype: Cast target, int32 accumulator, qonnx's output types, else input 0's.

    These are the dtypes the op functions return; value_info is not consulted.
    """
    to_numpy = onnx.helper.tensor_dtype_to_np_dtype
    dtypes = {name: array.dtype for name, array in initializers.items()}
    dtypes[graph_input.name] = np.dtype(to_numpy(graph_input.type.tensor_type.elem_type))
    for node in nodes:
        if node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            dtype = np.dtype(to_numpy(to))
        elif node.op_type == "ConvInteger":
            dtype = np.dtype(np.int32)
        elif node.op_type == "Quant":
            dtype = np.dtype(np.float32)
        elif node.op_type == "MultiThreshold":  # qonnx: x's float type, float64 for integers
            x_dtype = dtypes[node.input[0]]
            dtype = x_dtype if x_dtype.kind == "f" else np.dtype(np.float64)
        else:
            dtype = dtypes[node.input[0]]
        dtypes[node.output[0]] = dtype
    return dtypes
