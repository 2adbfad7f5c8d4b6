"""`Runtime`: runs model.int.onnx (docs/int_graph.md) with numpy, exactly.

Loading checks the graph (graph.py), plans each ConvInteger/MatMul's exact GEMM dtype from its
accumulator bound (gemm.py), and lays the nodes out as steps that call the op functions of
`OPS` (ops.py). A run checks the input, splits it into batch chunks and runs the steps on each.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from lowbit.errors import InputError, LowbitError, ModelFileError
from lowbit.runtime.gemm import (
    code_abs_max,
    exact_gemm_dtype,
    shifted_conv_weights,
    weight_abs_sum_max,
)
from lowbit.runtime.graph import Graph, finn_datatype_range, load_graph
from lowbit.runtime.ops import OPS

logger = logging.getLogger(__name__)

GEMM_OPS = ("ConvInteger", "MatMul")


@dataclass(frozen=True)
class _Step:
    node: onnx.NodeProto
    run: Callable[..., np.ndarray]
    inputs: tuple[str, ...]  # "" for an absent optional input
    release: tuple[str, ...]  # tensors no later step reads: dropped unless intermediates are kept


class Runtime:
    """A loaded, checked and planned integer graph; `run` maps float32 images to its outputs."""

    def __init__(self, model: str | os.PathLike | onnx.ModelProto) -> None:
        self._graph: Graph = load_graph(model)
        self.input_name: str = self._graph.input_name
        self.output_names: list[str] = list(self._graph.output_names)
        self._plan = [_plan_gemm(self._graph, n) for n in self._graph.nodes if _is_gemm(n)]
        plans = {entry["output"]: entry for entry in self._plan}
        last_use = {name: i for i, n in enumerate(self._graph.nodes) for name in n.input}
        kept = {self.input_name, *self.output_names, *self._graph.initializers}
        self._steps = [
            _Step(
                node=node,
                run=_bind(self._graph, node, plans.get(node.output[0])),
                inputs=tuple(node.input),
                release=tuple(
                    name
                    for name in set(node.input)
                    if name and last_use[name] == i and name not in kept
                ),
            )
            for i, node in enumerate(self._graph.nodes)
        ]
        self._batch_tensors = {self.input_name}
        for node in self._graph.nodes:
            if any(name in self._batch_tensors for name in node.input):
                self._batch_tensors.add(node.output[0])
        for entry in self._plan:
            logger.debug("%s: GEMM plan %s", self._graph.label, entry)

    def layer_plan(self) -> list[dict[str, Any]]:
        """Per ConvInteger/MatMul node, in execution order: its accumulator bound and GEMM dtype.

        Keys: name, op_type, input, input_range ([low, high] of the input codes, None for a
        float input), input_range_source ("finn_datatype UINT2", "dtype int8", "float"),
        weight_abs_sum_max (max over outputs of Σ|w|; None if the weights are not an
        initializer), accumulator_bound (input_range's max |code| · weight_abs_sum_max; None:
        unbounded), accumulator_bits (signed bits holding ±bound), gemm_dtype ("float32",
        "float64", "int64"; a float input's own dtype), declared_accumulator_bound (from the
        node's doc_string JSON, None if absent).
        """
        return [{k: v for k, v in entry.items() if k != "output"} for entry in self._plan]

    def run(
        self, x: np.ndarray, *, keep_intermediates: bool = False, batch_size: int = 256
    ) -> dict[str, np.ndarray]:
        """Graph outputs by name; with keep_intermediates, every tensor of the graph.

        Tensors are NCHW with their ONNX dtype (integer codes as numpy integers, the tail
        float64). The input is float32 (float64 only where every value is a float32) with the
        declared shape, any batch size; it is processed in chunks of `batch_size` samples.
        """
        x = self._check_input(x)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        chunked = len(x) > batch_size
        chunks = [
            self._run_chunk(x[start : start + batch_size], keep_intermediates, chunked)
            for start in range(0, len(x), batch_size)
        ]
        names = list(chunks[0]) if keep_intermediates else self.output_names
        results = {}
        for name in names:
            if name in self._batch_tensors and chunked:
                results[name] = np.concatenate([chunk[name] for chunk in chunks])
            else:  # a copy, so that callers cannot alter initializers
                results[name] = np.array(chunks[0][name], order="C", copy=True)
        return results

    def _run_chunk(self, x: np.ndarray, keep: bool, chunked: bool) -> dict[str, np.ndarray]:
        tensors = {**self._graph.initializers, self.input_name: x}
        for step in self._steps:
            arguments = [tensors[name] if name else None for name in step.inputs]
            try:
                output = step.run(*arguments)
            except LowbitError:
                raise
            except (ValueError, TypeError, IndexError, ArithmeticError) as error:
                raise ModelFileError(f"{self._graph.where(step.node)}: {error}") from error
            name = step.node.output[0]
            if chunked and name in self._batch_tensors and output.shape[:1] != x.shape[:1]:
                raise ModelFileError(
                    f"{self._graph.where(step.node)}: output '{name}' has shape "
                    f"{list(output.shape)} for a chunk of {len(x)} samples; the graph mixes "
                    "samples, run it with batch_size >= the number of samples"
                )
            tensors[name] = output
            if not keep:
                for released in step.release:
                    del tensors[released]
        return tensors

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        """x as the declared input dtype, or an InputError naming the first problem."""
        name, shape = self.input_name, self._graph.input_shape
        expected = self._graph.dtypes[name]
        if not isinstance(x, np.ndarray):
            raise InputError(f"input '{name}' must be a numpy array, got {type(x).__name__}")
        accepted = (expected, np.dtype(np.float64)) if expected == np.float32 else (expected,)
        if x.dtype not in accepted:
            raise InputError(f"input '{name}' must be {expected}, got {x.dtype}")
        declared = ["N", *("?" if d is None else d for d in shape[1:])]
        if x.ndim != len(shape) or any(
            d is not None and x.shape[i] != d for i, d in enumerate(shape) if i > 0
        ):
            raise InputError(f"input '{name}' must have shape {declared}, got {list(x.shape)}")
        if x.shape[0] == 0:
            raise InputError(f"input '{name}' has an empty batch")
        if x.dtype.kind == "f":
            finite = np.isfinite(x)
            if not finite.all():
                index = tuple(int(i) for i in np.argwhere(~finite)[0])
                raise InputError(f"input '{name}' has {float(x[index])} at index {list(index)}")
        if x.dtype != expected:
            converted = x.astype(expected)
            inexact = converted != x
            if inexact.any():
                index = tuple(int(i) for i in np.argwhere(inexact)[0])
                raise InputError(
                    f"input '{name}' is float64 and its value {float(x[index])!r} at index "
                    f"{list(index)} is not a float32; pass float32"
                )
            x = converted
        return x


def run_model(model: str | os.PathLike | onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Load `model` and return its outputs for input `x` (see `Runtime.run`)."""
    return Runtime(model).run(x)


def _is_gemm(node: onnx.NodeProto) -> bool:
    return node.op_type in GEMM_OPS


def _input_range(graph: Graph, name: str) -> tuple[int, int, str]:
    """[low, high] of an integer tensor: its finn_datatype if it narrows the dtype, else dtype."""
    info = np.iinfo(graph.dtypes[name])
    low, high = int(info.min), int(info.max)
    datatype = graph.finn_datatypes.get(name, "")
    annotated = finn_datatype_range(datatype)
    if annotated is not None and low <= annotated[0] and annotated[1] <= high:
        return annotated[0], annotated[1], f"finn_datatype {datatype}"
    return low, high, f"dtype {info.dtype}"


def _plan_gemm(graph: Graph, node: onnx.NodeProto) -> dict[str, Any]:
    """The exact GEMM dtype of one ConvInteger/MatMul node and the bound that proves it."""
    x_name, w_name = node.input[0], node.input[1]
    entry: dict[str, Any] = {
        "name": node.name or node.output[0],
        "op_type": node.op_type,
        "output": node.output[0],
        "input": x_name,
        "input_range": None,
        "input_range_source": "float",
        "weight_abs_sum_max": None,
        "accumulator_bound": None,
        "accumulator_bits": None,
        "gemm_dtype": graph.dtypes[x_name].name,
        "declared_accumulator_bound": _declared_bound(node),
    }
    if graph.dtypes[x_name].kind == "f":
        return entry
    low, high, source = _input_range(graph, x_name)
    entry.update(input_range=[low, high], input_range_source=source)
    weights = graph.initializers.get(w_name)
    if node.op_type == "ConvInteger":
        optional = [*node.input[2:4], "", ""][:2]
        zero_points = [graph.initializers[n] if n else None for n in optional]
        x_zero = 0 if zero_points[0] is None else int(zero_points[0].reshape(-1)[0])
        x_abs_max = code_abs_max(low, high, x_zero)
        weight_sum = weight_abs_sum_max(shifted_conv_weights(weights, zero_points[1]), (1, 2, 3))
    else:
        x_abs_max = code_abs_max(low, high)
        weight_sum = None
        if weights is not None:
            columns = weights if weights.ndim > 1 else weights[:, None]
            weight_sum = weight_abs_sum_max(columns, (-2,))
    bound = None if weight_sum is None else x_abs_max * weight_sum
    entry.update(
        weight_abs_sum_max=weight_sum,
        accumulator_bound=bound,
        accumulator_bits=None if bound is None else bound.bit_length() + 1,
        gemm_dtype=exact_gemm_dtype(bound),
    )
    return entry


def _declared_bound(node: onnx.NodeProto) -> int | None:
    try:
        return int(json.loads(node.doc_string)["accumulator_bound"])
    except (ValueError, KeyError, TypeError):
        return None


def _bind(graph: Graph, node: onnx.NodeProto, plan: dict | None) -> Callable[..., np.ndarray]:
    """The step function: the op with its attributes (and planned GEMM dtype) bound."""
    op = functools.partial(OPS[node.op_type], **graph.attributes[node.output[0]])
    if plan is None or plan["input_range"] is None:
        return op
    low, high = plan["input_range"]
    gemm_dtype = plan["gemm_dtype"]
    trusts_annotation = plan["input_range_source"].startswith("finn_datatype")
    where = graph.where(node)

    def run_gemm(x: np.ndarray, *rest: np.ndarray | None) -> np.ndarray:
        dtype: str | None = gemm_dtype
        # an annotation is a promise, not a guarantee: outside it, derive the dtype from the data
        if trusts_annotation and (x.min() < low or x.max() > high):
            logger.warning("%s: input outside [%d, %d]; GEMM dtype from the data", where, low, high)
            dtype = None
        return op(x, *rest, gemm_dtype=dtype)

    return run_gemm
