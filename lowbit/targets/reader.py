"""Reads an export folder (model.int.onnx + model.json) for the targets: one typed reader,
`read_export`, and on top of it the per-layer facts the accelerator targets (FINN, hls4ml) need.

`read_export` checks the folder against its manifest, parses model.int.onnx without following
external data (an export never writes any: an initializer that points elsewhere is refused, so a
graph cannot make a target read other files) and model.json; a missing or unreadable file is a
one-line ModelFileError naming it.

The integer graph (docs/int_graph.md) already holds everything exact: weight codes (rows of
negative-slope channels negated), thresholds, code ranges, accumulator bounds. A target rebuilds
its own graph from these facts instead of re-deriving anything from the float model, so what it
computes is what lowbit's runtime computes. Supported: the conv4 chain
`input quantizer -> [ConvInteger -> MultiThreshold -> MaxPool?] x n -> Flatten -> head MatMul`.
The head's float tail (cosine normalization or per-class scale) stays on the host: the targets'
outputs are the integer feature codes and the class dot products `d_c`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from lowbit.artifacts import DESCRIPTION_FILE, INT_GRAPH_FILE, load_onnx
from lowbit.core.integers import int_range
from lowbit.errors import ConfigError, ModelFileError
from lowbit.manifest import read_description
from lowbit.runtime.untrusted import check_text, initializer_array


@dataclass(frozen=True)
class IntExport:
    """An export folder as the targets read it: the integer graph and model.json, loaded."""

    export_dir: Path
    graph_path: Path  # export_dir / model.int.onnx
    description_path: Path  # export_dir / model.json
    model: onnx.ModelProto = field(repr=False)  # initializers embedded, none external
    description: dict = field(repr=False)  # model.json
    initializers: dict[str, np.ndarray] = field(repr=False)  # the graph's, by name


def _load_with_initializers(path: Path) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    if not path.is_file():
        raise ModelFileError(f"{path}: missing; run `lowbit export` first")
    model = load_onnx(path)
    check_text(model, str(path))
    arrays = {t.name: initializer_array(t, str(path)) for t in model.graph.initializer}
    return model, arrays


def read_json_object(path: Path) -> dict:
    """Returns the JSON object in the file at `path`; ModelFileError when missing or not one."""
    if not path.is_file():
        raise ModelFileError(f"{path}: missing; run `lowbit export` first")
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path}: not readable JSON ({error}); export again") from None
    if not isinstance(description, dict):
        raise ModelFileError(f"{path}: not a JSON object; export again")
    return description


def read_export(export_dir: str | Path) -> IntExport:
    """Returns the checked export at `export_dir`: model.int.onnx and model.json, loaded."""
    export_dir = Path(export_dir)
    description = read_description(export_dir)  # checks the folder against its manifest first
    graph_path = export_dir / INT_GRAPH_FILE
    model, initializers = _load_with_initializers(graph_path)
    description_path = export_dir / DESCRIPTION_FILE
    return IntExport(
        export_dir=export_dir,
        graph_path=graph_path,
        description_path=description_path,
        model=model,
        description=description,
        initializers=initializers,
    )


@dataclass(frozen=True)
class ConvLayer:
    """ConvInteger + MultiThreshold (+ optional 2x2 max-pool) of the integer graph."""

    name: str  # the code tensor's name, e.g. backbone.blocks.0.act
    weight_codes: np.ndarray  # int64 [C_out, C_in, k, k], rows already sign-corrected
    weight_bits: int
    input_range: tuple[int, int]  # code range of the layer's input
    accumulator_bound: int
    accumulator_bits: int
    thresholds: np.ndarray  # int64 [C_out, L], non-decreasing rows
    out_bias: int
    act_bits: int
    signed: bool
    pads: list[int]
    strides: list[int]
    pool: bool

    def accumulator_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns per-channel (lo, hi) of the exact integer accumulator."""
        flat = self.weight_codes.reshape(self.weight_codes.shape[0], -1)
        low, high = self.input_range
        lo = np.minimum(flat * low, flat * high).sum(axis=1)
        hi = np.maximum(flat * low, flat * high).sum(axis=1)
        return lo, hi


@dataclass(frozen=True)
class HandOff:
    """Everything a target needs: input quantizer, integer layers, head, the host-side tail."""

    input_shape: list[int]  # [3, H, W]
    input_scale: float
    input_bits: int
    layers: list[ConvLayer]
    head_codes: np.ndarray  # int64 [F, K]
    head_bits: int
    head_kind: str  # "cosine" | "linear"
    tail_factor: np.ndarray  # float64 [K]
    description: dict = field(repr=False)

    def tail(self) -> dict:
        """Returns the host-side float tail that turns the targets' outputs into logits."""
        if self.head_kind == "cosine":
            formula = "logits = tail_factor * class_dot / max(sqrt(sum(features**2, axis=1)), 1)"
        else:
            formula = "logits = tail_factor * class_dot"
        return {
            "head": self.head_kind,
            "formula": formula,
            "tail_factor": self.tail_factor.tolist(),
        }


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def read_int_graph(source: str | Path | IntExport) -> HandOff:
    """Returns the hand-off facts of an export folder (or of its `read_export`); ModelFileError
    when a file is unusable, ConfigError when the graph is not the supported conv chain."""
    export = source if isinstance(source, IntExport) else read_export(source)
    path, model, description = export.graph_path, export.model, export.description
    inits = export.initializers
    records = {layer["name"]: layer for layer in description["layers"]}
    producers = {node.output[0]: node for node in model.graph.node}
    layers: list[ConvLayer] = []
    input_range = int_range(int(description["input"]["input_bits"]), signed=True)
    for node in model.graph.node:
        if node.op_type in ("Add", "ReduceSum") and not node.output[0].startswith("head."):
            raise ConfigError(
                f"{path}: node {node.name} ({node.op_type}): accelerator targets support the "
                "conv4 backbone only (no residual adds or sum pooling)"
            )
        if node.op_type == "MaxPool" and layers:
            layers[-1] = _with_pool(layers[-1])
        if node.op_type != "MultiThreshold":
            continue
        acc_cast = producers[node.input[0]]
        conv = producers[acc_cast.input[0]]
        cast_out = next(n for n in model.graph.node if n.input and n.input[0] == node.output[0])
        name = cast_out.output[0]
        if conv.op_type != "ConvInteger" or name not in records:
            raise ConfigError(f"{path}: node {node.name}: expected ConvInteger -> MultiThreshold")
        record, attrs, conv_attrs = records[name], _attrs(node), _attrs(conv)
        doc = json.loads(conv.doc_string)
        layer = ConvLayer(
            name=name,
            weight_codes=inits[conv.input[1]].astype(np.int64),
            weight_bits=int(record["weight_bits"]),
            input_range=input_range,
            accumulator_bound=int(doc["accumulator_bound"]),
            accumulator_bits=int(doc["accumulator_bits"]),
            thresholds=inits[node.input[1]].astype(np.int64),
            out_bias=int(attrs["out_bias"]),
            act_bits=int(record["act_bits"]),
            signed=bool(record["signed"]),
            pads=list(conv_attrs["pads"]),
            strides=list(conv_attrs["strides"]),
            pool=False,
        )
        layers.append(layer)
        input_range = (layer.out_bias, layer.out_bias + 2**layer.act_bits - 1)
    if not layers:
        raise ConfigError(f"{path}: no ConvInteger -> MultiThreshold layers found")
    head = description["head"]
    return HandOff(
        input_shape=list(description["input"]["shape"]),
        input_scale=float(description["input"]["input_scale"]),
        input_bits=int(description["input"]["input_bits"]),
        layers=layers,
        head_codes=inits["head.weight_codes"].astype(np.int64),
        head_bits=int(head["head_weight_bits"]),
        head_kind=str(head["head"]),
        tail_factor=np.asarray(inits["head.tail_factor"], dtype=np.float64).reshape(-1),
        description=description,
    )


def _with_pool(layer: ConvLayer) -> ConvLayer:
    return dataclasses.replace(layer, pool=True)


def feature_range(handoff: HandOff) -> tuple[int, int]:
    """Returns the code range of the features (the last layer's output codes)."""
    last = handoff.layers[-1]
    return last.out_bias, last.out_bias + 2**last.act_bits - 1


def head_bound(handoff: HandOff) -> int:
    """Returns max |class_dot| over the feature code range: the head accumulator's bound."""
    low, high = feature_range(handoff)
    codes = handoff.head_codes
    per_class = np.maximum(np.abs(codes * low), np.abs(codes * high)).sum(axis=0)
    return int(per_class.max(initial=0))


def signed_bits(bound: int) -> int:
    """Returns the bits of a signed integer type holding every value in [-bound, bound]."""
    return max(1, int(bound).bit_length()) + 1
