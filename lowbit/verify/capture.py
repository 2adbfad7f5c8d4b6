"""Codes of every quantized tensor, from the fake-quant torch model and from the witness graphs."""

from __future__ import annotations

import copy
from collections import defaultdict

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from lowbit.export.api import fix_batch
from lowbit.export.names import tensor_name
from lowbit.export.qonnx_export import set_dynamic_batch
from lowbit.models.build import LowbitModel
from lowbit.quant.layers import quant_scale


def torch_codes(
    model: LowbitModel,
    x: np.ndarray,
    part: torch.nn.Module | None = None,
    *,
    features: bool = False,
) -> tuple:
    """Returns (codes by tensor name, pre-rounding values by name, float32 logits), and with
    `features` the backbone's output of the same pass as model_outputs gives it (int64 codes
    of a quantized backbone) as a fourth element.

    The pre-rounding value is what the quantizer rounds: (ReLU'd) input / scale, in float32.
    `part` (e.g. `model.backbone`, for whole images the head cannot take) runs instead of the
    model; its output is returned in place of the logits. Tensor names stay the model's.
    """
    from lowbit.train.evaluation import features_as_codes

    model.eval()
    codes: dict[str, np.ndarray] = {}
    pre: dict[str, np.ndarray] = {}
    calls: dict[str, int] = defaultdict(int)
    hooks = []
    backbone_output = []
    if features:
        hooks.append(
            model.backbone.register_forward_hook(lambda m, i, o: backbone_output.append(o))
        )
    for path, module in model.named_modules():
        scale = quant_scale(module)
        if scale is None:
            continue

        def hook(mod, inputs, output, path=path, scale=scale):
            name = tensor_name(path, calls[path])
            calls[path] += 1
            value = inputs[0].detach()
            if mod.__class__.__name__ == "QuantReLU":
                value = torch.relu(value)
            codes[name] = torch.round(output.detach() / scale).numpy().astype(np.int64)
            pre[name] = (value / scale).numpy()

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = (part or model)(torch.from_numpy(x)).numpy()
    finally:
        for handle in hooks:
            handle.remove()
    if features:
        return codes, pre, logits, features_as_codes(model, backbone_output[-1])
    return codes, pre, logits


def graph_scales(graph: onnx.ModelProto, names: list[str]) -> dict[str, float]:
    """Returns the scale of each named code tensor in a QONNX or QCDQ graph."""
    inits = {init.name: init for init in graph.graph.initializer}
    scales = {}
    for node in graph.graph.node:
        out = node.output[0]
        if out not in names:
            continue
        if node.op_type == "Quant":
            scales[out] = float(numpy_helper.to_array(inits[node.input[1]]).reshape(-1)[0])
        elif node.op_type == "DequantizeLinear":
            scales[out] = float(numpy_helper.to_array(inits[node.input[1]]).reshape(-1)[0])
    return scales


def _to_codes(values: np.ndarray, scale: float) -> np.ndarray:
    return np.round(values.astype(np.float64) / scale).astype(np.int64)


class QcdqWitness:
    """onnxruntime on the QCDQ graph (no graph rewrites), every code tensor exposed; one session."""

    def __init__(self, graph: onnx.ModelProto, names: list[str]) -> None:
        import onnxruntime as ort

        outputs = {node.output[0] for node in graph.graph.node}
        self.names = [name for name in names if name in outputs]
        self.scales = graph_scales(graph, self.names)
        probe = copy.deepcopy(graph)
        # an export with a fixed --batch computes the same values per sample: verify any batch
        set_dynamic_batch(probe)
        for name in self.names:
            probe.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
        options = ort.SessionOptions()
        # ORT_DISABLE_ALL: run the graph as written; fusions (QDQ -> QLinearConv) change math
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )

    def run(self, x: np.ndarray) -> tuple[dict, np.ndarray]:
        outputs = self.session.run(None, {"input": x})
        result = dict(zip([o.name for o in self.session.get_outputs()], outputs))
        codes = {name: _to_codes(result[name], self.scales[name]) for name in self.names}
        return codes, result["logits"]


def ort_qcdq_codes(
    graph: onnx.ModelProto, x: np.ndarray, names: list[str]
) -> tuple[dict, np.ndarray]:
    """Runs onnxruntime once on the QCDQ graph, exposing every code tensor."""
    return QcdqWitness(graph, names).run(x)


def execute_qonnx(graph: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Runs qonnx's `execute_onnx` (which needs a fixed batch: len(x)); returns every tensor."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    fixed = fix_batch(copy.deepcopy(graph), len(x))
    del fixed.graph.value_info[:]
    wrapper = ModelWrapper(fixed).transform(InferShapes())
    return execute_onnx(wrapper, {"input": x}, return_full_exec_context=True)


def qonnx_codes(graph: onnx.ModelProto, x: np.ndarray, names: list[str]) -> tuple[dict, np.ndarray]:
    """Runs qonnx's `execute_onnx` on the QONNX graph."""
    context = execute_qonnx(graph, x)
    present = [name for name in names if name in context]
    scales = graph_scales(graph, present)
    codes = {name: _to_codes(context[name], scales[name]) for name in present}
    return codes, context["logits"]


def runtime_codes(tensors: dict[str, np.ndarray], names: list[str]) -> tuple[dict, np.ndarray]:
    """Returns (codes of `names`, logits) from the integer runtime's kept intermediates."""
    codes = {name: tensors[name].astype(np.int64) for name in names if name in tensors}
    return codes, tensors["logits"]
