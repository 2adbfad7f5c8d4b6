"""`--target finn`: exact input thresholds, and FINN's transformations + executor equal to the
integer runtime.

The FINN check needs the optional FINN environment (`make finn-check` builds .venv-finn, since
finn-plus pins onnx/onnxruntime/protobuf versions the main set-up does not use); elsewhere it is
skipped.
"""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest

from lowbit.errors import ConfigError
from lowbit.export.api import export_model
from lowbit.export.thresholds import apply_thresholds
from lowbit.runtime import Runtime
from lowbit.targets.finn import GRAPH_FILE, build_finn_graph, input_thresholds, write_finn
from lowbit.targets.reader import read_int_graph
from tests.export.helpers import NUM_CLASSES, calibrated, sample_inputs


@pytest.mark.parametrize("scale", [2.0**-6, 0.0123, 1.0 / 3.0])
def test_input_thresholds_equal_div_then_round_half_even(scale):
    """On ties, their float32 neighbours and random values, for pow2 and non-pow2 scales."""
    rng = np.random.default_rng(0)
    scale32 = np.float32(scale)
    ties = (np.arange(-130, 130) + np.float32(0.5)) * scale32
    near = np.concatenate([np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, -np.inf)])
    x = np.concatenate([ties, near, rng.uniform(-3, 3, 2000).astype(np.float32)]).astype(np.float32)
    expected = np.clip(np.round(x / scale32), -128, 127)
    got = apply_thresholds(x[:, None], input_thresholds(scale, 8), -128)[:, 0]
    assert np.array_equal(got, expected)


@pytest.fixture(scope="module", params=["w1a2", "w2a2"])
def exported(request, tmp_path_factory):
    model = calibrated(request.param, "conv4")
    out = tmp_path_factory.mktemp(f"finn_{request.param}")
    export_model(model, out, class_names=[str(i) for i in range(NUM_CLASSES)], normalization={})
    write_finn(out)
    return request.param, model, out


def test_graph_annotates_lowbit_widths(exported):
    _, _, out = exported
    graph = onnx.load(str(out / GRAPH_FILE))
    types = {
        a.tensor_name: a.quant_parameter_tensor_names[0].value
        for a in graph.graph.quantization_annotation
    }
    description = json.loads((out / "model.json").read_text())
    for index, layer in enumerate(description["layers"]):
        assert types[f"layer{index}_acc"] == f"INT{layer['accumulator_bits']}"
        assert types[f"layer{index}_codes"] == f"UINT{layer['act_bits']}"
    assert types["input_codes"] == "INT8"
    tail = json.loads({p.key: p.value for p in graph.metadata_props}["lowbit_tail"])
    assert tail["head"] == "cosine"


def test_rejects_accumulators_float32_cannot_hold(exported):
    _, _, out = exported
    handoff = read_int_graph(out)
    big = handoff.layers[0].__class__(**{**handoff.layers[0].__dict__, "accumulator_bound": 2**24})
    with pytest.raises(ConfigError, match="float32"):
        build_finn_graph(handoff.__class__(**{**handoff.__dict__, "layers": [big]}))


@pytest.mark.slow
def test_finn_streamlined_graph_equals_integer_runtime(exported):
    """ConvertQONNXtoFINN + Streamline, then FINN's executor: the runtime's codes, exactly."""
    pytest.importorskip("finn")
    from finn.core.onnx_exec import execute_onnx
    from finn.transformation.qonnx.convert_qonnx_to_finn import ConvertQONNXtoFINN
    from finn.transformation.streamline import Streamline
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    recipe, model, out = exported
    x = sample_inputs(model, random=192, ties=64, seed=3)
    start = time.perf_counter()
    finn_model = ModelWrapper(str(out / GRAPH_FILE))
    finn_model = finn_model.transform(InferShapes()).transform(InferDataTypes())
    finn_model = finn_model.transform(ConvertQONNXtoFINN()).transform(Streamline())
    seconds = time.perf_counter() - start
    ops = {node.op_type for node in finn_model.graph.node}
    assert ops <= {"MultiThreshold", "Conv", "MaxPool", "Flatten", "MatMul"}, ops
    reference = Runtime(out / "model.int.onnx").run(x, keep_intermediates=True)
    input_name = finn_model.graph.input[0].name
    features_name, dot_name = (o.name for o in finn_model.graph.output)
    features, class_dot = [], []
    for image in x:
        result = execute_onnx(finn_model, {input_name: image[None]})
        features.append(result[features_name][0])
        class_dot.append(result[dot_name][0])
    features, class_dot = np.array(features), np.array(class_dot)
    mismatches = int(
        (~np.all(class_dot == reference["head.class_dot"], axis=1)
         | ~np.all(features == reference["backbone.features"], axis=1)).sum()
    )  # fmt: skip
    print(f"finn {recipe}: {len(x)} inputs, {mismatches} mismatches, transforms {seconds:.1f} s")
    assert np.array_equal(class_dot, reference["head.class_dot"])
    assert np.array_equal(features, reference["backbone.features"])


def test_targets_registry_writes_both_accelerator_targets(exported):
    from lowbit.targets import parse_targets, write_targets

    _, _, out = exported
    written = write_targets(parse_targets("finn,hls4ml"), out, {})
    assert [p.rsplit("/", 1)[1] for p in written["finn"]] == ["model.finn.onnx"]
    assert [p.rsplit("/", 1)[1] for p in written["hls4ml"]] == [
        "model.hls4ml.onnx",
        "hls4ml_config.json",
    ]
