"""lowbit.artifacts: each JSON schema accepts what lowbit writes and refuses a file missing a
required field with one line naming the file and the field; the one ONNX loader."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lowbit import artifacts
from lowbit.artifacts import (
    CONFIG_FILE,
    DESCRIPTION_FILE,
    METRICS_FILE,
    RESULTS_FILE,
    SCHEMAS,
    VERIFY_FILE,
    detector_files,
    load_onnx,
    read_json,
)
from lowbit.bench import BenchOptions
from lowbit.bench.report import build_results
from lowbit.detect.fit import fit_detector
from lowbit.errors import ModelFileError
from lowbit.export.api import export_model
from lowbit.io import atomic_write_json
from lowbit.manifest import read_description
from lowbit.train import train
from lowbit.verify.api import verify_export
from tests.export.helpers import calibrated, sample_inputs
from tests.train.conftest import make_splits, tiny_config


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """Each JSON artifact as lowbit writes it: a tiny run, export, verify and bench report."""
    run = tmp_path_factory.mktemp("run")
    train(tiny_config(recipe="fp32", epochs=1), run, splits=make_splits(), progress=False)
    export = tmp_path_factory.mktemp("export")
    model = calibrated("w1a2", "conv4")
    export_model(model, export, class_names=["a", "b", "c", "d"], normalization={})
    inputs = {"random": sample_inputs(model, random=4, ties=0)}
    verify_export(model, export, inputs, executors=("runtime",), progress=False)
    fit_detector(export, category="brick", train_good=4, image_size=64)
    bench = tmp_path_factory.mktemp("bench")
    atomic_write_json(bench / RESULTS_FILE, build_results(BenchOptions(), [], wall_seconds=1.0))
    return {
        "config": run / CONFIG_FILE,
        "metrics": run / METRICS_FILE,
        "model": export / DESCRIPTION_FILE,
        "verify": export / VERIFY_FILE,
        "detector": export / detector_files("brick")[0],
        "results": bench / RESULTS_FILE,
    }


def test_every_schema_has_a_written_file(written) -> None:
    assert set(written) == set(SCHEMAS)


@pytest.mark.parametrize("schema_name", sorted(SCHEMAS))
def test_written_files_pass(written, schema_name) -> None:
    path = written[schema_name]
    assert read_json(path, schema_name) == json.loads(path.read_text())


def _remove(data: dict, field: str) -> None:
    *parents, last = field.split(".")
    for key in parents:
        data = data[key]
    del data[last]


CASES = [(name, field) for name, schema in sorted(SCHEMAS.items()) for field in schema.fields]


@pytest.mark.parametrize(("schema_name", "field"), CASES)
def test_missing_field_is_one_line_naming_file_and_field(written, tmp_path, schema_name, field):
    data = json.loads(written[schema_name].read_text())
    _remove(data, field)
    path = tmp_path / SCHEMAS[schema_name].file
    path.write_text(json.dumps(data))
    with pytest.raises(SCHEMAS[schema_name].error) as error:
        read_json(path, schema_name)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: field '{field}' is missing")


@pytest.mark.parametrize("schema_name", sorted(SCHEMAS))
def test_wrong_type_missing_file_and_bad_json(written, tmp_path, schema_name) -> None:
    schema = SCHEMAS[schema_name]
    field = next(iter(schema.fields))
    data = json.loads(written[schema_name].read_text())
    data[field] = True  # a bool is not a number, a list, a dict or a string here
    path = tmp_path / schema.file
    path.write_text(json.dumps(data))
    with pytest.raises(schema.error, match=re.escape(f"{path}: field '{field}' is bool")):
        read_json(path, schema_name)
    path.write_text("[1]")
    with pytest.raises(schema.error, match=re.escape(f"not a lowbit {schema.file}")):
        read_json(path, schema_name)
    path.write_text("{")
    with pytest.raises(schema.error, match=re.escape(f"{path}: not valid JSON")):
        read_json(path, schema_name)
    path.unlink()
    with pytest.raises(schema.error, match=re.escape(str(path))):
        read_json(path, schema_name)


def test_read_description_checks_the_manifest(written) -> None:
    export = written["model"].parent
    assert read_description(export)["files"]["int"] == "model.int.onnx"
    with pytest.raises(ModelFileError, match="not a folder"):
        read_description(written["model"])


def test_load_onnx(written, tmp_path) -> None:
    graph = load_onnx(written["model"].parent / "model.int.onnx")
    assert len(graph.graph.node) > 0
    with pytest.raises(ModelFileError, match="no such model file"):
        load_onnx(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(np.arange(7, dtype=np.uint8).tobytes() + b"\xff\x00")
    with pytest.raises(ModelFileError, match="bad.onnx: not a readable ONNX model") as error:
        load_onnx(tmp_path / "bad.onnx")
    assert "\n" not in str(error.value)


def _artifact_names() -> set[str]:
    names = {value for key, value in vars(artifacts).items() if key.endswith("_FILE")}
    return names | set(artifacts.GRAPH_FILES.values())


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes: prose may mention a file; code must use the constant."""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr):
            found.add(id(node.body[0].value))
    return found


def test_artifact_names_are_spelled_only_in_artifacts() -> None:
    names = _artifact_names()
    package = Path(artifacts.__file__).parent
    spelled = []
    for path in sorted(package.rglob("*.py")):
        if path == Path(artifacts.__file__):
            continue
        tree = ast.parse(path.read_text())
        prose = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in prose
                and (node.value in names or node.value.rsplit("/", 1)[-1] in names)
            ):
                spelled.append(f"{path.relative_to(package.parent)}:{node.lineno} {node.value!r}")
    assert not spelled, "import the name from lowbit.artifacts: " + ", ".join(spelled)


def test_importing_artifacts_loads_no_stage() -> None:
    probe = (
        "import json, sys, lowbit.artifacts; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'lowbit')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["lowbit", "lowbit.artifacts", "lowbit.errors"]
