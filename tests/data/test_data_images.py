"""Reading images and masks of every common mode; bad files are DataErrors naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from lowbit.data import images as images_module
from lowbit.data import read_image, read_mask
from lowbit.data.images import read_pair
from lowbit.errors import DataError


def test_rgb_gray_palette_rgba_and_bilevel_become_rgb(tmp_path: Path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    gray = rgb[..., 0]
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(gray).convert("LA").save(tmp_path / "la.png")
    Image.fromarray(rgb).quantize(16).save(tmp_path / "palette.png")
    Image.fromarray(gray > 128).save(tmp_path / "bilevel.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.bmp")
    assert np.array_equal(read_image(tmp_path / "rgb.png"), rgb)
    assert np.array_equal(read_image(tmp_path / "gray.png"), np.repeat(gray[..., None], 3, 2))
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)
    assert np.array_equal(read_image(tmp_path / "la.png"), np.repeat(gray[..., None], 3, 2))
    assert np.array_equal(read_image(tmp_path / "rgb.bmp"), rgb)
    palette = Image.open(tmp_path / "palette.png").convert("RGB")
    assert np.array_equal(read_image(tmp_path / "palette.png"), np.asarray(palette))
    bilevel = read_image(tmp_path / "bilevel.png")
    assert bilevel.dtype == np.uint8 and set(np.unique(bilevel)) <= {0, 255}


def test_16_bit_gray_is_scaled_to_8_bit(tmp_path: Path):
    levels = np.arange(256, dtype=np.uint16) * 257  # 8-bit level k is 16-bit k * 257
    Image.fromarray(levels.reshape(16, 16)).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png")
    assert image.shape == (16, 16, 3)
    assert np.array_equal(image[..., 1].ravel(), np.arange(256))


def test_masks_of_any_mode(tmp_path: Path):
    mask = np.zeros((5, 7), dtype=bool)
    mask[1:3, 2:6] = True
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "l.png")
    Image.fromarray(mask).save(tmp_path / "bilevel.png")
    Image.fromarray(mask.astype(np.uint16) * 65535).save(tmp_path / "deep.png")
    Image.fromarray(np.stack([mask * 255] * 3, -1).astype(np.uint8)).save(tmp_path / "rgb.png")
    for name in ("l.png", "bilevel.png", "deep.png", "rgb.png"):
        assert np.array_equal(read_mask(tmp_path / name), mask), name


def test_corrupt_truncated_and_missing_files_name_the_file(tmp_path: Path):
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    whole = tmp_path / "whole.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8) + 9).save(whole)
    (tmp_path / "cut.png").write_bytes(whole.read_bytes()[:60])
    for name in ("junk.png", "cut.png", "absent.png"):
        with pytest.raises(DataError, match=name):
            read_image(tmp_path / name)


def test_oversized_image_is_refused_before_decoding(tmp_path: Path, monkeypatch):
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(images_module, "MAX_PIXELS", 599)

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(DataError, match=r"big\.png.*30x20.*limit"):
        read_image(tmp_path / "big.png")


def test_mask_size_mismatch_names_both_files(tmp_path: Path):
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    Image.fromarray(np.zeros((8, 9), dtype=np.uint8)).save(tmp_path / "mask.png")
    with pytest.raises(DataError, match=r"mask\.png.*image\.png"):
        read_pair(tmp_path / "image.png", tmp_path / "mask.png")
