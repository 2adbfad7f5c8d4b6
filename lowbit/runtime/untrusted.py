"""Checks on the raw protobuf of a model file that may be corrupt or hostile, before any use.

lowbit.artifacts.load_onnx is lowbit's one reader of ONNX files; the functions here check what it
returns. Each turns what protobuf or numpy would raise (or silently accept) into a `ModelFileError`
naming the file and the field: strings that are not UTF-8 (protobuf hands them back as bytes),
initializers whose declared shape their data does not fill, data kept in external files
(reading them would open other paths), attributes without a readable value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from lowbit.errors import ModelFileError


def check_text(model: onnx.ModelProto, label: str) -> None:
    """Every name, op type and domain of the graph is text (ONNX strings are UTF-8)."""
    graph = model.graph
    named = [*graph.input, *graph.output, *graph.initializer]
    values = [v.name for v in named]
    for node in graph.node:
        values += [node.name, node.op_type, node.domain, *node.input, *node.output]
        values += [a.name for a in node.attribute]
    for value in values:
        if not isinstance(value, str):
            raise ModelFileError(f"{label}: the name {value!r} is not UTF-8 text")


MIN_OPSET = 13
"""Oldest default-domain opset whose semantics the ops implement (ReduceSum's axes input)."""


def check_opsets(model: onnx.ModelProto, label: str) -> None:
    """The default domain at opset >= 13, and every domain a node uses imported at version >= 1."""
    versions = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
    if versions.get("", 0) < MIN_OPSET:
        raise ModelFileError(
            f"{label}: opset_import of the default domain is {versions.get('')}, the runtime"
            f" implements opset {MIN_OPSET} and later"
        )
    for domain in sorted({("" if n.domain == "ai.onnx" else n.domain) for n in model.graph.node}):
        if versions.get(domain, 0) < 1:
            raise ModelFileError(f"{label}: domain '{domain}' has no opset_import version >= 1")


def initializer_array(tensor: onnx.TensorProto, label: str) -> np.ndarray:
    """The initializer as an array; external data or a declared shape that its data does not
    fill (an absurd size costs nothing: the data is never allocated at the declared size)."""
    where = f"{label}: initializer '{tensor.name}'"
    if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
        raise ModelFileError(f"{where} keeps its data in an external file; embed it in the model")
    try:
        return numpy_helper.to_array(tensor)
    except Exception as error:  # numpy reshape errors, unknown data types
        raise ModelFileError(
            f"{where}: declared shape {list(tensor.dims)} does not match its stored data ({error})"
        ) from None


def attribute_value(attribute: onnx.AttributeProto, where: str) -> Any:
    """The attribute's value (strings decoded); an unset or unreadable one is a ModelFileError."""
    try:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
    except ValueError as error:  # unknown attribute type, bytes that are not UTF-8
        raise ModelFileError(
            f"{where}: attribute '{attribute.name}' is unreadable ({error})"
        ) from None
    if value is None:  # type UNDEFINED
        raise ModelFileError(f"{where}: attribute '{attribute.name}' has no value")
    return value
