"""Image files in and out of the model's input format, with numpy and PIL only (no torch).

`load_images` takes images that already are crops around the defect (few-shot support images)
and resizes them whole. `load_crops` takes the detector's view: a whole image with a mask or a
box, cut by the rule the training data were cut with (lowbit.data.preprocess.prepare_image).
Both normalize exactly as in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lowbit.data.preprocess import (
    NORMALIZATION,
    PIXEL_MEAN,
    PIXEL_STD,
    prepare_image,
    to_tensor_array,
)
from lowbit.errors import ConfigError, DataError
from lowbit.fewshot.regions import Region, read_region, region_box


def load_images(
    paths: Sequence[str | Path], image_size: int, normalization: dict | None = None
) -> np.ndarray:
    """Returns float32 [N, 3, S, S] model inputs from image files, each resized whole;
    DataError names a bad file."""
    return load_crops(paths, [Region()] * len(paths), image_size, normalization)[0]


def image_name(image: str | Path | np.ndarray, index: int) -> str:
    """Returns how reports name an image: its path, or "array[i]" for one held in memory."""
    return f"array[{index}]" if isinstance(image, np.ndarray) else str(image)


def load_crops(
    images: Sequence[str | Path | np.ndarray],
    regions: Sequence[Region],
    image_size: int,
    normalization: dict | None = None,
    crop: dict | None = None,
) -> tuple[np.ndarray, list[list[int] | None]]:
    """Returns (float32 [N, 3, S, S] model inputs, each input's defect box [x0, y0, x1, y1]).

    `crop` is model.json's input.crop (margin, min_crop_fraction): each image is cut around its
    region's mask or box exactly like a training image around its mask; None (a model trained
    on whole images) resizes the whole image. A region of neither kind is the whole image.
    """
    if not images:
        raise ConfigError("no images given: pass one or more image files")
    prepared, boxes = [], []
    for index, (image, region) in enumerate(zip(images, regions)):
        if not isinstance(image, np.ndarray):
            image = Path(image)
            if image.is_dir():
                raise DataError(f"{image}: is a folder; pass image files (e.g. {image}/*.png)")
        pixels, mask = read_region(image, region, image_name(image, index))
        rule = crop or {}
        prepared.append(prepare_image(pixels, mask, image_size, crop is not None, **rule))
        boxes.append(region_box(mask))
    return normalize(np.stack(prepared), normalization), boxes


def normalize(images: np.ndarray, normalization: dict | None = None) -> np.ndarray:
    """Returns float32 NCHW model inputs of uint8 NHWC images, normalized as model.json says."""
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
