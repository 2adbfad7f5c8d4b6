"""inspect: its JSON, the crop handed to the classifier (the training crop), stage 2 skipped
below the threshold, and one-line errors for bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import lowbit.detect.inspect as inspect_module
from lowbit.artifacts import detector_files
from lowbit.cli import main
from lowbit.data import NORMALIZATION, crop_rule, crop_to_mask, load_whole_images, prepare_images
from lowbit.data.preprocess import reflect_indices
from lowbit.detect.aggregate import aggregate
from lowbit.detect.fit import fit_detector, split_good
from lowbit.detect.inspect import (
    HANDOFF_BOXES,
    JSON_FIELDS,
    best_decisions,
    candidate_boxes,
    crop_square,
    inspect,
    locate,
    shrink_box,
)
from lowbit.detect.maps import upsample_nearest
from lowbit.errors import ConfigError, DataError, ModelFileError
from lowbit.export.api import export_model
from lowbit.fewshot.images import load_crops
from lowbit.fewshot.regions import Region, region_box
from lowbit.manifest import check_export, seal
from tests.export.helpers import calibrated

from .conftest import CLASS_NAMES, WHOLE_SIZE


@pytest.fixture(scope="module")
def flat_image(tmp_path_factory):
    """A uniform white part: far from every brick patch, so it is flagged."""
    path = tmp_path_factory.mktemp("flat") / "white.png"
    Image.new("RGB", (WHOLE_SIZE, WHOLE_SIZE), (255, 255, 255)).save(path)
    return path


def validation_images(whole_data) -> list[np.ndarray]:
    images = load_whole_images(whole_data / "brick").train_good
    _, validation = split_good(len(images), 0.2, 0)
    return [images[i] for i in validation]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["--quiet", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_schema(capsys, fitted_export, whole_data, flat_image, tmp_path):
    good = sorted((whole_data / "brick" / "test" / "good").glob("*.png"))
    images = [str(p) for p in [*good, flat_image]]
    masks = tmp_path / "masks"
    code, out, _ = run_cli(
        capsys, "--json", "inspect", str(fitted_export), *images, "--masks-out", str(masks)
    )
    assert code == 0
    rows = json.loads(out)
    assert [row["image"] for row in rows] == images
    for row in rows:
        assert tuple(row) == JSON_FIELDS
        assert row["category"] == "brick" and isinstance(row["anomalous"], bool)
        assert isinstance(row["score"], int) and isinstance(row["threshold"], int)
        assert row["anomalous"] == (row["score"] > row["threshold"])
        mask = np.asarray(Image.open(row["mask"]))
        assert mask.shape == (WHOLE_SIZE, WHOLE_SIZE) and set(np.unique(mask)) <= {0, 255}
        if not row["anomalous"]:
            assert row["box"] is row["crop"] is row["type"] is row["class"] is None
            assert row["known"] is row["confidence"] is None and not mask.any()
            continue
        x0, y0, x1, y1 = row["box"]
        assert 0 <= x0 < x1 <= WHOLE_SIZE and 0 <= y0 < y1 <= WHOLE_SIZE
        assert mask[y0:y1, x0:x1].any() and len(row["crop"]) == 4
        assert row["class"] in CLASS_NAMES and row["type"] in (row["class"], "unknown")
        assert isinstance(row["known"], bool) and isinstance(row["confidence"], float)
    assert rows[-1]["anomalous"]  # the white part
    code, out, _ = run_cli(capsys, "inspect", str(fitted_export), *images)
    lines = out.splitlines()
    assert len(lines) == len(images) and "anomalous" in lines[-1] and "good" in lines[0]


def test_a_ground_truth_mask_hands_off_the_training_crop(whole_data):
    """The defect's cells, filled to their box and aggregated 3 x 3 like the codes, are found
    again as that box (the halo moved back in); any ground-truth mask's box then gives exactly
    the crop the training loader cuts around that mask."""
    data = load_whole_images(whole_data / "brick")
    stride, size = 4, WHOLE_SIZE
    for image, truth in zip(data.test_images, data.test_masks):
        if not truth.any():
            continue
        cells = truth.reshape(size // stride, stride, size // stride, stride).any(axis=(1, 3))
        x0, y0, x1, y1 = region_box(cells)
        cells[y0:y1, x0:x1] = True
        grid_truth = cells.repeat(stride, 0).repeat(stride, 1)
        anomaly = aggregate(cells[None, None], 3)[0, 0]  # > 0: the cells grown by one
        mask, box = locate(anomaly, 0, size, size, halo=1)
        assert np.array_equal(mask, upsample_nearest(anomaly > 0, size, size))
        assert box == region_box(grid_truth)
        for ground_truth in (grid_truth, truth):  # any mask: the crop reads its bounding box
            box = region_box(ground_truth)
            handed, _ = load_crops(
                [image], [Region(box=tuple(box))], 32, NORMALIZATION, crop_rule()
            )
            training = prepare_images([(image, ground_truth)], 32, True, **crop_rule())
            expected = (training.astype(np.float32) - 128) / 64
            assert np.array_equal(handed, expected.transpose(0, 3, 1, 2))
            # the reported crop square is the square the rule cuts (mirrored past the border)
            x0, y0, x1, y1 = crop_square(box, (size, size), crop_rule())
            rows = reflect_indices(np.arange(y0, y1), size)
            cols = reflect_indices(np.arange(x0, x1), size)
            assert np.array_equal(image[rows[:, None], cols], crop_to_mask(image, ground_truth))


def test_shrink_box_keeps_short_sides():
    assert shrink_box([8, 8, 20, 28], 4, 4) == [12, 12, 16, 24]
    assert shrink_box([8, 8, 16, 28], 4, 4) == [8, 12, 16, 24]


def test_candidate_boxes_by_hand():
    """An 8 x 8 map of 4 px cells (32 px image), pixel threshold 10, image threshold 50: a
    large region of 6 cells (values 20) and a small one of 3 cells holding the maximum 90."""
    anomaly = np.zeros((8, 8), np.int64)
    anomaly[1, 1:4] = 20  # the large region: rows 1-2, columns 1-3
    anomaly[2, 1:4] = 20
    anomaly[5, 5] = 90  # the peak, with 60 (>= the half-way 50) and 40 (< 50) beside it
    anomaly[5, 6] = 60
    anomaly[6, 5] = 40
    boxes = candidate_boxes(anomaly, 10, 50, 32, 32, halo=1)
    assert tuple(boxes) == HANDOFF_BOXES
    assert boxes["region"] == [4, 4, 16, 12]  # x 1..3, y 1..2 in cells
    assert boxes["region - halo"] == [8, 4, 12, 12]  # 12 px wide: in by 4; 8 px tall: kept
    assert boxes["image threshold"] == [20, 20, 28, 24]  # the cells above 50: (5, 5), (5, 6)
    assert boxes["peak region - halo"] == [20, 20, 28, 28]  # 8 x 8 px: both sides kept
    assert boxes["peak half - halo"] == [20, 20, 28, 24]
    assert candidate_boxes(anomaly, 10, 50, 32, 32)["region"] == boxes["region"]
    with pytest.raises(ValueError, match="not above"):
        candidate_boxes(anomaly, 10, 90, 32, 32)


def test_best_decisions_keep_the_highest_score_and_the_first_on_ties():
    decisions = [{"score": s} for s in (0.5, 0.9, 0.9, -1.0, 0.2, 0.1)]
    assert best_decisions(decisions, [7, 7, 7, 3, 3, 8]) == {7: 1, 3: 4, 8: 5}


def test_stage_two_decides_on_the_best_scoring_candidate_box(
    monkeypatch, fitted_export, flat_image, whole_data
):
    calls = []
    real_predict = inspect_module.Classifier.predict

    def spy(self, images, **kwargs):
        calls.append((len(images), kwargs["boxes"]))
        decisions = real_predict(self, images, **kwargs)
        calls.append(decisions)
        return decisions

    monkeypatch.setattr(inspect_module.Classifier, "predict", spy)
    images = [flat_image, *blotched_parts(whole_data)]
    rows = inspect(fitted_export, images)
    assert len(calls) == 2  # one classifier call for every candidate of every flagged part
    (count, boxes), decisions = calls
    flagged = [row for row in rows if row["anomalous"]]
    assert flagged and count == len(boxes) == len(decisions)
    start, chosen = 0, []
    for row in flagged:
        candidates = candidate_boxes(
            row["map"], *_thresholds(fitted_export), WHOLE_SIZE, WHOLE_SIZE, halo=1
        )
        distinct = [list(b) for b in dict.fromkeys(map(tuple, candidates.values()))]
        assert boxes[start : start + len(distinct)] == distinct
        mine = decisions[start : start + len(distinct)]
        best = max(range(len(mine)), key=lambda i: (mine[i]["score"], -i))
        chosen.append(best)
        assert row["box"] == distinct[best] and row["confidence"] == mine[best]["score"]
        assert row["type"] == mine[best]["label"] and row["known"] == mine[best]["known"]
        assert row["crop"] == crop_square(row["box"], (WHOLE_SIZE, WHOLE_SIZE), crop_rule())
        start += len(distinct)
    assert start == count
    assert any(chosen), "no part's best box was other than its first: nothing was chosen"
    assert rows[0]["map"].dtype == np.int64 and rows[0]["map"].shape == (16, 16)
    assert rows[0]["score"] == rows[0]["map"].max()


def blotched_parts(whole_data) -> list[np.ndarray]:
    """Good brick parts with a bright blotch and a smaller dark one: two regions of different
    size and strength, so the candidate boxes cut different crops."""
    parts = []
    for index, image in enumerate(validation_images(whole_data)):
        part = image.copy()
        y, x = 8 + 4 * index, 10 + 2 * index
        part[y : y + 16, x : x + 12] = 250
        part[44:50, 40 + index : 48 + index] = 5
        parts.append(part)
    return parts


def _thresholds(export) -> tuple[int, int]:
    detector = json.loads((export / "detector" / "brick.json").read_text())
    return detector["pixel_threshold"], detector["image_threshold"]


def test_a_good_part_below_the_threshold_skips_stage_two(monkeypatch, fitted_export, whole_data):
    def no_stage_two(*args, **kwargs):
        raise AssertionError("the classifier ran on a part below the threshold")

    monkeypatch.setattr(inspect_module.Classifier, "predict", no_stage_two)
    rows = inspect(fitted_export, validation_images(whole_data))
    for row in rows:
        assert not row["anomalous"] and row["score"] <= row["threshold"]
        assert row["box"] is None and row["type"] is None and not row["mask"].any()


def test_bad_inputs_are_one_line_errors(capsys, fitted_export, tiny_export, tmp_path):
    small = tmp_path / "small.png"
    Image.new("RGB", (32, 32)).save(small)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    cases = [
        (
            [str(fitted_export), str(small)],
            DataError,
            "32x32, but the detector was fitted on 64x64",
        ),
        ([str(fitted_export), str(text)], DataError, "cannot read image"),
        ([str(fitted_export), str(tmp_path)], DataError, "is a folder"),
        ([str(fitted_export), str(small), "--category", "grass"], ConfigError, "no detector for"),
        ([str(tiny_export), str(small)], ConfigError, "no detector fitted"),
    ]
    for argv, error, message in cases:
        code, out, err = run_cli(capsys, "inspect", *argv)
        assert code == error.exit_code and out == ""
        assert err.count("\n") == 1 and message in err, err


def test_a_changed_bank_or_trunk_is_refused(fitted_copy, flat_image):
    json_name, bank_name = detector_files("brick")
    listed = list(check_export(fitted_copy)["files"])
    bank = (fitted_copy / bank_name).read_bytes()
    (fitted_copy / bank_name).write_bytes(b"junk")
    with pytest.raises(ModelFileError, match="sha256 differs from model.manifest.json"):
        inspect(fitted_copy, [flat_image])
    seal(fitted_copy, listed)  # a sealed folder with a foreign bank: the detector's own check
    with pytest.raises(ModelFileError, match=f"sha256 differs from .*{json_name}"):
        inspect(fitted_copy, [flat_image])
    (fitted_copy / bank_name).write_bytes(bank)
    detector = json.loads((fitted_copy / json_name).read_text())
    (fitted_copy / json_name).write_text(json.dumps({**detector, "trunk_sha256": "0" * 64}))
    seal(fitted_copy, listed)
    with pytest.raises(ModelFileError, match="trunk differs"):
        inspect(fitted_copy, [flat_image])
    above = {**detector, "pixel_threshold": detector["image_threshold"] + 1}
    for changed, needle in (
        (above, "pixel_threshold .* is above"),
        ({**detector, "image_threshold": 1.5}, "'image_threshold' is float"),
    ):
        (fitted_copy / json_name).write_text(json.dumps(changed))
        seal(fitted_copy, listed)
        with pytest.raises(ModelFileError, match=needle):
            inspect(fitted_copy, [flat_image])


def test_inspect_job_summarises_the_texture_s_test_images(fitted_export):
    from lowbit.jobs import inspect_job

    summary = inspect_job(fitted_export, "brick", quick=True)
    assert summary["test_images"] == {"good": 6, "known": 8, "held_out": 12}
    assert 0 <= summary["false_alarms_test_good"] <= 6
    for key in ("flagged_defective", "flagged_known", "flagged_held_out", "image_auroc"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["ms_per_good_part"] > 0 and summary["ms_per_defective_part"] > 0


def test_a_whole_image_classifier_gets_the_whole_part_once(
    monkeypatch, tmp_path, whole_data, flat_image
):
    """A classifier trained on whole images (no crop rule) sees each flagged part once, whole;
    the part keeps the map's box."""
    export = tmp_path / "whole"
    model = calibrated("w2a2", "conv4")
    export_model(model, export, class_names=CLASS_NAMES, normalization=NORMALIZATION, crop=None)
    fit_detector(export, whole_data / "brick", bank_size=200)
    calls = []
    real_predict = inspect_module.Classifier.predict

    def spy(self, images, **kwargs):
        calls.append((len(images), kwargs["boxes"]))
        return real_predict(self, images, **kwargs)

    monkeypatch.setattr(inspect_module.Classifier, "predict", spy)
    (row,) = inspect(export, [flat_image])
    assert row["anomalous"] and calls == [(1, None)]
    detector = json.loads((export / "detector" / "brick.json").read_text())
    _, box = locate(row["map"], detector["pixel_threshold"], WHOLE_SIZE, WHOLE_SIZE, halo=1)
    assert row["box"] == box and row["crop"] is None and row["class"] in CLASS_NAMES
