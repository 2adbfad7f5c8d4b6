"""fit_detector: the files it writes, listed in the manifest; the threshold rule, exactly; the
integer pieces (aggregation, regions) against trusted implementations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from lowbit.artifacts import DETECTOR_GRAPH_KINDS as KINDS
from lowbit.artifacts import MANIFEST_FILE, detector_files
from lowbit.data import load_whole_images
from lowbit.detect.aggregate import aggregate
from lowbit.detect.fit import fit_detector, load_trunk, split_good, whole_image_codes
from lowbit.detect.maps import (
    false_alarm_threshold,
    label_regions,
    largest_region,
    upsample_nearest,
)
from lowbit.detect.memory_bank import anomaly_map, image_scores
from lowbit.detect.store import read_detector
from lowbit.errors import ConfigError, DataError
from lowbit.manifest import check_export, read_description
from lowbit.runtime import Runtime


def test_fit_writes_the_detector_files_listed_in_the_manifest(fitted_export):
    json_name, bank_name = detector_files("brick")
    manifest = check_export(fitted_export)  # every listed file matches
    assert {json_name, bank_name} <= set(manifest["files"])
    detector, bank = read_detector(fitted_export, "brick")
    assert detector["layer"] == "backbone.blocks.2.act" and detector["aggregate"] == 3
    assert detector["image_size"] == [64, 64] and detector["map_size"] == [16, 16]
    assert detector["fit_images"] == 8 and detector["validation_images"] == 2
    assert bank.shape == (detector["bank_size"], 8) and detector["bank_size"] <= 200
    assert detector["data"]["train_good"] == 10 and len(detector["data"]["fingerprint"]) == 64
    assert isinstance(detector["image_threshold"], int)
    assert detector["pixel_threshold"] <= detector["image_threshold"]
    with np.load(fitted_export / bank_name, allow_pickle=False) as archive:
        assert list(archive) == ["bank"] and archive["bank"].dtype == np.uint8


def test_the_thresholds_keep_the_rule_on_the_validation_images(fitted_export, whole_data):
    """Recomputes the validation maps from the stored bank: at most floor(rate n) values lie
    above each threshold, and one less would break that (the smallest such integer)."""
    detector, bank = read_detector(fitted_export, "brick")
    description = read_description(fitted_export)
    images = np.stack(load_whole_images(whole_data / "brick").train_good)
    _, validation = split_good(len(images), 0.2, detector["seed"])
    trunk = load_trunk(fitted_export, description, detector["layer"], 64, 64)
    codes = whole_image_codes(
        Runtime(trunk), detector["layer"], images[validation], None, detector["aggregate"]
    )
    maps = anomaly_map(bank, codes, tuple(detector["code_range"]))
    rate = detector["false_alarm_rate"]
    for values, threshold in (
        (image_scores(maps), detector["image_threshold"]),
        (maps.ravel(), detector["pixel_threshold"]),
    ):
        allowed = math.floor(rate * len(values))
        assert (values > threshold).sum() <= allowed < (values > threshold - 1).sum()
    flagged = (image_scores(maps) > detector["image_threshold"]).sum()
    assert detector["validation_flagged"] == flagged == 0


@settings(max_examples=80, deadline=None)
@given(
    scores=st.lists(st.integers(-1000, 1000), min_size=1, max_size=60),
    rate=st.floats(0, 0.99),
)
def test_false_alarm_threshold_is_the_smallest_integer_that_keeps_the_rate(scores, rate):
    scores = np.array(scores)
    threshold = false_alarm_threshold(scores, rate)
    allowed = math.floor(rate * len(scores))
    assert (scores > threshold).sum() <= allowed < (scores > threshold - 1).sum()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.sampled_from([1, 3, 5]))
def test_aggregate_is_the_zero_padded_box_sum(seed, k):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 4, size=(2, 3, 7, 6)).astype(np.uint8)
    padded = np.pad(codes.astype(np.int64), ((0, 0), (0, 0), (k // 2,) * 2, (k // 2,) * 2))
    expected = np.zeros((2, 3, 7, 6), np.int64)
    for y in range(7):
        for x in range(6):
            expected[:, :, y, x] = padded[:, :, y : y + k, x : x + k].sum(axis=(2, 3))
    assert np.array_equal(aggregate(codes, k), expected)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), density=st.floats(0.1, 0.7))
def test_regions_number_like_scipy(seed, density):
    mask = np.random.default_rng(seed).random((9, 11)) < density
    labels, count = label_regions(mask)
    expected, expected_count = ndimage.label(mask)
    assert count == expected_count and np.array_equal(labels, expected)
    region = largest_region(mask)
    if count == 0:
        assert region is None
    else:
        sizes = np.bincount(expected.ravel())[1:]
        assert region.sum() == sizes.max() and np.array_equal(
            region, expected == sizes.argmax() + 1
        )


def test_upsample_nearest_repeats_each_cell():
    cells = np.arange(6).reshape(2, 3)
    assert np.array_equal(upsample_nearest(cells, 4, 6), cells.repeat(2, 0).repeat(2, 1))
    assert upsample_nearest(cells, 5, 7)[4, 6] == 5  # a floored border takes the last cell


def test_a_folder_without_train_good_is_one_line(tmp_path, tiny_export, whole_data):
    with pytest.raises(DataError, match="no train/good folder") as error:
        fit_detector(tiny_export, whole_data / "brick" / "test")
    assert "\n" not in str(error.value)


def test_bad_options_are_config_errors(tiny_export, whole_data):
    with pytest.raises(ConfigError, match="not a built-in texture"):
        fit_detector(tiny_export, category="marble")
    with pytest.raises(ConfigError, match="--data DIR"):
        fit_detector(tiny_export)
    with pytest.raises(ConfigError, match="odd"):
        fit_detector(tiny_export, whole_data / "brick", aggregate_size=2)
    with pytest.raises(ConfigError, match="a file name"):
        detector_files("../x")


def test_images_of_mixed_sizes_are_refused(tmp_path, tiny_export, whole_data):
    from PIL import Image

    category = tmp_path / "mixed"
    (category / "train" / "good").mkdir(parents=True)
    for index, size in enumerate((64, 64, 48)):
        Image.new("RGB", (size, size)).save(category / "train" / "good" / f"{index}.png")
    with pytest.raises(DataError, match=r"2.png: 48x48, but 0.png is 64x64"):
        fit_detector(tiny_export, category)


def test_a_refit_replaces_the_pair_and_keeps_the_manifest_true(fitted_copy, whole_data):
    before = json.loads((fitted_copy / MANIFEST_FILE).read_text())["files"]
    fit_detector(fitted_copy, whole_data / "brick", bank_size=50, seed=1)
    detector, bank = read_detector(fitted_copy, "brick")
    assert detector["bank_limit"] == 50 and len(bank) <= 50
    after = check_export(fitted_copy)["files"]
    assert set(after) == set(before)
    assert after["detector/brick.npz"] != before["detector/brick.npz"]


def test_cli_fit_prints_the_thresholds_and_errors_in_one_line(capsys, fitted_copy, whole_data):
    from lowbit.cli import main

    data = str(whole_data / "brick")
    argv = ["--quiet", "--json", "detect", "fit", str(fitted_copy), "--data", data]
    assert main([*argv, "--bank-size", "100", "--false-alarm-rate", "0.5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["category"] == "brick" and result["bank_size"] <= 100
    assert result["validation_flagged"] <= 1  # floor(0.5 * 2)
    assert result["graph_files"] == [f"detector/brick.{kind}.onnx" for kind in KINDS]
    assert read_detector(fitted_copy, "brick")[0]["false_alarm_rate"] == 0.5
    code = main(["--quiet", "detect", "fit", str(fitted_copy), "--data", data + "/test"])
    captured = capsys.readouterr()
    assert code == DataError.exit_code and captured.out == ""
    assert captured.err.count("\n") == 1 and "no train/good folder" in captured.err
