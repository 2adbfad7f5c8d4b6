"""verify_detector end to end: the four executors agree; planted bugs count as unexplained."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from export.helpers import calibrated  # tests/ is on sys.path under pytest
from onnx import numpy_helper

import lowbit.verify.detector as detector_module
from lowbit.artifacts import GRAPH_FILES
from lowbit.detect.aggregate import aggregate, aggregated_range
from lowbit.detect.float_graphs import witness_detector
from lowbit.detect.memory_bank import fit_memory_bank
from lowbit.detect.trunk import cut_trunk, trunk_code_range
from lowbit.export.api import export_model
from lowbit.runtime import Runtime
from lowbit.verify.api import build_inputs
from lowbit.verify.detector import format_detector_report, verify_detector
from lowbit.verify.inputs import random_inputs
from verify.test_verify import LAYER, plant_off_by_one

POOL = "backbone.blocks.1.pool"  # reached from LAYER (blocks.1.act) through a MaxPool
K = 3


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, export dir) for a calibrated w1a2 conv4."""
    model = calibrated("w1a2", "conv4")
    out = tmp_path_factory.mktemp("detector")
    export_model(model, out, class_names=["a", "b", "c", "d"], normalization={"mean": [0.5] * 3})
    return model, out


def fitted_bank(out, layer: str, x: np.ndarray, entries: int = 50) -> np.ndarray:
    int_graph = onnx.load(out / GRAPH_FILES["int"])
    trunk = cut_trunk(int_graph, [layer], x.shape[2], x.shape[3])
    value_range = aggregated_range(trunk_code_range(trunk, layer), K)
    return fit_memory_bank(aggregate(Runtime(trunk).run(x)[layer], K), entries, value_range)


@pytest.mark.parametrize("layer", [POOL, LAYER])
def test_executors_agree_on_whole_images(exported, layer) -> None:
    model, out = exported
    x = random_inputs(6, 48, max_abs=model.config.input_max_abs, seed=3)
    bank = fitted_bank(out, layer, x[:2])
    capped = {"qonnx": 3, "int_qonnx": 2}
    report = verify_detector(model, out, layer, K, bank, {"random": x}, max_images=capped)
    assert (report["mismatches"], report["unexplained"]) == (0, 0)
    images = {row["executor"]: row["images"] for row in report["executors"]}
    assert images == {"runtime": 6, "qcdq": 6, "qonnx": 3, "int_qonnx": 2}
    for row in report["executors"]:
        # input, block 0 act, block 1 act (+ its pool): every code tensor up to the layer
        tensors = 4 if layer == POOL else 3
        assert row["trunk"]["checked_values"] > 0
        assert sum(r["executor"] == row["executor"] for r in report["layers"]) == tensors
        side = 48 // 4 if layer == POOL else 48 // 2  # two MaxPools before POOL, one before
        assert row["map"]["checked_values"] == row["images"] * side * side
        assert row["score"]["checked_values"] == row["images"]
    assert "qonnx" in format_detector_report(report)


def test_float_tail_refuses_banks_beyond_float32(exported) -> None:
    _, out = exported
    graphs = {kind: onnx.load(out / name) for kind, name in GRAPH_FILES.items()}
    bank = np.zeros((2, 8), np.int64)
    witness_detector(graphs["qcdq"], graphs["int"], POOL, K, bank, 32, 32)  # 4·8·27² < 2^24
    with pytest.raises(Exception, match="8 bits"):  # 2-bit codes x 10 x 10 > 255
        witness_detector(graphs["qcdq"], graphs["int"], POOL, 10, bank, 32, 32)


def test_a_planted_tail_bug_is_unexplained(exported, monkeypatch) -> None:
    model, out = exported
    x = random_inputs(4, 32, max_abs=model.config.input_max_abs, seed=4)
    bank = fitted_bank(out, POOL, x[:2])
    build = detector_module.detector_graph

    def off_by_one(*args, **kwargs):  # ||b||^2 of entry 0 one too large in the integer graph
        graph = build(*args, **kwargs)
        init = next(i for i in graph.graph.initializer if i.name == "detector.bank_norm")
        values = numpy_helper.to_array(init).copy()
        values[0, 0] += 1
        init.CopyFrom(numpy_helper.from_array(values, init.name))
        return graph

    monkeypatch.setattr(detector_module, "detector_graph", off_by_one)
    report = verify_detector(model, out, POOL, K, bank, {"random": x}, executors=("runtime",))
    row = report["executors"][0]
    assert row["trunk"]["mismatches"] == 0
    assert row["map"]["mismatches"] > 0
    assert row["map"]["unexplained"] == row["map"]["mismatches"]
    assert report["unexplained"] > 0


def test_a_planted_trunk_bug_is_caught_and_explains_the_maps(exported, tmp_path) -> None:
    """An off-by-one threshold upstream: its codes are unexplained, the pooled codes and maps
    it changes are explained by it (they inherit the sample's mismatch)."""
    model, out = exported
    planted = tmp_path / "planted"
    shutil.copytree(out, planted)
    description = {"model": {"image_size": 32, "input_max_abs": 2.0}, "input": {}}
    inputs = build_inputs(description, None, n=0, random=32, ties=False, seed=0)
    _, changed = plant_off_by_one(model, planted, inputs)
    bank = fitted_bank(out, POOL, inputs["random"][:4])
    report = verify_detector(model, planted, POOL, K, bank, inputs, executors=("runtime",))
    rows = {row["tensor"]: row for row in report["layers"]}
    assert rows[LAYER]["mismatches"] == changed == rows[LAYER]["unexplained"]
    assert rows["backbone.blocks.0.act"]["mismatches"] == 0
    assert rows[POOL]["unexplained"] == 0
    summary = report["executors"][0]
    assert summary["map"]["unexplained"] == summary["score"]["unexplained"] == 0
    assert report["unexplained"] == changed


@pytest.fixture(scope="module")
def with_detector(tmp_path_factory):
    """(model, export dir) of a calibrated w1a2 conv4 normalized like training, with a detector
    for the built-in brick fitted on 6 train/good images of 48 px."""
    from lowbit.data import NORMALIZATION
    from lowbit.detect.fit import fit_detector

    model = calibrated("w1a2", "conv4")
    out = tmp_path_factory.mktemp("with_detector")
    export_model(model, out, class_names=["a", "b", "c", "d"], normalization=NORMALIZATION)
    fit_detector(out, category="brick", train_good=6, image_size=48, bank_size=60)
    return model, out


def _fitted_copy(out, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(out, export)
    return export


def test_verify_covers_every_fitted_detector(with_detector) -> None:
    from lowbit.verify.run import verify_detectors

    model, export = with_detector
    reports = verify_detectors(model, export, images=3, random=2, qonnx_images=1)
    report = reports["brick"]
    assert report["inputs"] == {"whole": 3, "random": 2}
    assert (report["mismatches"], report["unexplained"]) == (0, 0)
    assert report["shipped_graphs"] == dict.fromkeys(
        ["int", "qcdq", "qonnx"], "rebuilt identically"
    )
    images = {row["executor"]: row["images"] for row in report["executors"]}
    assert images == {"runtime": 5, "qcdq": 5, "qonnx": 1, "int_qonnx": 1}
    assert verify_detectors(model, export, images=0, random=0) == {}


def test_a_shipped_graph_that_differs_is_unexplained(with_detector, tmp_path) -> None:
    import hashlib
    import json

    from lowbit.artifacts import detector_files
    from lowbit.manifest import read_manifest, seal
    from lowbit.verify.run import verify_detectors

    model, out = with_detector
    export = _fitted_copy(out, tmp_path)
    json_path = export / detector_files("brick")[0]
    detector = json.loads(json_path.read_text())
    graph_path = export / detector["graphs"]["int"]["file"]
    graph = onnx.load(graph_path)
    init = next(i for i in graph.graph.initializer if i.name == "detector.bank_norm")
    values = numpy_helper.to_array(init).copy()
    values[0, 0] += 1
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    graph_path.write_bytes(graph.SerializeToString())
    detector["graphs"]["int"]["sha256"] = hashlib.sha256(graph_path.read_bytes()).hexdigest()
    json_path.write_text(json.dumps(detector))
    seal(export, read_manifest(export)["files"])  # a consistent set whose graph is wrong
    report = verify_detectors(model, export, images=1, random=0, qonnx_images=0)["brick"]
    assert report["shipped_graphs"]["int"] == "differs from the rebuilt graph"
    assert report["unexplained"] == 1 and report["mismatches"] == 0
