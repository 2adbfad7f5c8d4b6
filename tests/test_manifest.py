"""Exports as sets: a sealed folder passes, any change to a listed file is refused by name,
publication moves model.json first and the manifest last, a failure publishes nothing."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os

import pytest

import lowbit
from lowbit.artifacts import MANIFEST_FILE
from lowbit.errors import ModelFileError, WriteError
from lowbit.io import atomic_write_bytes, write_error
from lowbit.manifest import check_export, read_manifest, seal, staged

SET = {"model.json": b'{"manifest": "model.manifest.json"}', "model.int.onnx": b"graph"}


def _write_set(folder, files=SET):
    with staged(folder) as staging:
        for name, data in files.items():
            atomic_write_bytes(staging / name, data)
        seal(staging, files)


def test_a_sealed_set_passes(tmp_path):
    _write_set(tmp_path)
    manifest = check_export(tmp_path)
    assert manifest["lowbit_version"] == lowbit.__version__
    graph = {"size": 5, "sha256": hashlib.sha256(b"graph").hexdigest()}
    assert manifest["files"]["model.int.onnx"] == graph
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*SET, MANIFEST_FILE])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "model.int.onnx").write_bytes(b"grap"), "model.int.onnx: sha256 differs"),
        (lambda f: (f / "model.int.onnx").write_bytes(b"GRAPH"), "model.int.onnx: sha256 differs"),
        (lambda f: (f / "model.int.onnx").unlink(), "model.int.onnx: cannot read"),
        (lambda f: (f / MANIFEST_FILE).unlink(), "missing although model.json names it"),
        (lambda f: (f / MANIFEST_FILE).write_text("{"), "not valid JSON"),
    ],
)
def test_a_changed_set_is_refused_by_name(tmp_path, damage, message):
    _write_set(tmp_path)
    damage(tmp_path)
    with pytest.raises(ModelFileError, match=message):
        check_export(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["files"].update({"../secret": m["files"]["model.json"]}), "bad entry"),
        (lambda m: m["files"].update({"/etc/passwd": m["files"]["model.json"]}), "bad entry"),
        (lambda m: m["files"].pop("model.json"), "not a lowbit export manifest"),
        (lambda m: m.update(format_version=2), "format_version 2"),
    ],
)
def test_a_malformed_manifest_is_refused(tmp_path, edit, message):
    _write_set(tmp_path)
    manifest = read_manifest(tmp_path)
    edit(manifest)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match=message):
        check_export(tmp_path)


def test_an_export_from_before_manifests_is_read_with_a_warning(tmp_path, caplog):
    (tmp_path / "model.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        assert check_export(tmp_path) is None
    assert "written by an older lowbit" in caplog.text


def test_publication_moves_model_json_first_and_the_manifest_last(tmp_path, monkeypatch):
    moved = []
    real = os.replace

    def recording(source, target):
        moved.append(os.path.basename(target))
        return real(source, target)

    monkeypatch.setattr(os, "replace", recording)
    _write_set(tmp_path, {"model.json": b"{}", "a.onnx": b"a", "c/b.h": b"b"})
    published = [name for name in moved if not name.startswith(".")]  # not the temp renames
    assert published[-4:] == ["model.json", "a.onnx", "b.h", MANIFEST_FILE]


def test_a_failure_while_staging_publishes_nothing(tmp_path):
    _write_set(tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    with pytest.raises(WriteError, match=f"{tmp_path / 'model.int.onnx'}: cannot write: no space"):
        with staged(tmp_path) as staging:
            atomic_write_bytes(staging / "model.json", b"{}")
            error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise write_error(staging / "model.int.onnx", error)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
