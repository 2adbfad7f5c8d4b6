"""Enrollment into an exported model: expected head rows, verified, atomic, reversible."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from lowbit.artifacts import MANIFEST_FILE
from lowbit.errors import ConfigError, VerifyError, WriteError
from lowbit.fewshot import enroll_class, remove_class, runtime_features, save_images
from lowbit.fewshot.enroll import append_class, drop_class
from lowbit.lock import LOCK_FILE
from lowbit.manifest import check_export, read_manifest, seal
from lowbit.models import build_model
from lowbit.quant import get_recipe
from lowbit.runtime import Runtime
from lowbit.train import load_run
from lowbit.train.run import splits_for

from .conftest import NOVEL

FAST = dict(verify_n=8, verify_random=8)


def expected_codes(row: np.ndarray, bits: int = 8) -> np.ndarray:
    """Per-row symmetric narrow quantization of the normalized row, power-of-two scale, by hand."""
    unit = row / np.sqrt((row**2).sum())
    levels = 2 ** (bits - 1) - 1
    scale = 2.0 ** np.ceil(np.log2(np.abs(unit).max() / levels))
    return np.clip(np.round(unit / scale), -levels, levels)


def toy_model(head: str = "cosine"):
    torch.manual_seed(0)
    return build_model(get_recipe("w2a2"), head=head, width=8, num_classes=4).eval()


def test_prototype_enrollment_gives_the_expected_head_rows() -> None:
    model = toy_model()
    before, _ = model.head.row_codes()
    row = np.random.default_rng(0).normal(size=model.feature_dim())
    enrolled = append_class(model, row)
    after, _ = enrolled.head.row_codes()
    assert enrolled.config.num_classes == model.config.num_classes + 1
    assert np.array_equal(after[:-1].numpy(), before.numpy())  # trained rows untouched
    assert np.array_equal(after[-1].numpy(), expected_codes(row))
    removed = drop_class(enrolled, model.config.num_classes)
    assert np.array_equal(removed.head.row_codes()[0].numpy(), before.numpy())


def test_linear_head_refuses_enrollment() -> None:
    linear = toy_model("linear")
    with pytest.raises(ConfigError, match="cosine head"):
        append_class(linear, np.ones(linear.feature_dim()))


def novel_images(run_dir, tmp_path, name: str, count: int = 5):
    _, record = load_run(run_dir)
    splits = splits_for(record)
    x = splits.ood.x[splits.ood_types == list(splits.unknown_names).index(name)]
    return x[:count], save_images(x[:count], tmp_path / name)


def head_codes(graph_path) -> np.ndarray:
    graph = onnx.load(str(graph_path))
    init = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    return init["head.weight_codes"]


def test_enroll_then_remove(copy_export, tmp_path) -> None:
    export = copy_export
    original = json.loads((export / "model.json").read_text())
    original_codes = head_codes(export / "model.int.onnx")
    x, paths = novel_images(export, tmp_path, NOVEL[0])
    report = enroll_class(export, NOVEL[0], paths, **FAST)

    description = json.loads((export / "model.json").read_text())
    assert description["class_names"] == original["class_names"] + [NOVEL[0]]
    assert description["source_run"] == "enrolled/001" == report["source_run"]
    assert report["verify"]["unexplained"] == 0 and report["verify"]["checked_values"] > 0
    assert json.loads((export / "verify.json").read_text())["unexplained"] == 0
    assert not (export / ".enroll-staging").exists()
    saved = torch.load(export / "enrolled/001/checkpoint.pt", weights_only=True)
    assert saved["config"]["model"]["num_classes"] == len(description["class_names"])
    assert (export / "enrolled/001/previous/model.json").read_text() == json.dumps(
        original, indent=2
    ) + "\n"

    # the new head row is the quantized prototype of the runtime's integer features
    runtime = Runtime(export / "model.int.onnx")
    features = runtime_features(runtime, x).astype(np.float64)
    unit = features / np.sqrt((features**2).sum(axis=1, keepdims=True))
    codes = head_codes(export / "model.int.onnx")
    assert codes.shape[1] == len(original["class_names"]) + 1
    assert np.array_equal(codes[:, :-1], original_codes)
    assert np.array_equal(codes[:, -1], expected_codes(unit.mean(axis=0)))

    # usable without retraining by the integer runtime and by onnxruntime (QCDQ)
    logits = runtime.run(x)["logits"]
    session = ort.InferenceSession(str(export / "model.qcdq.onnx"))
    ort_logits = session.run(None, {"input": x})[0]
    assert logits.shape == ort_logits.shape == (5, 4)
    assert np.array_equal(logits.argmax(1), ort_logits.argmax(1))

    # the enrolled folder is a run: verify_run works from model.json's source_run
    from lowbit.verify.run import verify_run

    report = verify_run(export, n=8, random=8, executors=("runtime",), progress=False)
    assert report["unexplained"] == 0

    removed = remove_class(export, NOVEL[0], **FAST)
    assert removed["class_names"] == original["class_names"]
    assert json.loads((export / "model.json").read_text())["source_run"] == "enrolled/002"
    assert np.array_equal(head_codes(export / "model.int.onnx"), original_codes)


def test_failed_verify_leaves_the_export_untouched(copy_export, tmp_path, monkeypatch) -> None:
    import lowbit.verify.api as verify_api

    real = verify_api.verify_export

    def broken(*args, **kwargs):
        return {**real(*args, **kwargs), "unexplained": 1}

    monkeypatch.setattr(verify_api, "verify_export", broken)
    files = ["model.json", "model.int.onnx", "model.qcdq.onnx", "model.qonnx.onnx"]
    before = {name: (copy_export / name).read_bytes() for name in files}
    _, paths = novel_images(copy_export, tmp_path, NOVEL[1])
    with pytest.raises(VerifyError, match="unchanged"):
        enroll_class(copy_export, NOVEL[1], paths, **FAST)
    assert {name: (copy_export / name).read_bytes() for name in files} == before
    assert not (copy_export / "enrolled").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [("aa_red", "already a class"), ("unknown", "reserved"), ("", "reserved or empty")],
)
def test_bad_class_names(copy_export, tmp_path, name, message) -> None:
    with pytest.raises(ConfigError, match=message):
        enroll_class(copy_export, name, [tmp_path / "x.png"], **FAST)


def test_bad_removals(copy_export) -> None:
    with pytest.raises(ConfigError, match="not a class"):
        remove_class(copy_export, "zz_grey", **FAST)
    description = json.loads((copy_export / "model.json").read_text())
    description["class_names"] = description["class_names"][:2]
    (copy_export / "model.json").write_text(json.dumps(description))
    seal(copy_export, read_manifest(copy_export)["files"])  # a consistent 2-class export
    with pytest.raises(ConfigError, match="at least 2 classes"):
        remove_class(copy_export, "aa_red", **FAST)


@pytest.mark.parametrize(
    "name",
    ["checkpoint.pt", "config.json", "model.int.onnx", "model.json", MANIFEST_FILE, "verify.json"],
)
def test_full_disk_during_enrollment_leaves_the_export(
    copy_export, tmp_path, monkeypatch, capsys, name
) -> None:
    """ENOSPC at each file an enrollment writes: one line, exit 8, the export as it was."""
    from lowbit.cli import main

    _, paths = novel_images(copy_export, tmp_path, NOVEL[2], count=2)
    before = {p: p.read_bytes() for p in copy_export.rglob("*") if p.name != LOCK_FILE}
    real = os.write

    def write(fd, data):
        if name in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    argv = ["--quiet", "enroll", str(copy_export), "--class", NOVEL[2], "--verify-n", "8"]
    assert main([*argv, "--images", *map(str, paths)]) == WriteError.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lowbit: error: {copy_export}/"), err
    assert err[0].endswith(
        f"{name}: cannot write: no space left on the device; " + ("free space or write elsewhere")
    )
    assert {p: p.read_bytes() for p in copy_export.rglob("*") if p.name != LOCK_FILE} == before
    check_export(copy_export)
