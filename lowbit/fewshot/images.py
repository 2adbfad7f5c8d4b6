"""Image files in and out of the model's input format, with numpy and PIL only (no torch).

A few-shot support image or an image to classify is already a crop around the defect (the
inspection line localized it): it is resized whole to the model's input size, like the built-in
set's mask crops, and normalized exactly as in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lowbit.data.images import read_image
from lowbit.data.preprocess import (
    NORMALIZATION,
    PIXEL_MEAN,
    PIXEL_STD,
    resize_square,
    to_tensor_array,
)
from lowbit.errors import ConfigError, DataError


def load_images(
    paths: Sequence[str | Path], image_size: int, normalization: dict | None = None
) -> np.ndarray:
    """Returns float32 [N, 3, S, S] model inputs from image files; DataError names a bad file."""
    if not paths:
        raise ConfigError("no images given: pass one or more image files")
    prepared = []
    for path in map(Path, paths):
        if path.is_dir():
            raise DataError(f"{path}: is a folder; pass image files (e.g. {path}/*.png)")
        prepared.append(resize_square(read_image(path), image_size))
    images = np.stack(prepared)
    if normalization is None or normalization == NORMALIZATION:
        return to_tensor_array(images)  # (x - 128) / 64: exact, like training
    mean = np.asarray(normalization["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(normalization["std"], dtype=np.float32).reshape(1, 3, 1, 1)
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
    return np.ascontiguousarray((x - mean) / std)


def save_images(x: np.ndarray, folder: str | Path, prefix: str = "image") -> list[Path]:
    """Writes model inputs x [N, 3, S, S] (normalized as in training) as PNGs; returns paths.

    The inverse of `load_images` for the built-in normalization: load_images(save_images(x))
    returns x exactly, since every built-in input is (pixel - 128) / 64.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.rint(x.astype(np.float64) * PIXEL_STD + PIXEL_MEAN)
    pixels = np.clip(pixels, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    paths = []
    for index, image in enumerate(pixels):
        path = folder / f"{prefix}_{index:03d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths
