"""export_model writes three graphs and model.json; the batch dimension is fixed or dynamic."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx

from lowbit.artifacts import GRAPH_FILES, MANIFEST_FILE
from lowbit.errors import ConfigError
from lowbit.export.api import export_model, parse_batch
from lowbit.models import build_model
from lowbit.quant import get_recipe, recipe_from_dict
from lowbit.runtime import Runtime
from lowbit.verify.capture import graph_scales
from lowbit.verify.compare import tail_tolerance

from .helpers import IMAGE_SIZE, NUM_CLASSES, calibrated, sample_inputs

CLASS_NAMES = ["scratch", "stain", "hole", "crack"][:NUM_CLASSES]
NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
OOD = {"score": "energy", "threshold": 1.25, "tpr": 0.95, "calibrated_on": "val"}


def batch_dims(graph: onnx.ModelProto) -> list[object]:
    dims = []
    for info in list(graph.graph.input) + list(graph.graph.output):
        dim = info.type.tensor_type.shape.dim[0]
        dims.append(dim.dim_param if dim.HasField("dim_param") else dim.dim_value)
    return dims


@pytest.fixture(scope="module")
def dynamic_export(tmp_path_factory):
    model = calibrated("w1a2", "conv4")
    out = tmp_path_factory.mktemp("export")
    description = export_model(
        model, out, class_names=CLASS_NAMES, normalization=NORMALIZATION, ood=OOD
    )
    return model, out, description


def test_writes_the_four_files(dynamic_export) -> None:
    _, out, _ = dynamic_export
    names = sorted(path.name for path in out.iterdir())
    # no temp files or staging folder left behind
    assert names == sorted([*GRAPH_FILES.values(), "model.json", MANIFEST_FILE])
    for name in GRAPH_FILES.values():
        onnx.checker.check_model(onnx.load(str(out / name)))


def test_model_json_content(dynamic_export) -> None:
    model, out, description = dynamic_export
    saved = json.loads((out / "model.json").read_text())
    assert saved == json.loads(json.dumps(description))
    for key in ("recipe", "layers", "class_names", "input", "ood", "deployed_bits", "head"):
        assert key in saved, key
    assert recipe_from_dict(saved["recipe"]) == model.recipe
    assert saved["class_names"] == CLASS_NAMES
    assert saved["input"]["normalization"] == NORMALIZATION
    assert saved["input"]["input_bits"] == 8
    assert saved["ood"] == OOD
    convs = [layer for layer in saved["layers"] if layer["kind"] == "conv"]
    assert len(convs) == 4
    for layer in convs:
        assert isinstance(layer["accumulator_bits"], int) and 2 <= layer["accumulator_bits"] <= 32
        assert layer["accumulator_bound"] < 2 ** (layer["accumulator_bits"] - 1)
    assert saved["input"]["crop"] is None  # exported without a crop rule: whole images
    bits = saved["deployed_bits"]
    assert bits["total"] == sum(
        row["weight_bits"] + row["threshold_bits"] for row in bits["layers"]
    )
    # 1-bit body weights: each body layer stores one bit per weight
    body = [row for row in bits["layers"] if row["name"] in {c["name"] for c in convs[1:]}]
    assert [row["weight_bits"] for row in body] == [c["weights"] for c in convs[1:]]


def test_graph_metadata_carries_model_json(dynamic_export) -> None:
    _, out, _ = dynamic_export
    saved = json.loads((out / "model.json").read_text())
    for name in GRAPH_FILES.values():
        graph = onnx.load(str(out / name))
        metadata = {entry.key: entry.value for entry in graph.metadata_props}
        assert json.loads(metadata["lowbit"]) == saved


def test_dynamic_batch_is_n_and_qonnx_batch_is_one(dynamic_export) -> None:
    _, out, _ = dynamic_export
    for kind, name in GRAPH_FILES.items():
        expected = [1, 1] if kind == "qonnx" else ["N", "N"]
        assert batch_dims(onnx.load(str(out / name))) == expected, name


def test_qonnx_file_runs_in_qonnx_as_exported(dynamic_export) -> None:
    """ModelWrapper + execute_onnx on model.qonnx.onnx, one image at a time, no transformation:
    every code tensor equals the integer runtime's exactly, the logits within the float tail's
    stated tolerance (float32 in the QONNX graph, float64 in the runtime)."""
    model, out, description = dynamic_export
    wrapper = ModelWrapper(str(out / GRAPH_FILES["qonnx"]))
    x = sample_inputs(model, random=3, ties=2)
    expected = Runtime(out / GRAPH_FILES["int"]).run(x, keep_intermediates=True)
    code_names = [name for name in expected if name in graph_scales(wrapper.model, list(expected))]
    assert len(code_names) >= 5  # the input codes and every activation's
    scales = graph_scales(wrapper.model, code_names)
    head = description["head"]
    tolerance = tail_tolerance(head["cosine_scale"], head["features"])
    for index, image in enumerate(x):
        got = execute_onnx(wrapper, {"input": image[None]}, return_full_exec_context=True)
        for name in code_names:
            codes = np.round(got[name].astype(np.float64) / scales[name]).astype(np.int64)
            assert np.array_equal(codes, expected[name][index : index + 1]), name
        assert np.abs(got["logits"] - expected["logits"][index]).max() <= tolerance


def test_fixed_batch(tmp_path) -> None:
    model = calibrated("w1a2", "conv4")
    export_model(model, tmp_path, class_names=CLASS_NAMES, normalization=NORMALIZATION, batch=3)
    for name in GRAPH_FILES.values():
        assert batch_dims(onnx.load(str(tmp_path / name))) == [3, 3], name
    session = ort.InferenceSession(str(tmp_path / GRAPH_FILES["qcdq"]))
    x = sample_inputs(model, random=3, ties=0)
    assert session.run(None, {"input": x})[0].shape == (3, NUM_CLASSES)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {"input": sample_inputs(model, random=2, ties=0)})
    saved = json.loads((tmp_path / "model.json").read_text())
    assert saved["ood"]["threshold"] is None  # no calibration given


@pytest.mark.parametrize(("text", "value"), [("dynamic", None), (None, None), ("4", 4), (2, 2)])
def test_parse_batch(text, value) -> None:
    assert parse_batch(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "four", "1.5"])
def test_parse_batch_rejects(text) -> None:
    with pytest.raises(ConfigError):
        parse_batch(text)


def test_fp32_export_refused(tmp_path) -> None:
    model = build_model(get_recipe("fp32"), backbone="conv4", width=4, image_size=IMAGE_SIZE)
    with pytest.raises(ConfigError):
        export_model(model, tmp_path, class_names=CLASS_NAMES, normalization=NORMALIZATION)
    assert list(tmp_path.iterdir()) == []


def test_failed_export_keeps_previous_files(dynamic_export, tmp_path, monkeypatch) -> None:
    """Every graph is built and checked before the first file is replaced."""
    model, _, _ = dynamic_export
    export_model(model, tmp_path, class_names=CLASS_NAMES, normalization=NORMALIZATION)
    files = [*GRAPH_FILES.values(), "model.json", MANIFEST_FILE]
    before = {name: (tmp_path / name).read_bytes() for name in files}
    calls = {"n": 0}
    real_check = onnx.checker.check_model

    def failing_check(graph, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise onnx.checker.ValidationError("planted")
        return real_check(graph, *args, **kwargs)

    monkeypatch.setattr(onnx.checker, "check_model", failing_check)
    with pytest.raises(onnx.checker.ValidationError):
        export_model(model, tmp_path, class_names=["a", "b", "c", "d"], normalization={})
    after = {name: (tmp_path / name).read_bytes() for name in files}
    assert after == before
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(files)
