"""The built-in generator: deterministic, every class drawn, masks cover what was painted."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.data import (
    BUILTIN_CLASSES,
    BUILTIN_UNKNOWN,
    CATEGORIES,
    generate_builtin,
    generate_sample,
    load_texture,
    paint_defect,
    random_crop,
)
from lowbit.data.synth import sample_rng
from lowbit.errors import ConfigError


def test_class_lists():
    assert len(BUILTIN_CLASSES) == 10 and len(set(BUILTIN_CLASSES)) == 10
    assert set(BUILTIN_UNKNOWN) < set(BUILTIN_CLASSES) and len(BUILTIN_UNKNOWN) == 2


def test_textures_are_bundled_rgb():
    for category in CATEGORIES:
        texture = load_texture(category)
        assert texture.dtype == np.uint8 and texture.ndim == 3 and texture.shape[2] == 3


def test_generate_builtin_is_deterministic_per_seed():
    first, again, other = (generate_builtin(seed, per_class=3) for seed in (0, 0, 1))
    assert np.array_equal(np.stack(first.images), np.stack(again.images))
    assert np.array_equal(np.stack(first.masks), np.stack(again.masks))
    assert not np.array_equal(np.stack(first.images), np.stack(other.images))


def test_generate_builtin_draws_every_class_with_a_mask():
    raw = generate_builtin(0, per_class=4)
    assert raw.class_names == BUILTIN_CLASSES
    assert np.array_equal(np.bincount(raw.labels), [4] * len(BUILTIN_CLASSES))
    for image, mask in zip(raw.images, raw.masks):
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert mask.shape == (64, 64) and mask.dtype == bool and mask.any()


def test_smaller_per_class_is_a_prefix_and_matches_generate_sample():
    small, large = generate_builtin(3, per_class=2), generate_builtin(3, per_class=5)
    for label in range(len(BUILTIN_CLASSES)):
        for index in range(2):
            assert np.array_equal(small.images[label * 2 + index], large.images[label * 5 + index])
    texture = load_texture(CATEGORIES[1])
    image, mask = generate_sample(sample_rng(3, "crack", 1), texture, "crack")
    row = BUILTIN_CLASSES.index("crack") * 5 + 1
    assert np.array_equal(image, large.images[row]) and np.array_equal(mask, large.masks[row])


@pytest.mark.parametrize("defect", BUILTIN_CLASSES)
def test_mask_covers_every_changed_pixel(defect):
    for seed in range(12):
        rng = np.random.default_rng(seed)
        clean = random_crop(rng, load_texture(CATEGORIES[seed % 3]), 64)
        image, mask = paint_defect(rng, clean, defect)
        changed = (image != clean).any(axis=2)
        assert changed.any(), "the defect must be visible"
        assert not (changed & ~mask).any(), "a painted pixel lies outside the mask"
        assert mask.mean() < 0.5, "a defect is local"


@pytest.mark.parametrize("size", [32, 96])
def test_other_image_sizes(size):
    raw = generate_builtin(0, per_class=1, size=size)
    assert all(image.shape == (size, size, 3) for image in raw.images)
    assert all(mask.any() for mask in raw.masks)


def test_bad_options_raise_config_error():
    with pytest.raises(ConfigError, match="per_class"):
        generate_builtin(per_class=0)
    with pytest.raises(ConfigError, match="rust"):
        generate_builtin(per_class=1, classes=("scratch", "rust"))
