"""The targets read an export through one reader: missing, corrupt or external-data graphs are
one-line ModelFileErrors naming the file, whichever target reads them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from lowbit.artifacts import DESCRIPTION_FILE, INT_GRAPH_FILE, MANIFEST_FILE
from lowbit.errors import ModelFileError
from lowbit.export.api import export_model
from lowbit.targets import write_targets
from lowbit.targets.hls4ml import GRAPH_FILE as HLS4ML_GRAPH
from lowbit.targets.hls4ml import convert_hls4ml, write_hls4ml
from lowbit.targets.reader import read_export, read_int_graph
from tests.export.helpers import NUM_CLASSES, calibrated

TARGETS = ["c", "finn", "hls4ml"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("reader")
    description = export_model(
        calibrated("w1a2", "conv4"),
        out,
        class_names=[str(i) for i in range(NUM_CLASSES)],
        normalization={},
    )
    return out, description


def copy_export(exported, tmp_path, *, manifest: bool):
    """A copy of the export; without its manifest (an export written before manifests) the
    reader itself meets the graph file, not the manifest's sha256 check."""
    source, description = exported
    out = tmp_path / "export"
    shutil.copytree(source, out)
    if not manifest:
        (out / MANIFEST_FILE).unlink()
        description = {k: v for k, v in description.items() if k != "manifest"}
        (out / DESCRIPTION_FILE).write_text(json.dumps(description))
    return out, description


def test_read_export_holds_graph_description_and_initializers(exported):
    out, description = exported
    export = read_export(out)
    assert export.graph_path == out / INT_GRAPH_FILE
    assert export.description == description
    graph = onnx.load(str(out / INT_GRAPH_FILE))
    assert export.model == graph
    for tensor in graph.graph.initializer:
        expected = onnx.numpy_helper.to_array(tensor)
        assert np.array_equal(export.initializers[tensor.name], expected)
    handoff = read_int_graph(export)
    assert [layer.name for layer in handoff.layers] == [
        layer["name"] for layer in description["layers"]
    ]


@pytest.mark.parametrize("manifest", [True, False])
@pytest.mark.parametrize("damage", ["missing", "corrupt"])
@pytest.mark.parametrize("target", TARGETS)
def test_unusable_int_graph_is_a_one_line_error(exported, tmp_path, target, damage, manifest):
    out, description = copy_export(exported, tmp_path, manifest=manifest)
    graph = out / INT_GRAPH_FILE
    if damage == "missing":
        graph.unlink()
    else:
        graph.write_bytes(graph.read_bytes()[:100] + b"\xff" * 7)
    with pytest.raises(ModelFileError, match=str(graph)) as error:
        write_targets((target,), out, description)
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize("target", TARGETS)
def test_external_data_is_refused_not_followed(exported, tmp_path, target):
    out, description = copy_export(exported, tmp_path, manifest=False)
    graph = onnx.load(str(out / INT_GRAPH_FILE))
    onnx.save_model(
        graph,
        str(out / INT_GRAPH_FILE),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (out / "weights.bin").is_file()  # the reference points to a file that exists
    with pytest.raises(ModelFileError, match="external file") as error:
        write_targets((target,), out, description)
    assert str(out / INT_GRAPH_FILE) in str(error.value)
    assert len(str(error.value).splitlines()) == 1


def test_hls4ml_conversion_checks_its_files_first(exported, tmp_path):
    """convert_hls4ml reads model.hls4ml.onnx through the same loader (before hls4ml loads)."""
    out, _ = copy_export(exported, tmp_path, manifest=True)
    write_hls4ml(out)
    (out / HLS4ML_GRAPH).write_bytes(b"not onnx")
    with pytest.raises(ModelFileError, match=str(out / HLS4ML_GRAPH)):
        convert_hls4ml(out, tmp_path / "hls")
    config = json.loads((out / "hls4ml_config.json").read_text())
    (out / "hls4ml_config.json").write_text(json.dumps({**config, "onnx_model": "../x.onnx"}))
    with pytest.raises(ModelFileError, match="onnx_model"):
        convert_hls4ml(out, tmp_path / "hls")
