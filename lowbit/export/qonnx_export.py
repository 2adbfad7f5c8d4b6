"""QONNX export: Brevitas' exporter, qonnx cleanup, then lowbit's naming and a dynamic batch.

The graph is built with a dynamic batch `N` (the QCDQ graph is derived from it and keeps it);
the file model.qonnx.onnx gets a fixed batch and every tensor's shape (`runnable_qonnx`), the form
qonnx's `execute_onnx` and FINN take: qonnx sizes every tensor of its execution context from the
declared shapes before it runs a node, so it runs no graph with a symbolic dimension.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from lowbit.artifacts import load_onnx
from lowbit.export.names import scope_to_name
from lowbit.models.build import LowbitModel
from lowbit.models.heads import CosineHead

log = logging.getLogger(__name__)


class FrozenHead(nn.Module):
    """The trained head with its quantized rows as constants (export traces no weight math)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.cosine = isinstance(head, CosineHead)
        with torch.no_grad():
            rows = head.class_weights().detach().clone()
            if self.cosine:
                rows = F.normalize(rows, dim=1)
        self.register_buffer("rows_t", rows.t().contiguous())
        self.register_buffer(
            "scale", head.scale.detach().clone() if self.cosine else torch.tensor(1.0)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.cosine:
            return self.scale * F.normalize(features, dim=1) @ self.rows_t
        return features @ self.rows_t


def export_ready(model: LowbitModel) -> LowbitModel:
    """Returns an eval-mode copy of `model` with a frozen head: what every exported graph runs."""
    frozen = copy.deepcopy(model).eval()
    frozen.head = FrozenHead(model.head)
    return frozen


def rename_tensor(model: onnx.ModelProto, old: str, new: str) -> None:
    """Renames a tensor everywhere it appears (node inputs/outputs, graph outputs, value_info)."""
    graph = model.graph
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for info in list(graph.output) + list(graph.value_info):
        if info.name == old:
            info.name = new


def set_dynamic_batch(model: onnx.ModelProto, dim_name: str = "N") -> None:
    """Makes dim 0 of the graph inputs/outputs symbolic and drops stale intermediate shapes."""
    for info in list(model.graph.input) + list(model.graph.output):
        dim = info.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = dim_name
    del model.graph.value_info[:]


def set_static_batch(model: onnx.ModelProto, batch: int) -> None:
    """Sets dim 0 of the graph inputs/outputs to `batch`."""
    for info in list(model.graph.input) + list(model.graph.output):
        dim = info.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = batch


def runnable_qonnx(model: onnx.ModelProto, batch: int = 1) -> onnx.ModelProto:
    """Returns a copy of a QONNX graph with batch `batch` and the shape of every tensor in
    value_info (qonnx's InferShapes): what `qonnx.core.onnx_exec.execute_onnx` runs as loaded.
    Batch 1 is FINN's convention for a dataflow graph."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    fixed = copy.deepcopy(model)
    set_static_batch(fixed, batch)
    del fixed.graph.value_info[:]  # the symbolic-batch shapes: InferShapes writes them anew
    return ModelWrapper(fixed).transform(InferShapes()).model


def unsigned_binary_activations(model: onnx.ModelProto) -> None:
    """Rewrites Brevitas' `BipolarQuant` on 1-bit activations as an unsigned 1-bit `Quant`.

    Brevitas exports every 1-bit quantizer as BipolarQuant ({-1, +1}), also the unsigned 1-bit
    ReLU of w1a1, whose codes are {0, 1}: clamp(round(x / s), 0, 1). Weights (constant inputs)
    really are bipolar and stay. lowbit's only 1-bit activations are unsigned ReLU outputs.
    """
    constants = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "BipolarQuant" or node.input[0] in constants:
            continue
        if scope_to_name(node.name) is None:
            continue
        zero, bits = f"{node.name}/zero_point", f"{node.name}/bit_width"
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(np.float32(0.0), zero),
                numpy_helper.from_array(np.float32(1.0), bits),
            ]
        )
        node.op_type = "Quant"
        node.input.extend([zero, bits])
        node.attribute.extend(
            [
                helper.make_attribute("signed", 0),
                helper.make_attribute("narrow", 0),
                helper.make_attribute("rounding_mode", "ROUND"),
            ]
        )


def export_qonnx_model(model: LowbitModel) -> onnx.ModelProto:
    """Returns the QONNX graph of an eval-mode quantized model, code tensors named after modules."""
    from brevitas.export import export_qonnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    ready = export_ready(model)
    size = model.config.image_size
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "raw.onnx"
        # dynamo=False: the torchscript exporter writes one self-contained file, keeps module
        # scopes in node names, and gives GlobalAveragePool/Flatten rather than ReduceMean.
        export_qonnx(ready, torch.zeros(1, 3, size, size), export_path=str(path), dynamo=False)
        raw = load_onnx(path)
    unsigned_binary_activations(raw)
    for node in raw.graph.node:
        if node.op_type in ("Quant", "BipolarQuant"):
            node.doc_string = node.name  # survives cleanup's renaming
    clean = cleanup_model(ModelWrapper(raw)).model
    for node in clean.graph.node:
        if node.op_type == "Quant":
            name = scope_to_name(node.doc_string)
            if name is not None:
                rename_tensor(clean, node.output[0], name)
    rename_tensor(clean, clean.graph.input[0].name, "input")
    clean.graph.input[0].name = "input"
    rename_tensor(clean, clean.graph.output[0].name, "logits")
    set_dynamic_batch(clean)
    return onnx.shape_inference.infer_shapes(clean)
