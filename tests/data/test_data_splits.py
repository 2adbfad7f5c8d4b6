"""load_splits: stratified, seeded splits; held-out classes; clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_trees import save_image

from lowbit.data import BUILTIN_CLASSES, BUILTIN_UNKNOWN, load_splits, split_indices
from lowbit.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def builtin_splits():
    return load_splits("builtin", per_class=20, seed=0)


def test_builtin_splits_shapes_and_classes(builtin_splits):
    splits = builtin_splits
    known = tuple(c for c in BUILTIN_CLASSES if c not in BUILTIN_UNKNOWN)
    assert splits.class_names == known and splits.unknown_names == BUILTIN_UNKNOWN
    for part, per_class in ((splits.train, 12), (splits.val, 3), (splits.test, 5)):
        assert part.x.shape == (len(known) * per_class, 3, 32, 32) and part.x.dtype == np.float32
        assert np.array_equal(np.bincount(part.y), [per_class] * len(known))  # stratified
    assert len(splits.ood) == 40 and np.all(splits.ood.y == -1)
    assert np.array_equal(np.bincount(splits.ood_types), [20, 20])
    assert all("/burn/" in p for p, t in zip(splits.ood.paths, splits.ood_types) if t == 0)
    every_path = splits.train.paths + splits.val.paths + splits.test.paths + splits.ood.paths
    assert len(set(every_path)) == len(every_path) == 200  # disjoint, nothing lost


def test_splits_are_deterministic_and_follow_the_seed(builtin_splits):
    again = load_splits("builtin", per_class=20, seed=0)
    assert np.array_equal(again.train.x, builtin_splits.train.x)
    assert again.test.paths == builtin_splits.test.paths
    other = load_splits("builtin", per_class=20, seed=1)
    assert not np.array_equal(other.train.x, builtin_splits.train.x)


def test_split_indices_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(4), [3, 10, 7, 40])
    train, val, test = split_indices(labels, 0.15, 0.25, seed=7)
    assert len(np.intersect1d(train, val)) == len(np.intersect1d(train, test)) == 0
    assert len(train) + len(val) + len(test) == len(labels)
    assert np.array_equal(np.bincount(labels[val]), [1, 2, 1, 6])
    assert np.array_equal(np.bincount(labels[test]), [1, 2, 2, 10])
    assert all(
        np.array_equal(a, b)
        for a, b in zip(split_indices(labels, 0.15, 0.25, 7), (train, val, test))
    )
    assert not np.array_equal(split_indices(labels, 0.15, 0.25, 8)[0], train)
    train, val, test = split_indices(np.zeros(4, dtype=int), 0.45, 0.45, seed=0)
    assert len(train) >= 1 and len(val) >= 1 and len(test) >= 1


def test_folder_splits_with_unknown_and_cap(folder_root: Path):
    splits = load_splits(folder_root, image_size=16, unknown="stain", per_class=4)
    assert splits.class_names == ("Scratch", "dent") and splits.unknown_names == ("stain",)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 8
    assert len(splits.ood) == 4 and splits.train.x.shape[1:] == (3, 16, 16)
    assert load_splits(folder_root).unknown_names == ()  # a folder holds out nothing by default


def test_mvtec_splits_crop_on_the_defect(mvtec_root: Path):
    splits = load_splits(mvtec_root, image_size=8, val_fraction=0.0, test_fraction=0.3)
    assert splits.class_names == ("bent", "contamination", "crack") and len(splits.val) == 0
    red = (np.array([250, 0, 0]) - 128) / 64
    colour_bottle = splits.train.x[:, :, 4, 4]
    bottle = np.array(["/bottle/" in p for p in splits.train.paths])
    assert np.allclose(colour_bottle[bottle], red)  # the crop centre is the defect
    whole = load_splits(mvtec_root, image_size=8, crop=False, test_fraction=0.3)
    whole_bottle = np.array(["/bottle/" in p for p in whole.train.paths])
    centre_is_red = np.isclose(whole.train.x[:, :, 4, 4], red).all(axis=1)
    assert not centre_is_red[whole_bottle].all()  # whole images: the defect is anywhere


def test_unknown_class_not_present_lists_the_available_ones(folder_root: Path):
    with pytest.raises(DataError, match=r"\['rust'\].*Scratch, dent, stain"):
        load_splits(folder_root, unknown=["rust"])
    with pytest.raises(DataError, match="scratch"):
        load_splits("builtin", per_class=3, unknown=["rust"])


def test_too_few_images_names_the_class_and_the_minimum(folder_root: Path):
    for extra in range(2):
        save_image(folder_root / "hole" / f"{extra}.png", np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(DataError, match=r"'hole' in .*folder has 2 image.*at least 3"):
        load_splits(folder_root)
    splits = load_splits(folder_root, val_fraction=0.0, test_fraction=0.5)  # 2 are enough here
    assert np.bincount(splits.train.y)[splits.class_names.index("hole")] == 1


def test_holding_out_all_but_one_class(folder_root: Path):
    with pytest.raises(DataError, match="fewer than 2 classes"):
        load_splits(folder_root, unknown=["dent", "stain"])


@pytest.mark.parametrize(
    "options",
    [
        {"val_fraction": 0.6, "test_fraction": 0.5},
        {"test_fraction": -0.1},
        {"per_class": 0},
        {"image_size": 0},
    ],
)
def test_bad_options(options):
    with pytest.raises(ConfigError):
        load_splits("builtin", **options)
