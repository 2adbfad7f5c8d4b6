"""The stage-1 graphs fit_detector ships: listed, recorded with their sha256, and equal to
`inspect`'s maps and scores bit for bit when the runtime (or onnxruntime, for the QCDQ form)
runs them."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.artifacts import detector_graph_files
from lowbit.data import load_whole_images
from lowbit.detect.graph import ANOMALY_MAP, IMAGE_SCORE
from lowbit.detect.inspect import inspect
from lowbit.detect.store import read_detector, read_detector_graph
from lowbit.errors import ModelFileError
from lowbit.fewshot.images import normalize
from lowbit.manifest import check_export, read_description
from lowbit.runtime import Runtime


def test_the_graphs_are_written_recorded_and_listed(fitted_export):
    detector, _ = read_detector(fitted_export, "brick")
    names = detector_graph_files("brick")
    assert set(detector["graphs"]) == {"int", "qcdq", "qonnx"}
    for kind, entry in detector["graphs"].items():
        assert entry["file"] == names[kind] and (fitted_export / entry["file"]).is_file()
    manifest = check_export(fitted_export)  # every listed file matches its sha256
    assert set(names.values()) <= set(manifest["files"])


def test_the_runtime_on_the_shipped_graph_equals_inspect(fitted_export, whole_data):
    data = load_whole_images(whole_data / "brick")
    images = data.test_images[:4]
    rows = inspect(fitted_export, images, category="brick")
    detector, _ = read_detector(fitted_export, "brick")
    normalization = read_description(fitted_export)["input"].get("normalization") or None
    x = normalize(np.stack(images), normalization)
    outputs = Runtime(read_detector_graph(fitted_export, detector, "int")).run(x)
    assert np.array_equal(outputs[ANOMALY_MAP], np.stack([row["map"] for row in rows]))
    assert np.array_equal(outputs[IMAGE_SCORE], np.array([row["score"] for row in rows]))


def test_onnxruntime_on_the_shipped_qcdq_graph_equals_inspect(fitted_export, whole_data):
    ort = pytest.importorskip("onnxruntime")
    data = load_whole_images(whole_data / "brick")
    images = data.test_images[:2]
    rows = inspect(fitted_export, images, category="brick")
    detector, _ = read_detector(fitted_export, "brick")
    model = read_detector_graph(fitted_export, detector, "qcdq")
    normalization = read_description(fitted_export)["input"].get("normalization") or None
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = normalize(np.stack(images), normalization)
    maps, scores = session.run([ANOMALY_MAP, IMAGE_SCORE], {"input": x})
    assert np.array_equal(maps.astype(np.int64), np.stack([row["map"] for row in rows]))
    assert np.array_equal(scores.astype(np.int64), np.array([row["score"] for row in rows]))


def test_a_changed_graph_is_refused(fitted_copy):
    detector, _ = read_detector(fitted_copy, "brick")
    path = fitted_copy / detector["graphs"]["int"]["file"]
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelFileError, match="sha256"):
        read_detector_graph(fitted_copy, detector, "int")
