"""Defect-centred crops and the input normalization."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from lowbit.data import (
    NORMALIZATION,
    crop_to_mask,
    generate_builtin,
    prepare_images,
    to_tensor_array,
)
from lowbit.data.preprocess import crop_box, mask_bbox, reflect_indices


@st.composite
def image_and_box(draw):
    height, width = draw(st.integers(1, 60)), draw(st.integers(1, 60))
    top, left = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
    bottom, right = draw(st.integers(top + 1, height)), draw(st.integers(left + 1, width))
    return (height, width), (top, left, bottom, right)


@given(image_and_box(), st.floats(1.0, 3.0), st.floats(0.0, 1.0))
def test_crop_is_centred_on_the_bbox_and_contains_it(shape_box, margin, min_fraction):
    (height, width), (top, left, bottom, right) = shape_box
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    crop_top, crop_left, side = crop_box(
        (top, left, bottom, right), (height, width), margin, min_fraction
    )
    assert abs(crop_top + side / 2 - (top + bottom) / 2) <= 0.5
    assert abs(crop_left + side / 2 - (left + right) / 2) <= 0.5
    assert side >= margin * max(bottom - top, right - left) - 1e-9
    # crop a coordinate image: each output pixel names the source pixel it came from
    rows, cols = np.mgrid[0:height, 0:width]
    coordinates = np.stack([rows, cols], axis=-1)
    crop = crop_to_mask(coordinates, mask, margin, min_fraction)
    assert crop.shape == (side, side, 2)
    assert np.array_equal(
        crop[:, 0, 0], reflect_indices(np.arange(crop_top, crop_top + side), height)
    )
    assert np.array_equal(
        crop[0, :, 1], reflect_indices(np.arange(crop_left, crop_left + side), width)
    )
    inside = mask[crop[..., 0], crop[..., 1]]
    assert inside.sum() >= mask.sum()  # the whole bbox is in the crop


@given(st.integers(1, 9), st.lists(st.integers(-40, 40), min_size=1, max_size=20))
def test_reflect_indices_matches_numpy_pad(length, indices):
    pad = 50
    padded = np.pad(np.arange(length), pad, mode="reflect")
    expected = padded[np.asarray(indices) + pad]
    assert np.array_equal(reflect_indices(np.asarray(indices), length), expected)


def test_builtin_crop_is_centred_on_the_mask():
    raw = generate_builtin(0, per_class=3)
    inside_image = 0
    for mask in raw.masks:
        bbox = mask_bbox(mask)
        top, left, side = crop_box(bbox, mask.shape)
        assert abs(top + side / 2 - (bbox[0] + bbox[2]) / 2) <= 0.5
        assert abs(left + side / 2 - (bbox[1] + bbox[3]) / 2) <= 0.5
        crop = crop_to_mask(mask, mask)
        assert crop.shape == (side, side)
        if min(top, left) >= 0 and max(top, left) + side <= mask.shape[0]:
            # no reflected copy of the mask in the crop: its bbox is centred in the crop
            inside_image += 1
            crop_bbox = mask_bbox(crop)
            assert abs((crop_bbox[0] + crop_bbox[2]) / 2 - side / 2) <= 0.5
            assert abs((crop_bbox[1] + crop_bbox[3]) / 2 - side / 2) <= 0.5
    assert inside_image > len(raw.masks) // 2


def test_missing_or_empty_mask_uses_the_whole_image():
    image = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    assert crop_to_mask(image, None) is image
    assert crop_to_mask(image, np.zeros((10, 12), dtype=bool)) is image


def test_prepare_images_shapes():
    image = np.full((50, 70, 3), 7, dtype=np.uint8)
    mask = np.zeros((50, 70), dtype=bool)
    mask[10:14, 60:68] = True
    out = prepare_images([(image, mask), (image, None)], image_size=16)
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8
    assert np.array_equal(out, np.full_like(out, 7))  # a constant image stays constant
    assert prepare_images([], image_size=8).shape == (0, 8, 8, 3)
    assert prepare_images(iter([(image, mask)]), image_size=16, crop=False).shape == (1, 16, 16, 3)


def test_to_tensor_array_equals_the_documented_normalization_exactly():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    x = to_tensor_array(pixels)
    assert x.shape == (1, 3, 16, 16) and x.dtype == np.float32
    mean, std = np.asarray(NORMALIZATION["mean"]), np.asarray(NORMALIZATION["std"])
    formula = (pixels.astype(np.float64) / 255 - mean) / std
    assert np.array_equal(x, formula.transpose(0, 3, 1, 2).astype(np.float32))
    # every pixel is an exact multiple of 2^-6: an 8-bit input quantizer loses nothing
    assert np.array_equal(x * 64, np.rint(x * 64)) and x.min() == -2.0


def test_box_mask_has_the_box_as_bounding_box():
    from lowbit.data.preprocess import box_mask

    rng = np.random.default_rng(0)
    for _ in range(50):
        x0, x1 = sorted(rng.choice(41, 2, replace=False))
        y0, y1 = sorted(rng.choice(31, 2, replace=False))
        mask = box_mask((x0, y0, x1, y1), (30, 40))
        assert mask_bbox(mask) == (y0, x0, y1, x1) and mask.sum() == (x1 - x0) * (y1 - y0)
