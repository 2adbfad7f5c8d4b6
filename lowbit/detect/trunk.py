"""A classifier's integer trunk, cut out of model.int.onnx and run on whole images.

The conv trunk (ConvInteger 3x3 pad 1 -> MultiThreshold -> MaxPool 2x2, repeated) has no node
tied to the input size, so the graph up to any trunk tensor runs on larger images: each output
position sees the same integer operations as in the classifier, on its own neighbourhood.
`cut_trunk` keeps only the nodes the chosen tensors need, declares them as outputs and sets the
input's height and width; the runtime then checks and plans the cut graph like any other, and
`Runtime(cut).run(x)` returns the codes (fused requantization included: the cut tensors are
graph outputs, which no fusion swallows).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from lowbit.errors import ModelFileError
from lowbit.runtime.graph import load_graph
from lowbit.runtime.plan import input_range


def cut_trunk(
    model: onnx.ModelProto, outputs: Sequence[str], height: int, width: int
) -> onnx.ModelProto:
    """Return a copy of `model` that computes only `outputs`, for height x width inputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    produced = {node.output[0] for node in graph.node}
    missing = [name for name in outputs if name not in produced]
    if missing:
        raise ModelFileError(f"model has no tensor(s) {missing} to cut the trunk at")
    needed, nodes = set(outputs), []
    for node in reversed(graph.node):
        if node.output[0] in needed:
            nodes.append(node)
            needed.update(name for name in node.input if name)
    nodes.reverse()
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = height, width
    inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    elem_types = {info.name: info.type.tensor_type.elem_type for info in inferred}
    declared = [
        onnx.helper.make_tensor_value_info(name, elem_types[name], ["N", None, None, None])
        for name in outputs
    ]
    initializers = [t for t in graph.initializer if t.name in needed]
    cut = onnx.helper.make_graph(
        nodes, f"{graph.name}_trunk", [graph.input[0]], declared, initializers
    )
    kept = needed | set(outputs)
    cut.quantization_annotation.extend(
        a for a in graph.quantization_annotation if a.tensor_name in kept
    )
    return onnx.helper.make_model(
        cut, opset_imports=model.opset_import, ir_version=model.ir_version
    )


def trunk_code_range(trunk: onnx.ModelProto, name: str) -> tuple[int, int]:
    """Return [low, high] of the integer codes `name` of a (cut) graph: dtype and finn_datatype."""
    low, high, _ = input_range(load_graph(trunk), name)
    return low, high
