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
    """Collects nodes, initializers and qonnx datatype annotations; `build()` returns the model.

    `node_name` formats each node's name from its output and op: the integer graph's
    "{output}/{op}", or "{output}" where a consumer takes node names as layer names (hls4ml's
    configuration, keyed by layer name, then names the tensor it sets). `opset` is the default
    domain's version, `domains` the custom domains imported at version 1. `track_shapes` keeps
    the shape of every initializer and node output (a node's given `shape`, else its first
    input's) and writes them as value_info, for consumers that read shapes of intermediate
    tensors and constants instead of inferring them (qonnx's channels-last ops, hls4ml).
    """

    def __init__(
        self,
        name: str,
        *,
        node_name: str = "{output}/{op}",
        opset: int = OPSET,
        domains: tuple[str, ...] = (QONNX_DOMAIN,),
        track_shapes: bool = False,
    ) -> None:
        self.name = name
        self.node_name, self.opset, self.domains = node_name, opset, domains
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.annotations: dict[str, str] = {}
        self.shapes: dict[str, list[int]] | None = {} if track_shapes else None
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
        array = np.asarray(array)
        self.initializers.append(numpy_helper.from_array(array, name))
        if self.shapes is not None:
            self.shapes[name] = list(array.shape)
        return name

    def node(
        self,
        op: str,
        inputs: list[str],
        output: str,
        *,
        domain: str = "",
        doc: dict | None = None,
        shape: list[int] | None = None,
        **attrs: object,
    ) -> str:
        output = self.unique(output)
        name = self.node_name.format(output=output, op=op)
        node = helper.make_node(op, inputs, [output], name=name, domain=domain, **attrs)
        if doc:
            node.doc_string = json.dumps(doc)
        self.nodes.append(node)
        if self.shapes is not None:
            self.shapes[output] = list(shape) if shape is not None else self.shapes[inputs[0]]
        return output

    def declare_shape(self, tensor: str, shape: list[int]) -> None:
        """Records the shape of a tensor no node makes (a graph input), for shape tracking."""
        assert self.shapes is not None, "declare_shape needs track_shapes=True"
        self.shapes[tensor] = list(shape)

    def annotate(self, tensor: str, datatype: str) -> None:
        self.annotations[tensor] = datatype

    def build(
        self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
    ) -> onnx.ModelProto:
        boundary = {info.name for info in (*inputs, *outputs)}
        shapes = [] if self.shapes is None else [
            value_info(name, FLOAT, shape)  # the tracked graphs hold float32 tensors only
            for name, shape in self.shapes.items()
            if name not in boundary
        ]  # fmt: skip
        graph = helper.make_graph(
            self.nodes, self.name, inputs, outputs, self.initializers, value_info=shapes
        )
        for tensor, datatype in self.annotations.items():
            annotation = onnx.TensorAnnotation()
            annotation.tensor_name = tensor
            entry = annotation.quant_parameter_tensor_names.add()
            entry.key, entry.value = "finn_datatype", datatype
            graph.quantization_annotation.append(annotation)
        opsets = [helper.make_opsetid("", self.opset)]
        opsets += [helper.make_opsetid(domain, 1) for domain in self.domains]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="lowbit")
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
