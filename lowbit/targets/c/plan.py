"""The C program of an integer graph as it is planned: `CPlan` and its buffers, steps and constants.

`CPlan` holds what the per-op emitters (ops.py, `C_OPS`, walked by `ops.build_plan` in the
graph's file order at batch 1) add: `tensors` (each a C buffer, an alias sharing another's buffer,
or a constant), `steps` (C code with the buffers it reads and writes, from which target.py lays
the scratch pools out by liveness), `constants`, `kernels` (each emitted once), per-layer weight
and threshold `sizes`, and the input quantizer's body. Its helpers look tensors up (initializers
become C constant arrays), pack weight codes, read weight bits from model.json, and emit
elementwise loops with numpy broadcasting of batch-1 shapes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lowbit.errors import ConfigError, ModelFileError
from lowbit.targets.c import templates as T
from lowbit.targets.c.pack import c_array, pack_codes


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    var: str  # C expression of its first element
    root: str | None  # the buffer it lives in (an alias shares it); None: constant or caller's

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Step:
    code: str
    uses: tuple[str, ...]  # buffers read
    defines: str | None = None  # buffer written


class CPlan:
    """The C program of one graph: `steps`, `tensors`, `constants`, `kernels`, `sizes`."""

    def __init__(
        self, model: onnx.ModelProto, description: dict, label: str, kernel: str = "bitserial"
    ) -> None:
        self.label, self.description, self.conv_kernel = label, description, kernel
        graph = model.graph
        self.inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.producer = {node.output[0]: node for node in graph.node}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.tensors: dict[str, Tensor] = {}
        self.steps: list[Step] = []
        self.constants: list[str] = []
        self.kernels: dict[str, str] = {}
        self.sizes: dict[str, dict[str, tuple[str, int]]] = defaultdict(dict)
        self.float_views: dict[str, str] = {}  # Cast-to-float output -> its integer source
        self.code_ranges: dict[str, tuple[int, int]] = {}  # codes of a MultiThreshold, passed on
        self.quantize_body = ""
        (self.input,) = [v for v in graph.input if v.name not in self.inits]
        dims = self.input.type.tensor_type.shape.dim
        self.input_shape = (1, *(d.dim_value for d in dims[1:]))
        self.output_name = graph.output[0].name
        self.head_input: Tensor | None = None  # the MatMul's integer features f
        self.class_dots: Tensor | None = None
        self.feature_sq: Tensor | None = None
        self.logits: Tensor | None = None
        self.input_scale, self.input_bits, self.code_dtype = 1.0, 8, np.dtype(np.int8)

    def finish(self) -> None:
        """Checks that the walk found the head: a MatMul and float64 logits."""
        self.logits = self.tensors.get(self.output_name)
        if self.logits is None or self.class_dots is None or self.logits.dtype != np.float64:
            raise ModelFileError(
                f"{self.label}: the C target needs a MatMul head and float64 logits"
            )

    # --- helpers ----------------------------------------------------------------------------
    def error(self, node: onnx.NodeProto, message: str) -> ModelFileError:
        return ModelFileError(
            f"{self.label}: node '{node.name or node.output[0]}' ({node.op_type}): {message}"
        )

    def attrs(self, node: onnx.NodeProto) -> dict:
        values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}

    def get(self, name: str, node: onnx.NodeProto) -> Tensor:
        if name in self.tensors:
            return self.tensors[name]
        if name in self.inits:
            value = self.inits[name]
            var = self.const(f"lb_c{len(self.constants)}", value.dtype, value)
            self.tensors[name] = Tensor(name, value.dtype, value.shape, var, None)
            return self.tensors[name]
        raise self.error(node, f"input '{name}' is not computed by a node the C target ran")

    def const(self, var: str, dtype: np.dtype, values: np.ndarray) -> str:
        self.constants.append(c_array(var, dtype, values))
        return var

    def buffer(self, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> Tensor:
        tensor = Tensor(
            name, np.dtype(dtype), tuple(int(d) for d in shape), f"t{len(self.tensors)}", name
        )
        self.tensors[name] = tensor
        return tensor

    def emit(self, code: str, out: Tensor | None, *inputs: Tensor, tap: bool = True) -> None:
        """Adds a step; `tap`: pass `out` to the debug tap (False for kernel scratch that is
        no graph tensor)."""
        uses = [t.root for t in inputs if t.root is not None]
        defines = None
        if out is not None:
            onnx_type = helper.np_dtype_to_tensor_dtype(out.dtype)
            if tap:
                code += f'    LB_TAP("{out.name}", {onnx_type}, {out.var}, {out.size}ul);\n'
            if out.root == out.name:
                defines = out.name
            elif out.root is not None:  # an alias: keeps its buffer alive
                uses.append(out.root)
        self.steps.append(Step(code, tuple(uses), defines))

    def kernel(self, key: str, template, **fields: str) -> str:
        if key not in self.kernels:
            if "lb_weight" not in self.kernels and key.startswith(("conv", "matmul")):
                self.kernels["lb_weight"] = T.WEIGHT_READER
            self.kernels[key] = template.substitute(**fields)
        return f"lb_{key}"

    def packed(self, layer: str, codes: np.ndarray, bits: int) -> str:
        packed = np.frombuffer(pack_codes(codes, bits, f"{self.label}: {layer}"), np.uint8)
        var = self.const(f"lb_w{len(self.constants)}", np.uint8, packed)
        self.sizes[layer]["weights"] = (var, packed.size)
        return var

    def weight_bits(self, layer: str, node: onnx.NodeProto) -> int:
        if layer == "head":
            return int(self.description["head"]["head_weight_bits"])
        for record in self.description.get("layers", []):
            if record["name"] == layer and "weight_bits" in record:
                return int(record["weight_bits"])
        raise ConfigError(
            f"model.json: no layer '{layer}' with weight_bits for node "
            f"'{node.name}' of {self.label}"
        )

    def loop(
        self,
        node: onnx.NodeProto,
        dtype: np.dtype,
        shape: tuple,
        pattern: str,
        operands: list[Tensor],
    ) -> None:
        """`y[i] = pattern(operands)` with numpy broadcasting of batch-1 shapes."""
        indices = []
        for operand in operands:
            padded = (1,) * (len(shape) - len(operand.shape)) + tuple(operand.shape)
            k = next(
                (
                    k
                    for k in range(len(shape) + 1)
                    if all(d == 1 for d in padded[:k]) and padded[k:] == shape[k:]
                ),
                None,
            )
            if k is None:
                raise self.error(node, f"cannot broadcast {list(operand.shape)} to {list(shape)}")
            size = math.prod(padded)
            index = "i" if size == math.prod(shape) else ("0" if size == 1 else f"i % {size}")
            indices.append(f"{operand.var}[{index}]")
        out = self.buffer(node.output[0], dtype, shape)
        expression = pattern.format(*indices)
        self.emit(
            f"    for (i = 0; i < {out.size}; ++i) {out.var}[i] = {expression};\n", out, *operands
        )
