"""A small ONNX graph builder for the integer graph: nodes, initializers, code-range bookkeeping."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QONNX_DOMAIN = "qonnx.custom_op.general"
OPSET = 17


@dataclass(frozen=True)
class Codes:
    """An integer code tensor: `x = scale · q`, q in [lo, hi] (per tensor)."""

    name: str
    scale: float  # float32 value of the quantizer's scale
    lo: int
    hi: int
    bits: int
    signed: bool
    channels: int

    @property
    def datatype(self) -> str:
        return f"{'INT' if self.signed else 'UINT'}{self.bits}"


class GraphBuilder:
    """Collects nodes, initializers and qonnx datatype annotations; `build()` returns the model."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.annotations: dict[str, str] = {}
        self._names: set[str] = set()

    def unique(self, name: str) -> str:
        candidate, index = name, 1
        while candidate in self._names:
            index += 1
            candidate = f"{name}_{index}"
        self._names.add(candidate)
        return candidate

    def const(self, name: str, array: np.ndarray) -> str:
        name = self.unique(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(
        self,
        op: str,
        inputs: list[str],
        output: str,
        *,
        domain: str = "",
        doc: dict | None = None,
        **attrs: object,
    ) -> str:
        output = self.unique(output)
        node = helper.make_node(op, inputs, [output], name=f"{output}/{op}", domain=domain, **attrs)
        if doc:
            node.doc_string = json.dumps(doc)
        self.nodes.append(node)
        return output

    def annotate(self, tensor: str, datatype: str) -> None:
        self.annotations[tensor] = datatype

    def build(
        self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, inputs, outputs, self.initializers)
        for tensor, datatype in self.annotations.items():
            annotation = onnx.TensorAnnotation()
            annotation.tensor_name = tensor
            entry = annotation.quant_parameter_tensor_names.add()
            entry.key, entry.value = "finn_datatype", datatype
            graph.quantization_annotation.append(annotation)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(QONNX_DOMAIN, 1)],
            producer_name="lowbit",
        )
        model.ir_version = 8
        return model


def value_info(name: str, elem_type: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


FLOAT, DOUBLE, INT8, UINT8, INT32, INT64 = (
    TensorProto.FLOAT,
    TensorProto.DOUBLE,
    TensorProto.INT8,
    TensorProto.UINT8,
    TensorProto.INT32,
    TensorProto.INT64,
)
