"""Whole images in MVTec AD layout: the layout on disk, masks, determinism, the loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_trees import write_category

from lowbit.data import BUILTIN_CLASSES, BUILTIN_UNKNOWN, load_whole_images, make_whole_images
from lowbit.data.images import read_image
from lowbit.data.whole import generate_whole_image, whole_image_rng
from lowbit.errors import ConfigError, DataError

COUNTS = {"n_train_good": 4, "n_test_good": 2, "n_test_per_defect": 2}


@pytest.fixture(scope="module")
def whole_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("whole")
    return make_whole_images(root, size=96, textures=("brick",), seed=0, **COUNTS)


def test_layout_on_disk(whole_root: Path):
    brick = whole_root / "brick"
    assert sorted(p.name for p in whole_root.iterdir()) == ["brick"]
    assert len(list((brick / "train" / "good").glob("*.png"))) == 4
    assert len(list((brick / "test" / "good").glob("*.png"))) == 2
    assert not (brick / "ground_truth" / "good").exists()
    for defect in BUILTIN_CLASSES:  # held-out types too: they are test images here
        assert sorted(p.name for p in (brick / "test" / defect).iterdir()) == ["000.png", "001.png"]
        masks = sorted(p.name for p in (brick / "ground_truth" / defect).iterdir())
        assert masks == ["000_mask.png", "001_mask.png"]
    assert set(BUILTIN_UNKNOWN) <= {p.name for p in (brick / "test").iterdir()}
    assert read_image(brick / "test" / "crack" / "000.png").shape == (96, 96, 3)


def test_loader_masks_non_empty_exactly_for_defects(whole_root: Path):
    data = load_whole_images(whole_root / "brick")
    assert data.test_types == ("good", *sorted(BUILTIN_CLASSES))
    assert len(data.train_good) == 4 and len(data.test_images) == 2 + 2 * len(BUILTIN_CLASSES)
    assert np.array_equal(np.bincount(data.test_labels), [2] * (1 + len(BUILTIN_CLASSES)))
    for image, mask, label in zip(data.test_images, data.test_masks, data.test_labels):
        assert image.shape == (96, 96, 3) and mask.shape == (96, 96) and mask.dtype == bool
        assert mask.any() == (label != 0)
        assert mask.mean() < 0.5  # a defect covers a small part of the whole image
    assert len(load_whole_images(whole_root / "brick", max_train_good=3).train_good) == 3


def test_generation_is_deterministic_per_seed(tmp_path: Path, whole_root: Path):
    again = make_whole_images(tmp_path / "a", size=96, textures=("brick",), seed=0, **COUNTS)
    other = make_whole_images(tmp_path / "b", size=96, textures=("brick",), seed=1, **COUNTS)
    for path in ("train/good/003.png", "test/stain/001.png", "ground_truth/fold/000_mask.png"):
        first = read_image(whole_root / "brick" / path)
        assert np.array_equal(first, read_image(again / "brick" / path))
        assert not np.array_equal(first, read_image(other / "brick" / path))


def test_painting_only_touches_the_mask():
    for defect in BUILTIN_CLASSES:
        clean, empty = generate_whole_image(whole_image_rng(0, "grass", "x", 0), "grass", None)
        painted, mask = generate_whole_image(whole_image_rng(0, "grass", "x", 0), "grass", defect)
        assert not empty.any() and mask.any() and clean.shape == (128, 128, 3)
        assert np.array_equal(painted[~mask], clean[~mask])  # same clean part, painted in mask
        assert not np.array_equal(painted[mask], clean[mask])


def test_real_category_without_train_good_is_an_error(tmp_path: Path):
    write_category(tmp_path, "bottle", {"crack": 2})
    data = load_whole_images(tmp_path / "bottle")
    assert data.test_types == ("good", "crack") and len(data.train_good) == 2
    for folder in ("train/good",):
        for path in (tmp_path / "bottle" / folder).iterdir():
            path.unlink()
    with pytest.raises(DataError, match="train/good"):
        load_whole_images(tmp_path / "bottle")
    (tmp_path / "bottle" / "train" / "good").rmdir()
    with pytest.raises(DataError) as error:
        load_whole_images(tmp_path / "bottle")
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "bottle") in message and "train/good" in message


def test_bad_options(tmp_path: Path):
    with pytest.raises(ConfigError, match="texture"):
        make_whole_images(tmp_path, textures=("marble",), **COUNTS)
    with pytest.raises(ConfigError, match="16 px"):
        make_whole_images(tmp_path, size=8, **COUNTS)
