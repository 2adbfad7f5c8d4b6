"""`predict` and `lowbit predict`: the open-set threshold in the integer graph's units, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lowbit.cli import main
from lowbit.core.feature_scores import load_export_stats
from lowbit.core.scores import ood_views
from lowbit.errors import ConfigError, DataError, ModelFileError
from lowbit.fewshot import calibrate_threshold, load_images, ood_score, predict, save_images
from lowbit.fewshot.features import runtime_view_outputs
from lowbit.runtime import Runtime
from lowbit.train import load_run
from lowbit.train.run import splits_for


def val_images(run_dir, tmp_path):
    _, record = load_run(run_dir)
    x = splits_for(record).val.x
    return x, save_images(x, tmp_path / "val")


def test_saved_images_load_back_exactly(w2a2_run, tmp_path) -> None:
    x, paths = val_images(w2a2_run, tmp_path)
    assert np.array_equal(load_images(paths, x.shape[-1]), x)


def test_threshold_reproduces_the_target_tpr_on_its_calibration_set(w2a2_run, tmp_path) -> None:
    description = json.loads((w2a2_run / "model.json").read_text())
    ood = description["ood"]
    assert ood["calibrated_on"] == "val" and ood["tpr"] == 0.95
    x, paths = val_images(w2a2_run, tmp_path)
    rows = predict(w2a2_run, paths)
    kept = sum(row["known"] for row in rows)
    # the largest threshold keeping >= 95%: exactly what calibrate_threshold gives on the scores
    # of the integer graph's outputs (logits, and feature codes for a feature score)
    # (with the score's views: the feature codes summed over each image's dihedral views)
    runtime = Runtime(w2a2_run / "model.int.onnx")
    logits, features = runtime_view_outputs(runtime, x, ood_views(ood))
    stats = load_export_stats(w2a2_run, description)
    scores = ood_score(logits, ood["score"], features, stats)
    assert ood["threshold"] == calibrate_threshold(scores, 0.95)
    assert kept == int((scores >= ood["threshold"]).sum()) and kept / len(rows) >= 0.95
    assert kept < len(rows) or scores.min() == ood["threshold"]
    for row in rows:
        assert row["label"] == (row["class"] if row["known"] else "unknown")


def test_cli_predict_text_and_json(w2a2_run, tmp_path, capsys) -> None:
    _, paths = val_images(w2a2_run, tmp_path)
    assert main(["predict", str(w2a2_run), str(paths[0]), str(paths[1])]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:5] == ["image", "mask", "box", "label", "class"]
    assert len(lines) == 3 and lines[1].startswith(str(paths[0]))
    assert lines[1].split()[-1] in ("yes", "no") and "whole image" in lines[1]
    assert main(["--json", "predict", str(w2a2_run), str(paths[0])]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert rows[0]["image"] == str(paths[0])
    fields = {"image", "mask", "box", "class", "score", "score_name", "known", "label"}
    assert set(rows[0]) == fields


def test_bad_paths_give_clear_errors(w2a2_run, tmp_path) -> None:
    _, paths = val_images(w2a2_run, tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    cases = [
        (w2a2_run, [tmp_path / "missing.png"], DataError, "missing.png: file not found"),
        (w2a2_run, [tmp_path / "val"], DataError, "is a folder"),
        (w2a2_run, [tmp_path / "notes.txt"], DataError, "notes.txt: cannot read image"),
        (w2a2_run, [], ConfigError, "no images given"),
        (tmp_path / "val", paths[:1], ModelFileError, "model.json: missing"),
        (tmp_path / "nowhere", paths[:1], ModelFileError, "not a folder"),
    ]
    for export_dir, images, error, message in cases:
        with pytest.raises(error, match=message):
            predict(export_dir, images)


def test_cli_errors_are_one_line_with_exit_codes(w2a2_run, tmp_path, capsys) -> None:
    assert main(["predict", str(w2a2_run), str(tmp_path / "missing.png")]) == DataError.exit_code
    err = capsys.readouterr().err.strip()
    assert err.startswith("lowbit: error:") and "missing.png" in err and "\n" not in err
    assert main(["predict", str(tmp_path), str(tmp_path / "x.png")]) == ModelFileError.exit_code
    assert "model.json" in capsys.readouterr().err


PROBE = """
import sys

class Forbidden:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "brevitas", "qonnx", "onnxruntime"}:
            raise ImportError(f"predict must not import {name}")

sys.meta_path.insert(0, Forbidden())
from lowbit.fewshot.predict import predict
print(predict(sys.argv[1], sys.argv[2:])[0]["label"])
"""


def test_predict_needs_no_torch(w2a2_run, tmp_path) -> None:
    _, paths = val_images(w2a2_run, tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(w2a2_run), str(paths[0])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == predict(w2a2_run, paths[:1])[0]["label"]


CLI_PROBE = """
import sys

class Forbidden:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "torchvision", "brevitas", "qonnx", "onnxruntime"}:
            raise ImportError(f"lowbit predict must not import {name}")

sys.meta_path.insert(0, Forbidden())
from lowbit.cli import main
sys.exit(main(["--json", "predict", *sys.argv[1:]]))
"""


def test_cli_predict_needs_no_torch(w2a2_run, tmp_path) -> None:
    """`lowbit predict EXPORT IMG` — the CLI's own imports included — runs without torch."""
    _, paths = val_images(w2a2_run, tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", CLI_PROBE, str(w2a2_run), str(paths[0])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    label = json.loads(result.stdout)["predictions"][0]["label"]
    assert label == predict(w2a2_run, paths[:1])[0]["label"]
